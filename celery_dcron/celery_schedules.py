"""Celery's schedule objects and ours: what ``beat_schedule[...]["schedule"]`` may hold.

- :func:`from_celery` converts a number of seconds, a ``timedelta``, a one-off
  ``datetime``, Celery's ``schedule`` / ``crontab`` / ``solar`` or a :class:`cron`
  into a :mod:`celery_dcron.schedules` value object (the API's ``schedule=`` too);
- :class:`cron` is the user-facing cron string schedule (``celery_dcron.cron``), also
  usable under Celery's default beat.

It imports ``celery.schedules`` (pure value types: nothing connects) and the tick math,
which the pure :mod:`celery_dcron.schedules` does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

from celery.schedules import BaseSchedule, crontab, schedstate, solar
from celery.schedules import schedule as celery_schedule

from .exceptions import InvalidScheduleError
from .schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    SolarSchedule,
    datetime_to_ms,
    is_real,
    load_zone,
    ms_to_datetime,
    shared_schedule,
)
from .ticks import next_tick

__all__ = ["cron", "from_celery"]

_MS: Final = timedelta(milliseconds=1)

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
        raise InvalidScheduleError(
            f"entry {entry!r}: {exc}", field=exc.field or "schedule"
        ) from None


def _from_celery(obj: object, app_tz: str) -> Schedule:
    if isinstance(obj, Schedule):
        return obj
    if isinstance(obj, cron):
        return obj.to_schedule(app_tz=app_tz)
    if is_real(obj):
        seconds = float(obj)  # type: ignore[arg-type]
        if not math.isfinite(seconds):
            raise InvalidScheduleError(f"interval {obj!r}: must be a finite number of seconds")
        return shared_schedule(IntervalSchedule, every_ms=round(seconds * 1000))
    if isinstance(obj, timedelta):
        return shared_schedule(IntervalSchedule, every_ms=round(obj / _MS))
    if isinstance(obj, celery_schedule):
        # ``relative=True`` (round to the interval) is not kept: ticks run from the anchor.
        return _from_celery(getattr(obj, "run_every", None), app_tz)
    if isinstance(obj, crontab):
        # Celery's crontab ANDs day_of_month and day_of_week (all must match): day_or=False.
        explicit = _zone_name(vars(obj).get("tz"))  # e.g. django-celery-beat's TzAwareCrontab
        expr = " ".join(_full(getattr(obj, name), low, high) for name, low, high in _CRONTAB)
        return shared_schedule(CronSchedule, expr=expr, tz=explicit or app_tz, day_or=False)
    if isinstance(obj, solar):
        return SolarSchedule(event=obj.event, lat=obj.lat, lon=obj.lon)
    if isinstance(obj, datetime):
        if obj.tzinfo is None or obj.utcoffset() is None:
            obj = obj.replace(tzinfo=load_zone(app_tz, "app timezone"))
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

    An invalid expression or zone is raised where the schedule is used, not here: a
    ``cron(...)`` in a celeryconfig is built while Celery imports it, where an error is
    a traceback that cannot say which entry holds it; the beat (and the API) report it
    as ``entry 'report': cron '61 * * * *': minute ...``. ``error`` holds it meanwhile.
    """

    def __init__(
        self,
        expr: str,
        tz: str | None = None,
        day_or: bool = True,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
    ) -> None:
        #: why the expression or zone is invalid (raised by to_schedule), or None
        self.error: InvalidScheduleError | None = None
        try:
            CronSchedule(expr=expr, tz="UTC" if tz is None else tz, day_or=day_or)
        except InvalidScheduleError as exc:
            self.error = exc
        self.expr = expr
        self.tz_name = tz
        self.day_or = day_or
        super().__init__(nowfun=nowfun, app=app)

    def to_schedule(self, *, app_tz: str | None = None) -> CronSchedule:
        """The value object; ``tz=None`` resolves to ``app_tz``, else the app's zone."""
        tz = self.tz_name or app_tz or _zone_name(self.tz) or "UTC"
        made = shared_schedule(CronSchedule, expr=self.expr, tz=tz, day_or=self.day_or)
        assert isinstance(made, CronSchedule)
        return made

    def _next_after(self, when: datetime) -> tuple[int | None, int]:
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
