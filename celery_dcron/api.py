"""Dynamic entries: add, change, pause and remove scheduled entries at run time.

One entry point, :class:`DynamicTasks`::

    from celery_dcron import DynamicTasks

    tasks = DynamicTasks(app)
    tasks.add("report", "proj.tasks.report", cron="0 7 * * mon-fri", tz="Europe/Paris")
    tasks.pause("report")
    tasks.run_now("report")          # an extra dispatch now, with its own task id
    tasks.remove("report")

Every input is validated here, before anything is written: errors are
:class:`~celery_dcron.InvalidEntryError` (or ``InvalidScheduleError``) naming the
field and the fix. Writes use compare-and-set on the entry's ``version``, so two
concurrent editors get a :class:`~celery_dcron.ConflictError` instead of losing a
write. Every change is published to the running instances, which pick it up
within about a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from .config import Settings
from .entries import AFTER_RUN_ACTIONS, EntrySpec, EntryState, MisfirePolicy
from .exceptions import (
    ConfigurationError,
    EntryNotFoundError,
    InvalidEntryError,
    InvalidScheduleError,
)
from .registry import Registry
from .schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    datetime_to_ms,
    from_celery,
)
from .taskcheck import argument_mismatch, load_task_modules
from .ticks import run_now_task_id

__all__ = ["OPTION_KEYS", "DynamicTasks"]

#: ``apply_async`` options an entry may carry.
OPTION_KEYS = frozenset({"queue", "routing_key", "exchange", "priority", "expires", "headers"})

#: The fields :meth:`DynamicTasks.add` and :meth:`DynamicTasks.update` accept.
_FIELDS = frozenset(
    {
        "task", "cron", "every", "at", "schedule", "tz", "args", "kwargs", "payload",
        "options", "enabled", "start_at", "end_at", "max_runs", "after_run",
        "misfire_policy", "misfire_grace", "description",
    }
)  # fmt: skip
_SCHEDULE_FIELDS = ("cron", "every", "at", "schedule")
#: The fields that make up the task's call: an update of one checks its arguments again.
_CALL_FIELDS = frozenset({"task", "args", "kwargs", "payload"})
_NAME = re.compile(r"^[^\x00-\x1f\x7f{}]{1,200}$")


class DynamicTasks:
    """Dynamic entries of one namespace (``dcron_namespace``) of an app's registry.

    ``check_tasks`` (default True, whatever the beat's ``dcron_check_tasks``) refuses a
    task name the app does not know, once the app's task modules are loaded (``include``,
    ``imports``, ``autodiscover_tasks``), and args/kwargs that do not fit the signature of
    a task it knows. Pass False when this process cannot import the tasks.
    """

    #: How to turn the task check off, named by its errors (the CLI names its flag).
    check_off_hint: ClassVar[str] = "pass check_tasks=False"

    def __init__(
        self,
        app: Any,
        *,
        settings: Settings | None = None,
        registry: Registry | None = None,
        check_tasks: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings or Settings.from_app(app)
        self.registry = registry or Registry.from_settings(self.settings)
        self.check_tasks = check_tasks

    # -- reading -------------------------------------------------------------------

    def get(self, name: str) -> EntrySpec:
        """The entry ``name``; raises EntryNotFoundError."""
        spec = self.registry.get_entry(name)
        if spec is None:
            raise EntryNotFoundError(f"entry {name!r}: not found in namespace "
                                     f"{self.settings.namespace!r}")  # fmt: skip
        return spec

    def list(self) -> list[EntrySpec]:
        """Every entry (static and dynamic) that parses, by name."""
        entries, _bad = self.registry.entries()
        return [entries[name] for name in sorted(entries)]

    def state(self, name: str) -> EntryState:
        """Shared run state of ``name`` (anchor, last tick, runs, last node)."""
        return self.registry.states([name]).get(name) or EntryState()

    def deleted(self) -> dict[str, int]:
        """Tombstoned names and their deletion time (ms)."""
        return self.registry.tombstones()

    # -- writing -------------------------------------------------------------------

    def add(self, name: str, task: str | None = None, **fields: Any) -> EntrySpec:
        """Add a dynamic entry; refused if the name exists or is deleted (tombstoned).

        Exactly one schedule: ``cron="*/5 * * * *"`` (6 fields: seconds first) with an
        optional ``tz``; ``every=`` seconds or a timedelta; ``at=`` an aware datetime
        (one-off); or ``schedule=`` a Celery ``schedule``/``crontab``/``solar``.
        Other fields: ``args``, ``kwargs``, ``payload`` (sent to ``dcron_default_task``
        when there is no task), ``options`` ({queue, routing_key, exchange, priority,
        expires, headers}), ``enabled``, ``start_at``, ``end_at``, ``max_runs``,
        ``after_run`` ("delete", "tombstone" or "disable" after the last run),
        ``misfire_policy``, ``misfire_grace`` (seconds), ``description``.
        """
        spec = self._build(name, task, fields)
        return self.registry.put_entry(spec, expected_version=None, force=False)

    def build(
        self, name: str, task: str | None = None, *, now_ms: int | None = None, **fields: Any
    ) -> EntrySpec:
        """Validate the fields of :meth:`add` and return the entry it would write, without
        writing anything. A one-off ``at=`` must be after ``now_ms`` (default: the Redis
        server's time; pass your own to validate without Redis, as the Django admin does).
        """
        return self._build(name, task, fields, now_ms=now_ms)

    def force_add(self, name: str, task: str | None = None, **fields: Any) -> EntrySpec:
        """Add or overwrite ``name``, even a deleted (tombstoned) or static one."""
        spec = self._build(name, task, fields)
        return self.registry.put_entry(spec, expected_version=None, force=True)

    def update(
        self, name: str, *, expected_version: int | None = None, **changes: Any
    ) -> EntrySpec:
        """Change some fields of ``name`` (compare-and-set).

        ``expected_version`` (from a :meth:`get`) makes the update fail with
        ConflictError if anyone changed the entry since; without it, the version just
        read is used, so a write made between that read and this one is not lost either.
        """
        current = self.get(name)
        spec = self._apply(current, changes)
        version = current.version if expected_version is None else expected_version
        return self.registry.put_entry(spec, expected_version=version, force=False)

    def remove(self, name: str) -> None:
        """Remove ``name`` (definition and state). A static entry comes back with the next
        instance start; use :meth:`mark_deleted` to keep it out."""
        if not self.registry.remove_entry(name, tombstone=False):
            raise EntryNotFoundError(f"entry {name!r}: not found")

    def mark_deleted(self, name: str) -> bool:
        """Remove ``name`` and tombstone it: re-adding it (also from a static
        ``beat_schedule``) is refused until :meth:`force_add` or :meth:`reuse_deleted`.
        Returns whether an entry existed."""
        _check_name(name)
        return self.registry.remove_entry(name, tombstone=True)

    def reuse_deleted(self, name: str) -> bool:
        """Free a deleted (tombstoned) name. Returns whether it was tombstoned."""
        return self.registry.reuse_deleted(name)

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name``: definition, state, tombstone, unsent claims."""
        return self.registry.cleanup(name)

    def pause(self, name: str) -> EntrySpec:
        """Disable ``name``; its owner stops firing it at its next step."""
        return self.registry.set_enabled(name, False)

    def resume(self, name: str) -> EntrySpec:
        """Enable ``name`` again; missed ticks follow its misfire policy."""
        return self.registry.set_enabled(name, True)

    def reset(self, name: str) -> None:
        """Start ``name`` afresh: anchored now, no last tick, run count 0."""
        if not self.registry.reset(name):
            raise EntryNotFoundError(f"entry {name!r}: not found")

    def run_now(self, name: str) -> str:
        """Ask the owner of ``name`` for one extra dispatch now; returns its task id.

        The run does not change the schedule nor count towards ``max_runs``.
        """
        request_ms = self.registry.run_now(name)
        return run_now_task_id(self.settings.namespace, name, request_ms)

    def pause_all(self) -> None:
        """Pause the whole namespace: no instance claims or sends anything until
        :meth:`resume_all`; missed ticks then follow each entry's misfire policy."""
        self.registry.set_paused(True)

    def resume_all(self) -> None:
        self.registry.set_paused(False)

    def is_paused(self) -> bool:
        return self.registry.is_paused()

    # -- validation ----------------------------------------------------------------

    def _build(
        self,
        name: str,
        task: str | None,
        fields: Mapping[str, Any],
        *,
        now_ms: int | None = None,
    ) -> EntrySpec:
        _check_name(name)
        _check_fields(name, fields)
        given = [f for f in _SCHEDULE_FIELDS if fields.get(f) is not None]
        if len(given) != 1:
            raise InvalidScheduleError(
                f"entry {name!r}: schedule: give exactly one of cron=, every=, at= or "
                f"schedule= (got {', '.join(given) or 'none'})",
                field="schedule",
            )
        changes = dict(fields)
        changes["task"] = task
        blank = EntrySpec(name=name, task="", schedule=IntervalSchedule(every_ms=1000))
        return self._apply(blank, changes, creating=True, now_ms=now_ms)

    def _apply(
        self,
        spec: EntrySpec,
        changes: Mapping[str, Any],
        *,
        creating: bool = False,
        now_ms: int | None = None,
    ) -> EntrySpec:
        name = spec.name
        _check_fields(name, changes)
        new: dict[str, Any] = {"source": spec.source if not creating else "dynamic"}
        if creating or "task" in changes:
            has_payload = changes.get("payload") is not None or "payload" in spec.kwargs
            new["task"] = self._task(name, changes.get("task"), has_payload=has_payload)
        schedule = self._schedule(spec, changes, creating=creating, now_ms=now_ms)
        if schedule is not None:
            new["schedule"] = schedule
        if "args" in changes:
            args = changes["args"] if changes["args"] is not None else ()
            if not isinstance(args, (list, tuple)):
                raise InvalidEntryError(
                    f"entry {name!r}: args: must be a list, got {type(args).__name__}",
                    field="args",
                )
            new["args"] = tuple(args)
        kwargs = dict(spec.kwargs)
        if "kwargs" in changes:
            given = changes["kwargs"] if changes["kwargs"] is not None else {}
            if not isinstance(given, Mapping) or not all(isinstance(k, str) for k in given):
                raise InvalidEntryError(
                    f"entry {name!r}: kwargs: must be a dict with string keys, got {given!r}",
                    field="kwargs",
                )
            payload = kwargs.get("payload")
            kwargs = dict(given)
            if "payload" not in changes and payload is not None and "payload" not in kwargs:
                kwargs["payload"] = payload
        if changes.get("payload") is not None:
            kwargs["payload"] = changes["payload"]
        new["kwargs"] = kwargs
        if "options" in changes:
            new["options"] = _options(name, changes["options"])
        if "enabled" in changes:
            if not isinstance(changes["enabled"], bool):
                raise InvalidEntryError(
                    f"entry {name!r}: enabled: must be True or False", field="enabled"
                )
            new["enabled"] = changes["enabled"]
        tz = self._zone_of_naive(spec, changes, creating=creating)
        for key, attr in (("start_at", "start_ms"), ("end_at", "end_ms")):
            if key in changes:
                value = changes[key]
                new[attr] = None if value is None else _instant(name, key, value, tz)
        if "max_runs" in changes:
            new["max_runs"] = _positive_int(name, "max_runs", changes["max_runs"])
        if "after_run" in changes:
            action = changes["after_run"]
            if action is not None and action not in AFTER_RUN_ACTIONS:
                raise InvalidEntryError(
                    f"entry {name!r}: after_run: {action!r} must be one of "
                    f"{', '.join(AFTER_RUN_ACTIONS)} (or None)",
                    field="after_run",
                )
            new["after_run"] = action
        if "misfire_policy" in changes:
            policy = changes["misfire_policy"]
            new["misfire_policy"] = (
                None
                if policy is None
                else MisfirePolicy.parse(policy, field_name=f"entry {name!r}: misfire_policy")
            )
        if "misfire_grace" in changes:
            grace = changes["misfire_grace"]
            new["misfire_grace_s"] = (
                None if grace is None else _seconds(name, "misfire_grace", grace)
            )
        if "description" in changes:
            desc = changes["description"] or ""
            if not isinstance(desc, str):
                raise InvalidEntryError(
                    f"entry {name!r}: description: must be a string", field="description"
                )
            new["description"] = desc
        result = spec.with_changes(**new)
        self._check_result(result)
        if self.check_tasks and (creating or changes.keys() & _CALL_FIELDS):
            self._check_arguments(result)
        return result

    def _check_arguments(self, spec: EntrySpec) -> None:
        task = self.app.tasks.get(spec.task)
        if task is None:
            return
        mismatch = argument_mismatch(task, spec.args, spec.kwargs)
        if mismatch is not None:
            field, reason = mismatch
            raise InvalidEntryError(
                f"entry {spec.name!r}: {reason}; fix them, or {self.check_off_hint}",
                field=field,
            )

    def _task(self, name: str, task: Any, *, has_payload: bool) -> str:
        if task is None:
            if not has_payload:
                raise InvalidEntryError(
                    f"entry {name!r}: task: give a task name, or a payload for dcron_default_task",
                    field="task",
                )
            if self.settings.default_task is None:
                raise InvalidEntryError(
                    f"entry {name!r}: task: a payload-only entry needs the "
                    "dcron_default_task setting (the task that receives payloads), "
                    "or give a task name"
                )
            task = self.settings.default_task
        if not isinstance(task, str) or not task.strip():
            raise InvalidEntryError(
                f"entry {name!r}: task: must be a task name, got {task!r}", field="task"
            )
        if self.check_tasks and not self._known(name, task):
            raise InvalidEntryError(
                f"entry {name!r}: task: {task!r} is not registered in this Celery app (its "
                "include=, imports and autodiscover_tasks modules are loaded); check the "
                f"name, or {self.check_off_hint}",
                field="task",
            )
        return task

    def _known(self, name: str, task: str) -> bool:
        """Whether the app knows ``task``, once its task modules are imported."""
        if task in self.app.tasks:
            return True
        try:
            load_task_modules(self.app)
        except Exception as exc:  # the user's modules: any error, named with the fix
            raise ConfigurationError(
                f"entry {name!r}: task: importing the Celery app's task modules to check "
                f"{task!r} failed: {exc!r}; fix that module, or {self.check_off_hint}"
            ) from exc
        return task in self.app.tasks

    def _zone_of_naive(
        self, spec: EntrySpec, changes: Mapping[str, Any], *, creating: bool
    ) -> str | None:
        """The zone of naive datetimes: ``tz=``, else (in an update) the entry's own."""
        tz = changes.get("tz")
        if tz is None and not creating and isinstance(spec.schedule, CronSchedule):
            return spec.schedule.tz
        return tz if isinstance(tz, str) else None

    def _schedule(
        self,
        spec: EntrySpec,
        changes: Mapping[str, Any],
        *,
        creating: bool,
        now_ms: int | None = None,
    ) -> Schedule | None:
        name = spec.name
        given = [f for f in _SCHEDULE_FIELDS if changes.get(f) is not None]
        if len(given) > 1:
            raise InvalidScheduleError(
                f"entry {name!r}: schedule: give only one of cron=, every=, at=, schedule= "
                f"(got {', '.join(given)})",
                field="schedule",
            )
        tz = changes.get("tz")
        if tz is not None and not isinstance(tz, str):
            raise InvalidScheduleError(
                f"entry {name!r}: tz: must be an IANA zone name like 'UTC'", field="tz"
            )
        app_tz = str(getattr(self.app.conf, "timezone", None) or "UTC")
        # A partial update keeps the zone: a cron (or crontab) given without tz= takes the
        # entry's own, and only a new entry (or a change from another kind) the app's.
        naive_tz = self._zone_of_naive(spec, changes, creating=creating)
        zone = naive_tz or app_tz
        try:
            if not given:
                if tz is not None and isinstance(spec.schedule, CronSchedule):
                    return CronSchedule(expr=spec.schedule.expr, tz=tz, day_or=spec.schedule.day_or)
                if tz is not None and not creating:
                    raise InvalidScheduleError(
                        "tz: only cron schedules have a timezone", field="tz"
                    )
                return None
            kind = given[0]
            value = changes[kind]
            if kind == "cron":
                if not isinstance(value, str):
                    raise InvalidScheduleError(
                        f"cron: {value!r} must be a string like '*/5 * * * *'", field="cron"
                    )
                return CronSchedule(expr=value, tz=zone)
            if kind == "every":
                return IntervalSchedule(every_ms=_every_ms(value))
            if kind == "at":
                at_ms = _instant(name, "at", value, naive_tz)
                if now_ms is None:
                    now_ms = self.registry.server_ms()
                if at_ms <= now_ms:
                    raise InvalidScheduleError(
                        f"at: {value!s} is in the past; give a future time, or use run_now()",
                        field="at",
                    )
                return AtSchedule(at_ms=at_ms)
            return from_celery(value, entry=name, app_tz=zone)
        except InvalidScheduleError as exc:
            if exc.field is None:  # about the schedule given (or the zone of an update)
                exc.field = given[0] if given else "tz"
            message = str(exc)
            if message.startswith(f"entry {name!r}"):
                raise
            raise InvalidScheduleError(f"entry {name!r}: {message}", field=exc.field) from None

    def _check_result(self, spec: EntrySpec) -> None:
        name = spec.name
        if spec.after_run is not None and not (
            isinstance(spec.schedule, AtSchedule) or spec.max_runs or spec.end_ms is not None
        ):
            raise InvalidEntryError(
                f"entry {name!r}: after_run: only entries that end can have one; use at=, "
                "max_runs= or end_at=",
                field="after_run",
            )
        if spec.start_ms is not None and spec.end_ms is not None and spec.end_ms < spec.start_ms:
            raise InvalidEntryError(
                f"entry {name!r}: end_at: must not be before start_at", field="end_at"
            )
        try:
            body = json.dumps({"args": list(spec.args), "kwargs": dict(spec.kwargs)})
        except (TypeError, ValueError) as exc:
            raise InvalidEntryError(
                f"entry {name!r}: args/kwargs/payload: must be JSON-serialisable "
                f"(lists, dicts, strings, numbers, booleans, None): {exc}"
            ) from None
        size = len(body.encode())
        if size > self.settings.max_payload_bytes:
            raise InvalidEntryError(
                f"entry {name!r}: payload: args + kwargs + payload are {size} bytes of JSON, "
                f"over dcron_max_payload_bytes ({self.settings.max_payload_bytes}); store "
                "the data elsewhere and pass a reference, or raise the setting",
                field="payload",
            )
        spec.dumps()


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name != name.strip():
        raise InvalidEntryError(
            f"name: {name!r} is not a valid entry name; use 1-200 printable characters "
            "without '{', '}' or leading/trailing spaces",
            field="name",
        )


def _check_fields(name: str, fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise InvalidEntryError(
            f"entry {name!r}: unknown fields {sorted(unknown)}; allowed: {sorted(_FIELDS)}"
        )


def _options(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEntryError(
            f"entry {name!r}: options: must be a dict, got {value!r}", field="options"
        )
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


def _every_ms(value: Any) -> int:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidScheduleError(
            f"every: {value!r} must be a number of seconds or a datetime.timedelta",
            field="every",
        )
    if not math.isfinite(seconds) or round(seconds * 1000) <= 0:
        raise InvalidScheduleError(
            f"every: {value!r} must be a positive number of seconds", field="every"
        )
    return round(seconds * 1000)


def _instant(name: str, field: str, value: Any, tz: str | None) -> int:
    """Milliseconds of an aware datetime or ISO 8601 string; naive ones take ``tz``."""
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
        if tz is None:
            raise InvalidScheduleError(
                f"entry {name!r}: {field}: {value!s} has no timezone; give an aware datetime "
                "(e.g. with tzinfo=timezone.utc or a '+00:00' suffix) or tz=",
                field=field,
            )
        from zoneinfo import ZoneInfo

        try:
            dt = dt.replace(tzinfo=ZoneInfo(tz))
        except (KeyError, ValueError):
            raise InvalidScheduleError(
                f"entry {name!r}: tz: unknown timezone {tz!r}", field="tz"
            ) from None
    return datetime_to_ms(dt)


def _positive_int(name: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidEntryError(f"entry {name!r}: {field}: must be a positive integer", field=field)
    return value


def _seconds(name: str, field: str, value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidEntryError(
            f"entry {name!r}: {field}: must be a positive number of seconds", field=field
        )
    return float(value)
