"""Schedules: what users write, validated once, as frozen value objects. Pure: no I/O.

Four kinds, each with a JSON form (``schedule_to_json`` / ``schedule_from_json``):

- :class:`IntervalSchedule` every N ms, anchored when the entry is first registered;
- :class:`CronSchedule` a cron string (5 fields, or 6 with seconds first) in an IANA zone;
- :class:`SolarSchedule` a solar event at a place (needs the optional ``ephem``);
- :class:`AtSchedule` a one-off at an instant.

:func:`from_celery` converts what users put in ``beat_schedule[...]["schedule"]``;
:class:`cron` is the user-facing cron string schedule, also usable under Celery's
default beat. The tick math lives in :mod:`celery_dcron.ticks`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, crontab, schedstate, solar
from celery.schedules import schedule as celery_schedule
from croniter import CroniterError, croniter

from .exceptions import InvalidScheduleError

__all__ = [
    "SOLAR_EVENTS",
    "AtSchedule",
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "SolarSchedule",
    "cron",
    "datetime_to_ms",
    "from_celery",
    "load_ephem",
    "ms_to_datetime",
    "schedule_from_json",
    "schedule_to_json",
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


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _zone(tz: object, where: str) -> ZoneInfo:
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
        _zone(self.tz, f"cron {self.expr!r}")
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
        if not _is_real(self.lat) or not -90 <= self.lat <= 90:
            raise InvalidScheduleError(
                f"{where}: lat {self.lat!r} must be between -90 and 90", field="lat"
            )
        if not _is_real(self.lon) or not -180 <= self.lon <= 180:
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

    try:
        if kind == "interval":
            return IntervalSchedule(every_ms=need("every_ms", _is_int, "an integer"))
        if kind == "cron":
            return CronSchedule(
                expr=need("expr", _is_str, "a string"),
                tz=data.get("tz", "UTC"),
                day_or=data.get("day_or", True),
            )
        if kind == "solar":
            return SolarSchedule(
                event=need("event", _is_str, "a string"),
                lat=need("lat", _is_real, "a number"),
                lon=need("lon", _is_real, "a number"),
            )
        if kind == "at":
            return AtSchedule(at_ms=need("at_ms", _is_int, "an integer"))
    except InvalidScheduleError as exc:
        message = str(exc)
        if message.startswith(where):
            raise
        raise InvalidScheduleError(f"entry {entry!r}: {message}") from None
    raise InvalidScheduleError(
        f"{where}: unknown kind {kind!r}; expected 'interval', 'cron', 'solar' or 'at'"
    )


# Celery's crontab attributes (expanded sets) in cron field order, with their ranges.
_CRONTAB: Final = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day_of_month", 1, 31),
    ("month_of_year", 1, 12),
    ("day_of_week", 0, 6),
)


def _full(values: set[int], low: int, high: int) -> str:
    if values == set(range(low, high + 1)):
        return "*"
    return ",".join(str(v) for v in sorted(values))


def _zone_name(tz: object) -> str | None:
    name = getattr(tz, "key", None) or getattr(tz, "zone", None)
    return name if isinstance(name, str) else None


def from_celery(obj: object, *, entry: str, app_tz: str) -> Schedule:
    """Convert a ``beat_schedule[...]["schedule"]`` value into a Schedule."""
    try:
        return _from_celery(obj, app_tz)
    except InvalidScheduleError as exc:
        raise InvalidScheduleError(f"entry {entry!r}: {exc}", field=exc.field) from None


def _from_celery(obj: object, app_tz: str) -> Schedule:
    if isinstance(obj, Schedule):
        return obj
    if isinstance(obj, cron):
        return obj.to_schedule(app_tz=app_tz)
    if _is_real(obj):
        seconds = float(obj)  # type: ignore[arg-type]
        if not math.isfinite(seconds):
            raise InvalidScheduleError(f"interval {obj!r}: must be a finite number of seconds")
        return IntervalSchedule(every_ms=round(seconds * 1000))
    if isinstance(obj, timedelta):
        return IntervalSchedule(every_ms=round(obj / _MS))
    if isinstance(obj, celery_schedule):
        # ``relative=True`` (round to the interval) is not kept: ticks run from the anchor.
        return _from_celery(getattr(obj, "run_every", None), app_tz)
    if isinstance(obj, crontab):
        # Celery's crontab ANDs day_of_month and day_of_week (all must match): day_or=False.
        explicit = _zone_name(vars(obj).get("tz"))  # e.g. django-celery-beat's TzAwareCrontab
        expr = " ".join(_full(getattr(obj, name), low, high) for name, low, high in _CRONTAB)
        return CronSchedule(expr=expr, tz=explicit or app_tz, day_or=False)
    if isinstance(obj, solar):
        return SolarSchedule(event=obj.event, lat=obj.lat, lon=obj.lon)
    if isinstance(obj, datetime):
        if obj.tzinfo is None or obj.utcoffset() is None:
            obj = obj.replace(tzinfo=_zone(app_tz, "app timezone"))
        return AtSchedule(at_ms=datetime_to_ms(obj))
    raise InvalidScheduleError(
        f"schedule {obj!r} ({type(obj).__name__}) is not supported; use a number of seconds, "
        "a datetime.timedelta, a datetime (one-off), celery.schedules.schedule, crontab or "
        "solar, or celery_dcron.cron('*/5 * * * *')"
    )


class cron(BaseSchedule):
    """A cron string schedule: ``cron("*/5 * * * * *", tz="Europe/Paris")``.

    Five fields, or six with the seconds field first. ``tz=None`` means the Celery
    app's timezone. Also works under Celery's default beat (``is_due``).
    """

    def __init__(
        self,
        expr: str,
        tz: str | None = None,
        day_or: bool = True,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
    ) -> None:
        CronSchedule(expr=expr, tz="UTC" if tz is None else tz, day_or=day_or)
        self.expr = expr
        self.tz_name = tz
        self.day_or = day_or
        super().__init__(nowfun=nowfun, app=app)

    def to_schedule(self, *, app_tz: str | None = None) -> CronSchedule:
        """The value object; ``tz=None`` resolves to ``app_tz``, else the app's zone."""
        tz = self.tz_name or app_tz or _zone_name(self.tz) or "UTC"
        return CronSchedule(expr=self.expr, tz=tz, day_or=self.day_or)

    def _next_after(self, when: datetime) -> tuple[int | None, int]:
        from .ticks import next_tick  # ticks imports this module

        now_ms = datetime_to_ms(self.maybe_make_aware(self.now()))
        return next_tick(self.to_schedule(), datetime_to_ms(self.maybe_make_aware(when))), now_ms

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        next_ms, now_ms = self._next_after(last_run_at)
        if next_ms is None:
            return timedelta(days=365)
        return timedelta(milliseconds=next_ms - now_ms)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """``(is_due, seconds until the next check)``, Celery's contract."""
        next_ms, now_ms = self._next_after(last_run_at)
        if next_ms is None:
            return schedstate(False, 365 * 86400.0)
        if next_ms > now_ms:
            return schedstate(False, (next_ms - now_ms) / 1000)
        after_now, _ = self._next_after(ms_to_datetime(now_ms))
        wait_s = 365 * 86400.0 if after_now is None else (after_now - now_ms) / 1000
        return schedstate(True, wait_s)

    def __repr__(self) -> str:
        tz = "" if self.tz_name is None else f", tz={self.tz_name!r}"
        day_or = "" if self.day_or else ", day_or=False"
        return f"<cron: {self.expr!r}{tz}{day_or}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, cron):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, str | None, bool]:
        return self.expr, self.tz_name, self.day_or

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.expr, self.tz_name, self.day_or, getattr(self, "nowfun", None))
