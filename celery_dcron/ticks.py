"""Tick math: pure functions of a schedule and a previous tick. No I/O, no clock.

All times are integer milliseconds since the epoch (UTC). "now" is always a
parameter: every instance computes the same ticks from the same shared state.

- :func:`next_tick` the first tick strictly after a time;
- :func:`latest_tick` the latest tick in ``(after, until]`` without walking every tick;
- :func:`plan_due` what to fire, skip or count as missed under a misfire policy;
- :func:`task_id` the deterministic Celery task id of a tick;
- :func:`interval_phase_ms` / :func:`phased_anchor` where an interval entry's grid lies.

An interval entry ticks at ``anchor + k * every``. Its anchor is set once, when the
entry is first registered, at the latest instant not after the registration time that
is congruent to the entry's *phase* modulo ``every``; the phase is a hash of the
namespace and the entry name. So the entries of one beat_schedule do not all tick on
the same millisecond (they are spread over their interval), every instance agrees on
the grid, and the grid does not depend on which instance registered the entry or when.

Cron ticks follow croniter in the schedule's zone. Around DST changes (pinned by
the tests): a wall time that falls in a spring-forward gap fires once, at the first
instant after the gap (``30 2 * * *`` fires at 03:00 on that day); a wall time that
occurs twice in a fall-back overlap fires twice, once per occurrence.

Solar ticks are rounded to whole seconds and are computed forward from the previous
tick (ephem's result depends slightly on where its search starts, so only the chain
``next_tick(s, previous)`` is reproducible); the search starts one minute after
``after_ms`` so that the previous event is never found again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from croniter import CroniterError

from .enums import MisfirePolicy
from .schedules import (
    SOLAR_EVENTS,
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    SolarSchedule,
    datetime_to_ms,
    load_ephem,
    ms_to_datetime,
)

__all__ = [
    "COUNT_CAP",
    "DCRON_UUID_NAMESPACE",
    "FOLD_MS",
    "DuePlan",
    "first_tick_bound",
    "has_first_tick_bound",
    "interval_phase_ms",
    "latest_tick",
    "next_tick",
    "phased_anchor",
    "plan_due",
    "run_now_task_id",
    "same_offset",
    "task_id",
    "tick_iso",
]

#: Namespace of the uuid5 task ids. Never change it: ids of past ticks would change.
DCRON_UUID_NAMESPACE: Final = uuid.UUID("15237f8f-94db-4efc-8626-3d16a23f88f2")

#: For cron schedules :func:`plan_due` counts at most this many due ticks beyond the
#: ones it may fire, so ``DuePlan.missed`` is a lower bound after a long gap.
COUNT_CAP: Final = 256

#: A solar event is searched for this many days before giving up (polar day/night).
_SOLAR_SEARCH_DAYS: Final = 366
_SOLAR_GUARD_MS: Final = 60_000


def next_tick(schedule: Schedule, after_ms: int) -> int | None:
    """The first tick strictly after ``after_ms``; ``None`` if there is none.

    Interval ticks are ``after_ms + every_ms``: pass the anchor or the previous tick.
    """
    if isinstance(schedule, IntervalSchedule):
        return after_ms + schedule.every_ms
    if isinstance(schedule, AtSchedule):
        return schedule.at_ms if schedule.at_ms > after_ms else None
    if isinstance(schedule, CronSchedule):
        # Cron ticks fall on whole seconds: the first one after floor(after) is after it.
        return _cron_step(_cron_iter(schedule, after_ms // 1000), prev=False)
    return _solar_next(schedule, after_ms)


#: A first tick bound holds for anchors within this long after the time it counts from;
#: longer than any fall-back's repeated wall time (2 h: Antarctica/Troll).
FOLD_MS: Final = 3 * 3_600_000


def first_tick_bound(schedule: Schedule, since_ms: int) -> int:
    """A lower bound of the first tick of a cron or one-off entry anchored at or after
    ``since_ms`` (within :data:`FOLD_MS`): its first tick after ``since_ms`` (a later
    anchor, or a ``start_at``, only moves it later). 0 when not known here: an interval
    entry (its first tick follows its anchor, which the registry sets), a solar one (an
    ephem search per schedule; its result moves slightly with where the search starts),
    no tick left, or a cron whose zone changes its UTC offset between ``since_ms`` and
    that tick, or within :data:`FOLD_MS` after ``since_ms`` (around such a change
    croniter's next tick after a later instant can be earlier: Australia/Lord_Howe's
    half-hour fall-back).
    """
    if isinstance(schedule, AtSchedule):
        return next_tick(schedule, since_ms) or 0
    if not isinstance(schedule, CronSchedule):
        return 0
    tick = next_tick(schedule, since_ms)
    if tick is None or not same_offset(schedule, since_ms, since_ms + FOLD_MS, tick):
        return 0
    return tick


def has_first_tick_bound(schedule: Schedule) -> bool:
    """Whether :func:`first_tick_bound` can be other than 0 for ``schedule`` (a cron or
    one-off schedule): a bulk write reads the server's time for it."""
    return isinstance(schedule, CronSchedule | AtSchedule)


def same_offset(schedule: CronSchedule, *instants_ms: int) -> bool:
    """Whether the schedule's zone has one UTC offset at each of ``instants_ms``."""
    zone = schedule.zone
    offsets = {ms_to_datetime(ms).astimezone(zone).utcoffset() for ms in instants_ms}
    return len(offsets) == 1


def latest_tick(schedule: Schedule, after_ms: int, until_ms: int) -> int | None:
    """The latest tick ``T`` with ``after_ms < T <= until_ms``; ``None`` if none."""
    if until_ms <= after_ms:
        return None
    if isinstance(schedule, IntervalSchedule):
        k = (until_ms - after_ms) // schedule.every_ms
        return after_ms + k * schedule.every_ms if k >= 1 else None
    if isinstance(schedule, AtSchedule):
        return schedule.at_ms if after_ms < schedule.at_ms <= until_ms else None
    if isinstance(schedule, CronSchedule):
        tick = _cron_step(_cron_iter(schedule, until_ms // 1000 + 1), prev=True)
        return tick if tick is not None and tick > after_ms else None
    latest = None
    tick = next_tick(schedule, after_ms)
    while tick is not None and tick <= until_ms:
        latest = tick
        tick = next_tick(schedule, tick)
    return latest


@dataclass(frozen=True, slots=True, kw_only=True)
class DuePlan:
    """What to do with the ticks due in ``(last_ms, now_ms]``.

    Claim ``fire`` (oldest first) and publish them; else, if ``skip_to`` is set,
    advance the entry's last tick to it without publishing. ``missed`` counts the due
    ticks not fired (exact for interval, solar and one-off schedules; for cron a lower
    bound once more than ``max_catchup + COUNT_CAP`` ticks are due). ``next_ms`` is
    the first tick after the latest due one (``None``: the schedule has ended).
    """

    fire: tuple[int, ...]
    skip_to: int | None
    missed: int
    next_ms: int | None


def plan_due(
    schedule: Schedule,
    *,
    last_ms: int,
    now_ms: int,
    policy: MisfirePolicy,
    grace_ms: int | None,
    max_catchup: int,
    on_time_ms: int,
) -> DuePlan:
    """Plan the due ticks of one entry; ``last_ms`` is its last claimed tick or anchor.

    A due tick ``T`` is expired when ``now_ms - T > grace_ms`` (``None``: never).
    ``ONCE`` fires the latest due tick unless expired; ``ALL`` fires the newest
    ``max_catchup`` unexpired due ticks; ``SKIP`` fires the latest due tick only if
    ``now_ms - T <= on_time_ms``. When ticks are due but none fires, ``skip_to`` is
    the latest due tick, so the entry moves past them.
    """
    if max_catchup < 1:
        raise ValueError(f"max_catchup must be at least 1, got {max_catchup}")
    policy = MisfirePolicy(policy)
    want = max_catchup if policy is MisfirePolicy.ALL else 1
    newest, count = _due(schedule, last_ms, now_ms, want)
    if count == 0:
        return DuePlan(fire=(), skip_to=None, missed=0, next_ms=next_tick(schedule, last_ms))

    def expired(tick: int) -> bool:
        return grace_ms is not None and now_ms - tick > grace_ms

    latest = newest[0]
    if policy is MisfirePolicy.ALL:
        fire = tuple(t for t in reversed(newest) if not expired(t))
    elif policy is MisfirePolicy.SKIP:
        on_time = now_ms - latest <= on_time_ms and not expired(latest)
        fire = (latest,) if on_time else ()
    else:
        fire = () if expired(latest) else (latest,)
    return DuePlan(
        fire=fire,
        skip_to=None if fire else latest,
        missed=count - len(fire),
        next_ms=next_tick(schedule, latest),
    )


def _due(schedule: Schedule, last_ms: int, now_ms: int, want: int) -> tuple[list[int], int]:
    """The newest ``want`` ticks in ``(last_ms, now_ms]``, newest first, and how many."""
    if now_ms <= last_ms:
        return [], 0
    if isinstance(schedule, IntervalSchedule):
        every = schedule.every_ms
        count = (now_ms - last_ms) // every
        latest = last_ms + count * every
        return [latest - i * every for i in range(min(want, count))], count
    if isinstance(schedule, CronSchedule):
        it = _cron_iter(schedule, now_ms // 1000 + 1)
        newest: list[int] = []
        count = 0
        while count < want + COUNT_CAP:
            tick = _cron_step(it, prev=True)
            if tick is None or tick <= last_ms:
                break
            count += 1
            if len(newest) < want:
                newest.append(tick)
        return newest, count
    # Solar and one-off: walk forward from the shared previous tick (reproducible).
    window: deque[int] = deque(maxlen=want)
    count = 0
    tick = next_tick(schedule, last_ms)
    while tick is not None and tick <= now_ms:
        window.append(tick)
        count += 1
        tick = next_tick(schedule, tick)
    return list(reversed(window)), count


def _cron_iter(schedule: CronSchedule, start_s: int) -> Any:
    try:
        return schedule.iterator(start_s)
    except (OverflowError, ValueError, OSError):  # a time outside datetime's range
        return None


def _cron_step(it: Any, *, prev: bool) -> int | None:
    if it is None:
        return None
    try:
        when = it.get_prev(datetime) if prev else it.get_next(datetime)
    except (CroniterError, ValueError, OverflowError):  # past croniter's year range
        return None
    return datetime_to_ms(when)


def _solar_next(schedule: SolarSchedule, after_ms: int) -> int | None:
    ephem = load_ephem()
    horizon, method, use_center = SOLAR_EVENTS[schedule.event]
    observer = ephem.Observer()
    observer.lat = str(schedule.lat)
    observer.lon = str(schedule.lon)
    observer.elev = 0
    observer.horizon = horizon
    observer.pressure = 0
    sun = ephem.Sun()
    kwargs = {"use_center": True} if use_center else {}
    start = ephem.Date(_naive_utc(after_ms + _SOLAR_GUARD_MS))
    for _ in range(_SOLAR_SEARCH_DAYS):
        try:
            event = getattr(observer, method)(sun, start=start, **kwargs)
        except ephem.CircumpolarError:  # not today (polar day or night): try tomorrow
            start = observer.next_antitransit(sun, start=start)
            continue
        when = event.datetime().replace(tzinfo=timezone.utc)
        return (datetime_to_ms(when) + 500) // 1000 * 1000
    return None


def _naive_utc(ms: int) -> datetime:
    return ms_to_datetime(ms).replace(tzinfo=None)


def task_id(namespace: str, name: str, tick_ms: int) -> str:
    """The Celery task id of a tick: the same on every instance, forever."""
    return str(uuid.uuid5(DCRON_UUID_NAMESPACE, f"{namespace}\x1f{name}\x1f{tick_ms}"))


def interval_phase_ms(namespace: str, name: str, every_ms: int) -> int:
    """The phase of an interval entry: its ticks ``T`` satisfy ``T % every_ms == phase``.

    Derived from the namespace and the entry name only (blake2b, 64 bits), so every
    instance computes the same one. Never change it: anchors set with it would no
    longer match new ones (existing anchors themselves never move).
    """
    if every_ms <= 0:
        raise ValueError(f"every_ms must be positive, got {every_ms}")
    digest = hashlib.blake2b(f"{namespace}\x1f{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % every_ms


def phased_anchor(now_ms: int, every_ms: int, phase_ms: int) -> int:
    """The latest instant ``<= now_ms`` on the grid ``phase_ms + k * every_ms``.

    The first tick after this anchor, ``anchor + every_ms``, is in ``(now_ms, now_ms +
    every_ms]``: nothing is due at registration. The registry's scripts compute the same
    value with Redis server time (``now - (now - phase) % every``).
    """
    return now_ms - (now_ms - phase_ms) % every_ms


def run_now_task_id(namespace: str, name: str, request_ms: int) -> str:
    """The task id of a run-now request: deterministic, never equal to a tick's id."""
    return str(
        uuid.uuid5(DCRON_UUID_NAMESPACE, f"{namespace}\x1f{name}\x1frun_now\x1f{request_ms}")
    )


def tick_iso(tick_ms: int) -> str:
    """``2026-03-29T01:00:00.000+00:00``: ISO 8601 UTC with milliseconds."""
    return ms_to_datetime(tick_ms).isoformat(timespec="milliseconds")
