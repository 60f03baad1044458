"""The rules of an entry's fields: one function per field, for every way in.

:class:`~celery_dcron.api.DynamicTasks` (and so the CLI and the Django admin) and
``beat_schedule`` (:func:`celery_dcron.scheduler.entry_from_beat`) call the same rules.
Each takes the entry's name and the raw value, returns the value as the entry keeps it,
or raises :class:`~celery_dcron.exceptions.InvalidEntryError` (its
:class:`~celery_dcron.exceptions.InvalidScheduleError` for schedule fields) with
``field`` set and a message naming the entry, the field and the fix::

    entry 'report': max_runs: must be a positive integer

Where the two ways differ, the difference is a parameter, written here: a static entry
keeps every ``apply_async`` option Celery beat accepts, and has no ``tz`` of its own.
Checks that need the Celery app (a task name it knows, arguments that fit the task)
stay with the caller; those that need settings take them as arguments.

Pure module: no I/O.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from .entries import EntrySpec
from .enums import AfterRun, MisfirePolicy, parse_field
from .exceptions import InvalidEntryError, InvalidScheduleError
from .schedules import AtSchedule, CronSchedule, IntervalSchedule, datetime_to_ms

__all__ = [
    "OPTION_KEYS",
    "SCHEDULE_FIELDS",
    "after_run",
    "args",
    "at",
    "cron",
    "description",
    "enabled",
    "ending",
    "entry_name",
    "every",
    "instant",
    "json_size",
    "known_fields",
    "kwargs",
    "max_runs",
    "misfire_grace",
    "misfire_policy",
    "one_schedule",
    "options",
    "storable",
    "stored_json",
    "task_name",
    "tz",
]

#: ``apply_async`` options a dynamic entry may carry (a static one: any).
OPTION_KEYS: Final = frozenset(
    {"queue", "routing_key", "exchange", "priority", "expires", "headers"}
)

#: The schedule fields of the API, of which an entry has exactly one.
SCHEDULE_FIELDS: Final = ("cron", "every", "at", "schedule")

_NAME: Final = re.compile(r"^[^\x00-\x1f\x7f{}]{1,200}$")


# -- identity and call ---------------------------------------------------------------


def entry_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name != name.strip():
        raise InvalidEntryError(
            f"name: {name!r} is not a valid entry name; use 1-200 printable characters "
            "without '{', '}' or leading/trailing spaces",
            field="name",
        )
    return name


def known_fields(name: str, fields: Collection[str], allowed: Collection[str]) -> None:
    if isinstance(allowed, (set, frozenset)) and allowed.issuperset(fields):
        return
    unknown = sorted(set(fields).difference(allowed))
    if unknown:
        raise InvalidEntryError(
            f"entry {name!r}: unknown fields {unknown}; allowed: {sorted(allowed)}",
            field=unknown[0],
        )


def task_name(name: str, task: Any) -> str:
    if not isinstance(task, str) or not task.strip():
        raise InvalidEntryError(
            f"entry {name!r}: task: must be a task name, got {task!r}", field="task"
        )
    return task


def args(name: str, value: Any) -> tuple[Any, ...]:
    """``None`` is no arguments."""
    value = () if value is None else value
    if not isinstance(value, (list, tuple)):
        raise InvalidEntryError(
            f"entry {name!r}: args: must be a list, got {type(value).__name__}", field="args"
        )
    return tuple(value)


_STR: Final = frozenset({str})


def kwargs(name: str, value: Any) -> dict[str, Any]:
    """``None`` is no keyword arguments."""
    if type(value) is dict and _STR.issuperset(map(type, value)):  # the usual case, short
        return dict(value)
    value = {} if value is None else value
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidEntryError(
            f"entry {name!r}: kwargs: must be a dict with string keys, got {value!r}",
            field="kwargs",
        )
    return dict(value)


def options(name: str, value: Any, *, any_key: bool = False) -> dict[str, Any]:
    """``apply_async`` options. A dynamic entry may carry :data:`OPTION_KEYS`, each of
    the right type; a static entry (``any_key``) any option, as Celery beat passes them."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEntryError(
            f"entry {name!r}: options: must be a dict, got {value!r}", field="options"
        )
    if any_key:
        return dict(value)
    unknown = set(value) - OPTION_KEYS
    if unknown:
        raise InvalidEntryError(
            f"entry {name!r}: options: unknown keys {sorted(unknown)}; allowed: "
            f"{sorted(OPTION_KEYS)}",
            field="options",
        )
    priority = value.get("priority")
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255
    ):
        raise InvalidEntryError(
            f"entry {name!r}: options.priority: must be an integer 0-255", field="options.priority"
        )
    expires = value.get("expires")
    if expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= 0
    ):
        raise InvalidEntryError(
            f"entry {name!r}: options.expires: must be a positive number of seconds",
            field="options.expires",
        )
    headers = value.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise InvalidEntryError(
            f"entry {name!r}: options.headers: must be a dict", field="options.headers"
        )
    for key in ("queue", "routing_key", "exchange"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise InvalidEntryError(
                f"entry {name!r}: options.{key}: must be a string", field=f"options.{key}"
            )
    return dict(value)


def enabled(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidEntryError(f"entry {name!r}: enabled: must be True or False", field="enabled")
    return value


def description(name: str, value: Any) -> str:
    """``None`` is no description."""
    value = value or ""
    if not isinstance(value, str):
        raise InvalidEntryError(
            f"entry {name!r}: description: must be a string", field="description"
        )
    return value


# -- runs and misfires ---------------------------------------------------------------


def max_runs(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidEntryError(
            f"entry {name!r}: max_runs: must be a positive integer", field="max_runs"
        )
    return value


def misfire_policy(name: str, value: Any) -> MisfirePolicy | None:
    """``None``: the ``dcron_misfire_policy`` setting applies."""
    if value is None:
        return None
    return MisfirePolicy.parse(value, field_name=f"entry {name!r}: misfire_policy")


def misfire_grace(name: str, value: Any) -> float | None:
    """Seconds (a number or a timedelta); ``None``: the ``dcron_misfire_grace`` setting."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidEntryError(
            f"entry {name!r}: misfire_grace: must be a positive number of seconds",
            field="misfire_grace",
        )
    return float(value)


def after_run(name: str, value: Any) -> AfterRun | None:
    """``None``: nothing happens after the last run."""
    return None if value is None else parse_field(AfterRun, value, entry=name, field="after_run")


# -- time ----------------------------------------------------------------------------


def tz(name: str, value: Any) -> str | None:
    """The type of a ``tz=``; the zone itself is checked by the schedule that uses it."""
    if value is not None and not isinstance(value, str):
        raise InvalidScheduleError(
            f"entry {name!r}: tz: must be an IANA zone name like 'UTC'", field="tz"
        )
    return value


def instant(name: str, field: str, value: Any, zone: str | None, *, tz_field: bool = True) -> int:
    """Milliseconds of an aware datetime or ISO 8601 string; naive ones take ``zone``
    (refused without one; ``tz_field``: the entry has a ``tz=`` to give one)."""
    dt = value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidScheduleError(
                f"entry {name!r}: {field}: {value!r} is not an ISO 8601 datetime "
                "(e.g. '2030-01-31T09:00:00+00:00')",
                field=field,
            ) from None
    if not isinstance(dt, datetime):
        raise InvalidScheduleError(
            f"entry {name!r}: {field}: must be a datetime or an ISO 8601 string, got {value!r}",
            field=field,
        )
    if dt.tzinfo is None or dt.utcoffset() is None:
        if zone is None:
            raise InvalidScheduleError(
                f"entry {name!r}: {field}: {value!s} has no timezone; give an aware datetime "
                "(e.g. with tzinfo=timezone.utc or a '+00:00' suffix)"
                + (" or tz=" if tz_field else ""),
                field=field,
            )
        try:
            dt = dt.replace(tzinfo=ZoneInfo(zone))
        except (KeyError, ValueError):
            raise InvalidScheduleError(
                f"entry {name!r}: tz: unknown timezone {zone!r}", field="tz"
            ) from None
    return datetime_to_ms(dt)


# -- schedules -----------------------------------------------------------------------


def one_schedule(
    name: str, fields: Mapping[str, Any], kinds: Collection[str], *, required: bool
) -> str | None:
    """Which of the schedule ``kinds`` ``fields`` gives (None: none, if not required)."""
    found = None
    for kind in kinds:  # (no list made: this runs for each entry of a bulk write)
        if fields.get(kind) is not None:
            if found is not None:
                break  # two of them
            found = kind
    else:
        if found is not None or not required:
            return found
    given = [kind for kind in kinds if fields.get(kind) is not None]
    if len(kinds) == 1:
        raise InvalidScheduleError(
            f"entry {name!r}: schedule: missing; give a number of seconds, a timedelta, a "
            "crontab, a solar or a celery_dcron.cron",
            field="schedule",
        )
    choices = ", ".join(f"{kind}=" for kind in kinds)
    raise InvalidScheduleError(
        f"entry {name!r}: schedule: give {'exactly' if required else 'only'} one of "
        f"{choices} (got {', '.join(given) or 'none'})",
        field="schedule",
    )


def cron(name: str, value: Any, zone: str, *, day_or: bool = True) -> CronSchedule:
    if not isinstance(value, str):
        raise InvalidScheduleError(
            f"entry {name!r}: cron: {value!r} must be a string like '*/5 * * * *'", field="cron"
        )
    try:  # (not a context manager: a third of the time of a cached schedule)
        return _cron(value, zone, day_or)
    except InvalidScheduleError as exc:  # CronSchedule says "cron '61 * * * *': ..."
        raise InvalidScheduleError(f"entry {name!r}: {exc}", field=exc.field or "cron") from None


@functools.lru_cache(maxsize=4096, typed=True)
def _cron(expr: str, zone: str, day_or: bool) -> CronSchedule:
    """The checked schedule of a cron string, made once per (expression, zone, day_or):
    the entries of a bulk write often share them. (An error is raised again each time:
    only valid schedules are kept.)"""
    return CronSchedule(expr=expr, tz=zone, day_or=day_or)


def every(name: str, value: Any) -> IntervalSchedule:
    """Seconds (a number or a timedelta)."""
    if type(value) is int and 0 < value < _EXACT_S:  # the usual case, made short
        return _interval(value * 1000)
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidScheduleError(
            f"entry {name!r}: every: {value!r} must be a number of seconds or a datetime.timedelta",
            field="every",
        )
    if not math.isfinite(seconds) or round(seconds * 1000) <= 0:
        raise InvalidScheduleError(
            f"entry {name!r}: every: {value!r} must be a positive number of seconds",
            field="every",
        )
    return _interval(round(seconds * 1000))


#: Whole seconds below this are exact as a float, in ms too: ``every`` takes them as they
#: are (``round(float(s) * 1000) == s * 1000``).
_EXACT_S: Final = 2**53 // 1000


@functools.lru_cache(maxsize=4096)
def _interval(every_ms: int) -> IntervalSchedule:
    """The schedule of a (checked) interval, made once per length."""
    return IntervalSchedule(every_ms=every_ms)


def at(name: str, value: Any, zone: str | None, *, now_ms: int | Callable[[], int]) -> AtSchedule:
    """A one-off after ``now_ms`` (or what it returns: asked only for a valid ``at``)."""
    at_ms = instant(name, "at", value, zone)
    if at_ms <= (now_ms() if callable(now_ms) else now_ms):
        raise InvalidScheduleError(
            f"entry {name!r}: at: {value!s} is in the past; give a future time, or use run_now()",
            field="at",
        )
    return AtSchedule(at_ms=at_ms)


# -- the whole entry -----------------------------------------------------------------


def ending(spec: EntrySpec) -> None:
    """``after_run`` needs an entry that ends; ``end_at`` is not before ``start_at``."""
    if spec.after_run is not None and not (
        isinstance(spec.schedule, AtSchedule) or spec.max_runs or spec.end_ms is not None
    ):
        raise InvalidEntryError(
            f"entry {spec.name!r}: after_run: only entries that end can have one; use at=, "
            "max_runs= or end_at=",
            field="after_run",
        )
    if spec.start_ms is not None and spec.end_ms is not None and spec.end_ms < spec.start_ms:
        raise InvalidEntryError(
            f"entry {spec.name!r}: end_at: must not be before start_at", field="end_at"
        )


def json_size(spec: EntrySpec, *, max_bytes: int) -> None:
    """args and kwargs (the payload is one of them) are plain JSON, at most ``max_bytes``
    (``dcron_max_payload_bytes``) of it."""
    name = spec.name
    parts = {"args": list(spec.args), "kwargs": dict(spec.kwargs)}
    try:
        text = json.dumps(parts)
    except (TypeError, ValueError):
        for field, value in parts.items():  # name the field at fault
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise InvalidEntryError(
                    f"entry {name!r}: {field}: must be JSON-serialisable (lists, dicts, "
                    f"strings, numbers, booleans, None): {exc}",
                    field=field,
                ) from None
        raise
    _size(name, len(text.encode()), max_bytes)


def stored_json(spec: EntrySpec, *, max_bytes: int) -> None:
    """:func:`json_size` then :func:`storable`, with their errors, encoding args and
    kwargs once: their text measured here is the one :meth:`EntrySpec.dumps` stores
    (made now, kept on ``spec``)."""
    call = spec.call_json()
    if call is None:  # not plain JSON: json_size says which field (or measures it)
        json_size(spec, max_bytes=max_bytes)
    else:  # json.dumps({"args": ..., "kwargs": ...}) is these texts and _CALL_FRAME
        _size(spec.name, len(call[0]) + len(call[1]) + _CALL_FRAME, max_bytes)
        try:
            spec.dumps(call=call)
        except InvalidEntryError:
            pass  # storable names the field
        else:
            return
    storable(spec)


#: The characters ``json.dumps({"args": A, "kwargs": K})`` adds to the JSON of A and K
#: (all ASCII: its size in bytes too).
_CALL_FRAME: Final = len(json.dumps({"args": [], "kwargs": {}})) - len("[]{}")


def _size(name: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidEntryError(
            f"entry {name!r}: payload: args + kwargs + payload are {size} bytes of JSON, "
            f"over dcron_max_payload_bytes ({max_bytes}); store the data elsewhere and pass "
            "a reference, or raise the setting",
            field="payload",
        )


def storable(spec: EntrySpec) -> None:
    """The entry survives the registry's JSON (kombu's: dates too); the error names the
    first field that does not."""
    try:
        spec.dumps()
    except InvalidEntryError:
        for field in ("args", "kwargs", "options"):
            try:
                spec.with_changes(**{field: () if field == "args" else {}}).dumps()
            except InvalidEntryError:
                continue  # not (only) this field
            raise InvalidEntryError(
                f"entry {spec.name!r}: {field}: must be JSON-serialisable (lists, dicts, "
                "strings, numbers, booleans, None, datetimes)",
                field=field,
            ) from None
        raise
