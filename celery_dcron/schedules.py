"""Schedules: what users write, validated once, as frozen value objects. Pure: no I/O.

Four kinds, each with a JSON form (``schedule_to_json`` / ``schedule_from_json``):

- :class:`IntervalSchedule` every N ms, anchored when the entry is first registered;
- :class:`CronSchedule` a cron string (5 fields, or 6 with seconds first) in an IANA zone;
- :class:`SolarSchedule` a solar event at a place (needs the optional ``ephem``);
- :class:`AtSchedule` a one-off at an instant.

The tick math lives in :mod:`celery_dcron.ticks`; Celery's own schedule objects
(``crontab``, ``solar``, ...) and the user-facing :class:`~celery_dcron.cron` are
converted in :mod:`celery_dcron.celery_schedules`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from .exceptions import InvalidScheduleError

__all__ = [
    "SOLAR_EVENTS",
    "AtSchedule",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "SolarSchedule",
    "datetime_to_ms",
    "is_real",
    "load_ephem",
    "load_zone",
    "ms_to_datetime",
    "schedule_from_json",
    "schedule_to_json",
    "shared_schedule",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS: Final = timedelta(milliseconds=1)

_FIELDS_5: Final = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31 or L"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-6 or sun-sat"),
)
_FIELDS_6: Final = (("second", "0-59"), *_FIELDS_5)
_ALIASES: Final = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)
# croniter's random (R) and hashed (H) values differ between processes: refused.
_NONDETERMINISTIC: Final = re.compile(r"^[hr](\(|/|$)", re.IGNORECASE)

#: Celery's solar events: event -> (ephem horizon, Observer method, use_center).
SOLAR_EVENTS: Final[Mapping[str, tuple[str, str, bool]]] = {
    "dawn_astronomical": ("-18", "next_rising", True),
    "dawn_nautical": ("-12", "next_rising", True),
    "dawn_civil": ("-6", "next_rising", True),
    "sunrise": ("-0:34", "next_rising", False),
    "solar_noon": ("0", "next_transit", False),
    "sunset": ("-0:34", "next_setting", False),
    "dusk_civil": ("-6", "next_setting", True),
    "dusk_nautical": ("-12", "next_setting", True),
    "dusk_astronomical": ("-18", "next_setting", True),
}


def datetime_to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (floored, exact)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"datetime {dt!r} is naive; give it a tzinfo")
    return (dt - _EPOCH) // _MS


def ms_to_datetime(ms: int) -> datetime:
    """The aware UTC datetime of ``ms`` milliseconds since the epoch (exact)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def is_real(value: object) -> bool:
    """A number (int or float), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_zone(tz: object, where: str) -> ZoneInfo:
    """The zone named ``tz``; InvalidScheduleError (field ``tz``) naming ``where``."""
    if not isinstance(tz, str) or not tz:
        raise InvalidScheduleError(
            f"{where}: tz must be an IANA zone name such as 'UTC'", field="tz"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidScheduleError(
            f"{where}: unknown timezone {tz!r}; use an IANA name such as 'Europe/Paris' or 'UTC'",
            field="tz",
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalSchedule:
    """Every ``every_ms`` milliseconds, counted from the entry's anchor."""

    every_ms: int

    def __post_init__(self) -> None:
        if not _is_int(self.every_ms) or self.every_ms <= 0:
            raise InvalidScheduleError(
                f"interval every_ms={self.every_ms!r}: must be a positive whole number "
                "of milliseconds (e.g. 5000 for every 5 seconds)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class CronSchedule:
    """A cron string in an IANA timezone.

    Five fields (``min hour dom mon dow``), six with the seconds field first
    (``sec min hour dom mon dow``), or an alias such as ``@daily``. ``day_or``: when
    both day of month and day of week are restricted, a day matches if either does
    (classic cron, True) or only if both do (Celery's ``crontab``, False).
    """

    expr: str
    tz: str = "UTC"
    day_or: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise InvalidScheduleError(f"cron {self.expr!r}: must be a string like '*/5 * * * *'")
        if not isinstance(self.day_or, bool):
            raise InvalidScheduleError(f"cron {self.expr!r}: day_or must be true or false")
        load_zone(self.tz, f"cron {self.expr!r}")
        _cron_template(self.expr, self.tz, self.day_or)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def iterator(self, start_s: int) -> Any:
        """A fresh croniter positioned at ``start_s`` (whole seconds) in this zone."""
        it = copy.copy(_cron_template(self.expr, self.tz, self.day_or))
        it.set_current(datetime.fromtimestamp(start_s, self.zone), force=True)
        return it


def _cron_fields(expr: str) -> tuple[tuple[str, str], ...]:
    parts = expr.split()
    if len(parts) == 1 and parts[0].lower() in _ALIASES:
        return ()
    if len(parts) not in (5, 6):
        raise InvalidScheduleError(
            f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with the seconds first (second minute ...), got {len(parts)}"
        )
    names = _FIELDS_5 if len(parts) == 5 else _FIELDS_6
    for (name, _valid), value in zip(names, parts, strict=True):
        for part in value.split(","):
            if _NONDETERMINISTIC.match(part):
                raise InvalidScheduleError(
                    f"cron {expr!r}: {name} {value!r}: random (R) and hashed (H) values are "
                    "not supported, every instance must compute the same ticks; "
                    "write explicit values"
                )
    return names


@functools.lru_cache(maxsize=2048)
def _cron_template(expr: str, tz: str, day_or: bool) -> Any:
    """Validate ``expr`` once and keep a croniter to copy; raises InvalidScheduleError."""
    names = _cron_fields(expr)
    six = len(names) == 6
    try:
        croniter.expand(expr, second_at_beginning=six)
    except (CroniterError, ValueError) as exc:
        parts = expr.split()
        for index, (name, valid) in enumerate(names):
            probe = ["*"] * len(parts)
            probe[index] = parts[index]
            try:
                croniter.expand(" ".join(probe), second_at_beginning=six)
            except (CroniterError, ValueError):
                hint = " (with 6 fields the seconds come first)" if six else ""
                raise InvalidScheduleError(
                    f"cron {expr!r}: {name} {parts[index]!r} is invalid; "
                    f"{name} must be {valid}{hint}"
                ) from None
        raise InvalidScheduleError(f"cron {expr!r}: {exc}") from None
    start = datetime(2000, 1, 1, tzinfo=ZoneInfo(tz))
    it = croniter(expr, start, ret_type=datetime, day_or=day_or, second_at_beginning=six)
    try:
        it.get_next(datetime)
    except CroniterError:
        raise InvalidScheduleError(
            f"cron {expr!r}: never fires (no date matches its day of month, month and day "
            "of week, e.g. 30 February); fix the day fields"
        ) from None
    return it


@dataclass(frozen=True, slots=True, kw_only=True)
class SolarSchedule:
    """A solar event (Celery's names, e.g. ``sunrise``) at a latitude/longitude."""

    event: str
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if self.event not in SOLAR_EVENTS:
            raise InvalidScheduleError(
                f"solar event {self.event!r} is unknown; use one of {', '.join(SOLAR_EVENTS)}",
                field="event",
            )
        where = f"solar {self.event!r}"
        if not is_real(self.lat) or not -90 <= self.lat <= 90:
            raise InvalidScheduleError(
                f"{where}: lat {self.lat!r} must be between -90 and 90", field="lat"
            )
        if not is_real(self.lon) or not -180 <= self.lon <= 180:
            raise InvalidScheduleError(
                f"{where}: lon {self.lon!r} must be between -180 and 180", field="lon"
            )
        load_ephem()


def load_ephem() -> ModuleType:
    """The optional ``ephem`` module; raises InvalidScheduleError naming the fix."""
    try:
        return importlib.import_module("ephem")
    except ImportError:
        raise InvalidScheduleError(
            "solar schedules need the optional 'ephem' package: pip install celery-dcron[solar]"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AtSchedule:
    """A one-off at ``at_ms`` (milliseconds since the epoch, UTC)."""

    at_ms: int

    def __post_init__(self) -> None:
        if not _is_int(self.at_ms):
            raise InvalidScheduleError(
                f"at at_ms={self.at_ms!r}: must be whole milliseconds since the epoch"
            )


Schedule: TypeAlias = IntervalSchedule | CronSchedule | SolarSchedule | AtSchedule


def schedule_to_json(s: Schedule) -> dict[str, Any]:
    if isinstance(s, IntervalSchedule):
        return {"kind": "interval", "every_ms": s.every_ms}
    if isinstance(s, CronSchedule):
        return {"kind": "cron", "expr": s.expr, "tz": s.tz, "day_or": s.day_or}
    if isinstance(s, SolarSchedule):
        return {"kind": "solar", "event": s.event, "lat": s.lat, "lon": s.lon}
    if isinstance(s, AtSchedule):
        return {"kind": "at", "at_ms": s.at_ms}
    raise InvalidScheduleError(f"not a schedule: {s!r}")


def schedule_from_json(data: object, *, entry: str) -> Schedule:
    """The schedule of ``data`` (a JSON object); InvalidScheduleError if malformed.

    Unknown extra keys are ignored (written by a newer version).
    """
    if type(data) is dict and data.get("kind") == "interval":
        # the common case, read back by the hundred thousand: an interval already made
        every = data.get("every_ms")
        if type(every) is int and (
            shared := _SHARED.get((IntervalSchedule, ("every_ms", int, every)))
        ):
            return shared
    where = f"entry {entry!r}: schedule"
    if not isinstance(data, Mapping):
        raise InvalidScheduleError(f"{where} must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")

    def need(key: str, check: Callable[[object], bool], what: str) -> Any:
        if key not in data:
            raise InvalidScheduleError(f"{where} ({kind}) is missing {key!r}")
        value = data[key]
        if not check(value):
            raise InvalidScheduleError(f"{where} ({kind}): {key} {value!r} must be {what}")
        return value

    make: Callable[..., Schedule]
    if kind == "interval":
        make, fields = IntervalSchedule, {"every_ms": need("every_ms", _is_int, "an integer")}
    elif kind == "cron":
        make = CronSchedule
        fields = {
            "expr": need("expr", _is_str, "a string"),
            "tz": data.get("tz", "UTC"),
            "day_or": data.get("day_or", True),
        }
    elif kind == "solar":
        make = SolarSchedule
        fields = {
            "event": need("event", _is_str, "a string"),
            "lat": need("lat", is_real, "a number"),
            "lon": need("lon", is_real, "a number"),
        }
    elif kind == "at":
        make, fields = AtSchedule, {"at_ms": need("at_ms", _is_int, "an integer")}
    else:
        raise InvalidScheduleError(
            f"{where}: unknown kind {kind!r}; expected 'interval', 'cron', 'solar' or 'at'"
        )
    try:
        return shared_schedule(make, **fields)
    except InvalidScheduleError as exc:  # the value object's own check: name the entry
        raise InvalidScheduleError(f"entry {entry!r}: {exc}", field=exc.field) from None


def shared_schedule(make: Callable[..., Schedule], **fields: Any) -> Schedule:
    """``make(**fields)``, or the equal schedule made before (one object per distinct
    schedule: see :data:`_SHARED`); the fields in the order of the schedule's own. Each
    value's type is part of the key: ``0`` equals ``False``, but only the second is a
    ``day_or`` the schedule's own check lets through."""
    key = (make, *[(name, type(value), value) for name, value in fields.items()])
    try:
        shared = _SHARED.get(key)
    except TypeError:  # an unhashable value: its own check names it
        shared = None
    if shared is not None:
        return shared
    made = make(**fields)
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    _SHARED[key] = made
    return made


#: Schedules read back from the registry or converted from a ``beat_schedule``, one object
#: per distinct schedule: the 100,000 entries of a namespace often share a few dozen
#: (schedules are immutable values).
_SHARED: dict[tuple[Any, ...], Schedule] = {}
_SHARED_MAX = 65_536
