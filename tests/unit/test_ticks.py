"""Tick math: next/latest ticks, DST, misfire plans, task ids. Time is a parameter."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import solar
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_dcron import ticks as tickmath
from celery_dcron.engine import timeline
from celery_dcron.entries import MisfirePolicy
from celery_dcron.schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    SolarSchedule,
    datetime_to_ms,
    ms_to_datetime,
)
from celery_dcron.ticks import (
    COUNT_CAP,
    DCRON_UUID_NAMESPACE,
    DuePlan,
    first_tick_bound,
    interval_phase_ms,
    latest_tick,
    next_tick,
    phased_anchor,
    plan_due,
    task_id,
    tick_iso,
)

pytestmark = pytest.mark.unit

S = 1000
M = 60 * S
H = 60 * M
D = 24 * H


def ms(*args: int, tz: str = "UTC") -> int:
    return datetime_to_ms(datetime(*args, tzinfo=ZoneInfo(tz)))  # type: ignore[arg-type,misc]


def iso(tick: int | None) -> str | None:
    return None if tick is None else tick_iso(tick)


def ticks(s: Schedule, after: int, n: int) -> list[str]:
    out = []
    for _ in range(n):
        nxt = next_tick(s, after)
        assert nxt is not None
        out.append(tick_iso(nxt))
        after = nxt
    return out


def utc(text: str) -> str:
    """'2026-03-29 01:00' -> tick_iso form."""
    return datetime.fromisoformat(text + ":00+00:00").isoformat(timespec="milliseconds")


# -- next_tick / latest_tick --------------------------------------------------------------


def test_interval_ticks() -> None:
    s = IntervalSchedule(every_ms=5 * S)
    assert next_tick(s, 1_000) == 6_000
    assert latest_tick(s, 1_000, 1_000) is None
    assert latest_tick(s, 1_000, 5_999) is None
    assert latest_tick(s, 1_000, 6_000) == 6_000
    assert latest_tick(s, 1_000, 25_999) == 21_000
    assert latest_tick(s, 1_000, 26_000) == 26_000
    assert latest_tick(s, 1_000, 0) is None


def test_at_ticks() -> None:
    s = AtSchedule(at_ms=10_000)
    assert next_tick(s, 9_999) == 10_000
    assert next_tick(s, 10_000) is None
    assert latest_tick(s, 0, 10_000) == 10_000
    assert latest_tick(s, 0, 9_999) is None
    assert latest_tick(s, 10_000, 20_000) is None


def test_cron_basic_and_midnight() -> None:
    s = CronSchedule(expr="0 0 * * *")
    assert ticks(s, ms(2026, 12, 31, 12), 2) == [utc("2027-01-01 00:00"), utc("2027-01-02 00:00")]
    # exactly on a tick: strictly after
    assert iso(next_tick(s, ms(2027, 1, 1))) == utc("2027-01-02 00:00")
    assert iso(next_tick(s, ms(2027, 1, 1) - 1)) == utc("2027-01-01 00:00")


def test_cron_with_seconds_first() -> None:
    s = CronSchedule(expr="*/5 * * * * *")
    base = ms(2026, 5, 1, 12)
    got = [next_tick(s, base + d) for d in (0, 1, 4_999, 5_000)]
    assert got == [base + 5_000, base + 5_000, base + 5_000, base + 10_000]
    assert CronSchedule(expr="30 0 * * * *") != CronSchedule(expr="0 30 * * * *")
    assert (
        iso(next_tick(CronSchedule(expr="30 0 * * * *"), base)) == "2026-05-01T12:00:30.000+00:00"
    )


@pytest.mark.parametrize("offset", [1, 250, 999, 1_001, 59_999])
def test_cron_after_ms_off_the_second(offset: int) -> None:
    every_second = CronSchedule(expr="* * * * * *")
    base = ms(2026, 5, 1, 12)
    after = base + offset
    assert next_tick(every_second, after) == (after // S + 1) * S
    assert latest_tick(every_second, base - 1, after) == after // S * S
    assert latest_tick(every_second, after // S * S, after) is None
    assert next_tick(CronSchedule(expr="* * * * *"), after) == base + M * (1 + offset // M)


def test_cron_timezone() -> None:
    s = CronSchedule(expr="0 9 * * *", tz="Asia/Tokyo")
    assert iso(next_tick(s, ms(2026, 4, 30, 12))) == utc("2026-05-01 00:00")  # 09:00 JST
    s = CronSchedule(expr="0 9 * * *", tz="America/New_York")
    assert iso(next_tick(s, ms(2026, 1, 5))) == utc("2026-01-05 14:00")  # EST
    assert iso(next_tick(s, ms(2026, 7, 5))) == utc("2026-07-05 13:00")  # EDT


def test_cron_out_of_range_has_no_tick() -> None:
    s = CronSchedule(expr="0 0 * * *")
    assert next_tick(s, ms(2099, 12, 31, 12)) == ms(2100, 1, 1)
    assert next_tick(s, 10**17) is None  # beyond datetime's range
    assert latest_tick(s, 0, 10**17) is None
    assert plan(s, last=10**17 - 1, now=10**17) == DuePlan(
        fire=(), skip_to=None, missed=0, next_ms=None
    )


def test_month_ends_and_leap_day() -> None:
    day31 = CronSchedule(expr="0 0 31 * *")
    assert [t[:10] for t in ticks(day31, ms(2026, 1, 31), 4)] == [
        "2026-03-31",
        "2026-05-31",
        "2026-07-31",
        "2026-08-31",
    ]
    last = CronSchedule(expr="0 0 L * *")
    assert [t[:10] for t in ticks(last, ms(2027, 12, 31), 3)] == [
        "2028-01-31",
        "2028-02-29",
        "2028-03-31",
    ]
    assert [t[:10] for t in ticks(last, ms(2026, 1, 31), 1)] == ["2026-02-28"]
    leap = CronSchedule(expr="0 12 29 2 *")
    assert ticks(leap, ms(2024, 3, 1), 2) == [utc("2028-02-29 12:00"), utc("2032-02-29 12:00")]
    assert latest_tick(leap, ms(2024, 3, 1), ms(2028, 2, 29, 11)) is None


def test_cron_day_or() -> None:
    # classic cron ORs a restricted day of month and day of week; Celery ANDs them
    either = CronSchedule(expr="0 0 13 * 5", day_or=True)
    both = CronSchedule(expr="0 0 13 * 5", day_or=False)
    assert [t[:10] for t in ticks(either, ms(2026, 2, 1), 3)] == [
        "2026-02-06",
        "2026-02-13",
        "2026-02-20",
    ]
    assert [t[:10] for t in ticks(both, ms(2026, 2, 1), 3)] == [
        "2026-02-13",
        "2026-03-13",
        "2026-11-13",
    ]


# DST in Europe/Paris, pinned from croniter 7.
# Spring forward, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC). A wall time in
# the gap fires once, at the first instant after it (03:00 CEST): "30 2 * * *" fires at
# 03:00 that day, "15,45 2 * * *" fires once (not twice) at 03:00, and an hourly cron
# has no 02:00 tick (the day has 23 hourly ticks).
# Fall back, 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00 UTC). A wall time in
# the repeated hour fires twice, once per occurrence: "30 2 * * *" fires at 02:30 CEST
# and 02:30 CET; an hourly cron fires every real hour (25 ticks that day).
PARIS = "Europe/Paris"


def test_dst_spring_forward_gap() -> None:
    s = CronSchedule(expr="30 2 * * *", tz=PARIS)
    assert ticks(s, ms(2026, 3, 27, 12), 3) == [
        utc("2026-03-28 01:30"),  # 02:30 CET
        utc("2026-03-29 01:00"),  # 02:30 does not exist: 03:00 CEST
        utc("2026-03-30 00:30"),  # 02:30 CEST
    ]
    twice = CronSchedule(expr="15,45 2 * * *", tz=PARIS)
    assert ticks(twice, ms(2026, 3, 28, 12), 3) == [
        utc("2026-03-29 01:00"),
        utc("2026-03-30 00:15"),
        utc("2026-03-30 00:45"),
    ]
    hourly = CronSchedule(expr="0 * * * *", tz=PARIS)
    assert ticks(hourly, ms(2026, 3, 28, 23, 30), 3) == [
        utc("2026-03-29 00:00"),  # 01:00 CET
        utc("2026-03-29 01:00"),  # 03:00 CEST (no 02:00)
        utc("2026-03-29 02:00"),  # 04:00 CEST
    ]
    day = (ms(2026, 3, 29, tz=PARIS), ms(2026, 3, 30, tz=PARIS))
    assert _count(hourly, *day) == 23
    # latest_tick (croniter get_prev) agrees with next_tick in the gap
    assert iso(latest_tick(s, ms(2026, 3, 28, 12), ms(2026, 3, 29, 1, 30))) == utc(
        "2026-03-29 01:00"
    )


def test_dst_fall_back_overlap() -> None:
    s = CronSchedule(expr="30 2 * * *", tz=PARIS)
    assert ticks(s, ms(2026, 10, 24, 12), 3) == [
        utc("2026-10-25 00:30"),  # 02:30 CEST
        utc("2026-10-25 01:30"),  # 02:30 CET, the same wall time again
        utc("2026-10-26 01:30"),
    ]
    hourly = CronSchedule(expr="0 * * * *", tz=PARIS)
    assert ticks(hourly, ms(2026, 10, 24, 22, 30), 4) == [
        utc("2026-10-24 23:00"),  # 01:00 CEST
        utc("2026-10-25 00:00"),  # 02:00 CEST
        utc("2026-10-25 01:00"),  # 02:00 CET
        utc("2026-10-25 02:00"),  # 03:00 CET
    ]
    day = (ms(2026, 10, 25, tz=PARIS), ms(2026, 10, 26, tz=PARIS))
    assert _count(hourly, *day) == 25
    assert iso(latest_tick(s, ms(2026, 10, 24), ms(2026, 10, 25, 1, 59))) == utc("2026-10-25 01:30")
    assert iso(latest_tick(s, ms(2026, 10, 24), ms(2026, 10, 25, 1, 29))) == utc("2026-10-25 00:30")


def _count(s: Schedule, start: int, end: int) -> int:
    """Ticks in [start, end)."""
    n, t = 0, next_tick(s, start - 1)
    while t is not None and t < end:
        n, t = n + 1, next_tick(s, t)
    return n


LATEST_CRONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "15,45 2 * * *",
    "0,30 1-3 * * *",
    "*/20 * * * * *",
    "0 0 L * *",
]
DST_DAYS = [ms(2026, 3, 29), ms(2026, 10, 25), ms(2026, 3, 8), ms(2026, 11, 1), ms(2026, 6, 1)]


@settings(max_examples=300, deadline=None)
@given(
    expr=st.sampled_from(LATEST_CRONS),
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
    day=st.sampled_from(DST_DAYS),
    after_offset=st.integers(-D, D),
    span=st.integers(0, 6 * H),
)
def test_latest_tick_agrees_with_next_tick_cron(
    expr: str, tz: str, day: int, after_offset: int, span: int
) -> None:
    s = CronSchedule(expr=expr, tz=tz)
    after = day + after_offset
    _check_latest(s, after, after + span)


@settings(deadline=None)
@given(
    every=st.integers(1, 10 * M),
    after=st.integers(-(10**12), 10**13),
    steps=st.integers(-3, 40),
    extra=st.integers(0, 10 * M),
)
def test_latest_tick_agrees_with_next_tick_interval(
    every: int, after: int, steps: int, extra: int
) -> None:
    s = IntervalSchedule(every_ms=every)
    _check_latest(s, after, after + steps * every + extra % every)


def _check_latest(s: Schedule, after: int, until: int) -> None:
    expected = None
    t = next_tick(s, after)
    while t is not None and t <= until:
        expected = t
        t = next_tick(s, t)
    assert latest_tick(s, after, until) == expected, (iso(after), iso(until))


def test_solar_ticks_match_celery() -> None:
    s = SolarSchedule(event="sunrise", lat=48.85, lon=2.35)
    after = ms(2026, 3, 20, 12)
    first = next_tick(s, after)
    assert first is not None
    assert first % S == 0  # rounded to whole seconds
    app = Celery("solar", set_as_current=False)
    now = ms_to_datetime(after)
    celery_sunrise = now + solar(
        "sunrise", 48.85, 2.35, nowfun=lambda: now, app=app
    ).remaining_estimate(now)
    assert abs(first - datetime_to_ms(celery_sunrise)) <= S
    assert tick_iso(first)[:16] == "2026-03-21T05:51"  # 06:51 CET
    chain = [first]
    for _ in range(3):
        nxt = next_tick(s, chain[-1])
        assert nxt is not None
        chain.append(nxt)
    # one sunrise a day, never the same one twice
    assert all(22 * H < b - a < 26 * H for a, b in itertools.pairwise(chain))
    _check_latest(s, after, chain[-1])
    _check_latest(s, after, chain[-1] - 1)


def test_solar_polar_day_skips_to_next_sunrise() -> None:
    # Near the North Pole the sun rises around the March equinox and then does not set
    # (nor rise again) until September: the next sunrise is months away, not None.
    s = SolarSchedule(event="sunrise", lat=89.0, lon=0.0)
    assert iso(next_tick(s, ms(2026, 4, 1)))[:10] == "2026-09-23"  # type: ignore[index]
    # sunset during the polar night of the South Pole region: found after the night
    south = SolarSchedule(event="sunset", lat=-89.0, lon=0.0)
    assert iso(next_tick(south, ms(2026, 4, 1)))[:7] == "2026-09"  # type: ignore[index]


# -- plan_due -----------------------------------------------------------------------------


def plan(
    s: Schedule,
    *,
    last: int,
    now: int,
    policy: MisfirePolicy = MisfirePolicy.ONCE,
    grace: int | None = None,
    max_catchup: int = 10,
    on_time: int = 1 * S,
) -> DuePlan:
    return plan_due(
        s,
        last_ms=last,
        now_ms=now,
        policy=policy,
        grace_ms=grace,
        max_catchup=max_catchup,
        on_time_ms=on_time,
    )


EVERY_10S = IntervalSchedule(every_ms=10 * S)


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_nothing_due(policy: MisfirePolicy) -> None:
    assert plan(EVERY_10S, last=0, now=9_999, policy=policy) == DuePlan(
        fire=(), skip_to=None, missed=0, next_ms=10_000
    )
    assert plan(EVERY_10S, last=50_000, now=0, policy=policy).fire == ()  # now behind last
    cron = CronSchedule(expr="0 * * * *")
    assert plan(cron, last=ms(2026, 1, 1), now=ms(2026, 1, 1, 0, 59), policy=policy) == DuePlan(
        fire=(), skip_to=None, missed=0, next_ms=ms(2026, 1, 1, 1)
    )


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_on_time_tick_fires_under_every_policy(policy: MisfirePolicy) -> None:
    assert plan(EVERY_10S, last=0, now=10_200, policy=policy) == DuePlan(
        fire=(10_000,), skip_to=None, missed=0, next_ms=20_000
    )


def test_once_coalesces_into_latest() -> None:
    assert plan(EVERY_10S, last=0, now=95_000) == DuePlan(
        fire=(90_000,), skip_to=None, missed=8, next_ms=100_000
    )


def test_once_latest_expired_is_skipped() -> None:
    assert plan(EVERY_10S, last=0, now=95_000, grace=4_000) == DuePlan(
        fire=(), skip_to=90_000, missed=9, next_ms=100_000
    )
    assert plan(EVERY_10S, last=0, now=95_000, grace=5_000).fire == (90_000,)  # boundary


def test_all_fires_each_oldest_first() -> None:
    assert plan(EVERY_10S, last=0, now=35_000, policy=MisfirePolicy.ALL) == DuePlan(
        fire=(10_000, 20_000, 30_000), skip_to=None, missed=0, next_ms=40_000
    )


def test_all_is_bounded_by_max_catchup_newest_kept() -> None:
    got = plan(EVERY_10S, last=0, now=1_000_000, policy=MisfirePolicy.ALL, max_catchup=3)
    assert got == DuePlan(
        fire=(980_000, 990_000, 1_000_000), skip_to=None, missed=97, next_ms=1_010_000
    )


def test_all_drops_expired_ticks() -> None:
    got = plan(EVERY_10S, last=0, now=95_000, policy=MisfirePolicy.ALL, grace=25_000)
    assert got == DuePlan(fire=(70_000, 80_000, 90_000), skip_to=None, missed=6, next_ms=100_000)
    got = plan(EVERY_10S, last=0, now=95_000, policy=MisfirePolicy.ALL, grace=1_000)
    assert got == DuePlan(fire=(), skip_to=90_000, missed=9, next_ms=100_000)


def test_skip_fires_only_on_time() -> None:
    assert plan(EVERY_10S, last=0, now=10_999, policy=MisfirePolicy.SKIP).fire == (10_000,)
    assert plan(EVERY_10S, last=0, now=11_000, policy=MisfirePolicy.SKIP).fire == (10_000,)
    assert plan(EVERY_10S, last=0, now=11_001, policy=MisfirePolicy.SKIP) == DuePlan(
        fire=(), skip_to=10_000, missed=1, next_ms=20_000
    )
    assert plan(EVERY_10S, last=0, now=40_500, policy=MisfirePolicy.SKIP) == DuePlan(
        fire=(40_000,), skip_to=None, missed=3, next_ms=50_000
    )
    # on time but past the grace window: not fired
    got = plan(EVERY_10S, last=0, now=40_500, policy=MisfirePolicy.SKIP, grace=100)
    assert got == DuePlan(fire=(), skip_to=40_000, missed=4, next_ms=50_000)


def test_policy_may_be_given_as_its_value() -> None:
    got = plan_due(
        EVERY_10S,
        last_ms=0,
        now_ms=35_000,
        policy="all",  # type: ignore[arg-type]
        grace_ms=None,
        max_catchup=10,
        on_time_ms=0,
    )
    assert got.fire == (10_000, 20_000, 30_000)


def test_max_catchup_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_catchup"):
        plan(EVERY_10S, last=0, now=1, max_catchup=0)


def test_interval_after_years_is_arithmetic() -> None:
    every_ms = IntervalSchedule(every_ms=1)
    started = time.perf_counter()
    got = plan(every_ms, last=0, now=10**12, policy=MisfirePolicy.ALL, max_catchup=5)
    assert time.perf_counter() - started < 0.1
    assert got.fire == (10**12 - 4, 10**12 - 3, 10**12 - 2, 10**12 - 1, 10**12)
    assert got.missed == 10**12 - 5


def test_cron_plans() -> None:
    s = CronSchedule(expr="*/15 * * * *")
    last, now = ms(2026, 1, 1), ms(2026, 1, 1, 1, 5)
    assert plan(s, last=last, now=now) == DuePlan(
        fire=(ms(2026, 1, 1, 1),), skip_to=None, missed=3, next_ms=ms(2026, 1, 1, 1, 15)
    )
    assert plan(s, last=last, now=now, policy=MisfirePolicy.ALL, max_catchup=2) == DuePlan(
        fire=(ms(2026, 1, 1, 0, 45), ms(2026, 1, 1, 1)),
        skip_to=None,
        missed=2,
        next_ms=ms(2026, 1, 1, 1, 15),
    )
    assert plan(s, last=last, now=now, policy=MisfirePolicy.ALL, grace=30 * M) == DuePlan(
        fire=(ms(2026, 1, 1, 0, 45), ms(2026, 1, 1, 1)),
        skip_to=None,
        missed=2,
        next_ms=ms(2026, 1, 1, 1, 15),
    )
    assert plan(s, last=last, now=now, policy=MisfirePolicy.SKIP, on_time=10 * S) == DuePlan(
        fire=(), skip_to=ms(2026, 1, 1, 1), missed=4, next_ms=ms(2026, 1, 1, 1, 15)
    )


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_one_second_cron_after_a_day_is_bounded_and_fast(policy: MisfirePolicy) -> None:
    s = CronSchedule(expr="* * * * * *", tz=PARIS)
    last = ms(2026, 5, 1, 12)
    now = last + D + 500
    started = time.perf_counter()
    got = plan(s, last=last, now=now, policy=policy, max_catchup=100, on_time=2 * S)
    assert time.perf_counter() - started < 0.5
    newest = last + D
    if policy is MisfirePolicy.ALL:
        assert got.fire == tuple(range(newest - 99 * S, newest + S, S))
    else:
        assert got.fire == (newest,)
    assert got.skip_to is None
    assert got.next_ms == newest + S
    # 86,400 ticks were due; a cron count stops COUNT_CAP ticks past the ones it may fire
    assert got.missed == COUNT_CAP


def test_cron_missed_is_exact_below_the_cap() -> None:
    s = CronSchedule(expr="* * * * * *")
    got = plan(s, last=0, now=200 * S, policy=MisfirePolicy.ONCE)
    assert (got.fire, got.missed) == ((200 * S,), 199)


def test_at_plans() -> None:
    s = AtSchedule(at_ms=50_000)
    assert plan(s, last=0, now=49_999) == DuePlan(fire=(), skip_to=None, missed=0, next_ms=50_000)
    assert plan(s, last=0, now=50_000) == DuePlan(
        fire=(50_000,), skip_to=None, missed=0, next_ms=None
    )
    assert plan(s, last=0, now=90_000, grace=1_000) == DuePlan(
        fire=(), skip_to=50_000, missed=1, next_ms=None
    )
    assert plan(s, last=50_000, now=90_000) == DuePlan(
        fire=(), skip_to=None, missed=0, next_ms=None
    )


def test_solar_plan_after_three_days() -> None:
    s = SolarSchedule(event="sunset", lat=48.85, lon=2.35)
    last = ms(2026, 6, 1, 12)
    sunsets = [next_tick(s, last)]
    for _ in range(3):
        sunsets.append(next_tick(s, sunsets[-1]))  # type: ignore[arg-type]
    now = sunsets[2] + H  # type: ignore[operator]
    got = plan(s, last=last, now=now, policy=MisfirePolicy.ALL)
    assert got == DuePlan(fire=tuple(sunsets[:3]), skip_to=None, missed=0, next_ms=sunsets[3])  # type: ignore[arg-type]
    assert plan(s, last=last, now=now).fire == (sunsets[2],)


@settings(max_examples=200, deadline=None)
@given(
    every=st.integers(1, 10 * S),
    last=st.integers(0, 10**9),
    gap=st.integers(0, 10**6),
    grace=st.none() | st.integers(0, 10**6),
    max_catchup=st.integers(1, 20),
    policy=st.sampled_from(list(MisfirePolicy)),
)
def test_plan_invariants(
    every: int, last: int, gap: int, grace: int | None, max_catchup: int, policy: MisfirePolicy
) -> None:
    s = IntervalSchedule(every_ms=every)
    now = last + gap
    got = plan(s, last=last, now=now, policy=policy, grace=grace, max_catchup=max_catchup)
    due = gap // every
    latest = latest_tick(s, last, now)
    assert len(got.fire) + got.missed == due
    assert list(got.fire) == sorted(set(got.fire))
    assert all(last < t <= now and (t - last) % every == 0 for t in got.fire)
    assert all(grace is None or now - t <= grace for t in got.fire)
    assert len(got.fire) <= (max_catchup if policy is MisfirePolicy.ALL else 1)
    if due:
        # the entry always moves to the latest due tick, fired or skipped
        assert (got.fire[-1] if got.fire else got.skip_to) == latest
        assert got.skip_to is None or not got.fire
    else:
        assert (got.fire, got.skip_to, got.missed) == ((), None, 0)
    assert got.next_ms == (latest if latest is not None else last) + every


# -- interval phases ----------------------------------------------------------------------


def test_interval_phase_is_a_stable_hash_of_namespace_and_name() -> None:
    assert interval_phase_ms("default", "report", 1000) == interval_phase_ms(
        "default", "report", 1000
    )
    # pinned: changing the hash would move the grid of every entry anchored from now on
    assert interval_phase_ms("ns", "e", 1000) == 983
    assert interval_phase_ms("ns", "e", 60_000) == 38_983
    phases = {interval_phase_ms("default", f"e{i:05d}", 1000) for i in range(1000)}
    assert len(phases) > 550  # 1000 names over 1000 ms: spread, not one instant (~632)
    assert interval_phase_ms("other", "e", 1000) != interval_phase_ms("ns", "e", 1000)
    with pytest.raises(ValueError, match="every_ms"):
        interval_phase_ms("ns", "e", 0)


@given(
    now=st.integers(min_value=0, max_value=4_000_000_000_000),
    every=st.integers(min_value=1, max_value=400 * D),
    phase=st.integers(min_value=0, max_value=400 * D),
)
def test_phased_anchor_is_on_the_grid_and_nothing_is_due(now: int, every: int, phase: int) -> None:
    phase %= every
    anchor = phased_anchor(now, every, phase)
    assert anchor <= now < anchor + every  # the first tick is after now, within one interval
    assert anchor % every == phase % every
    first = next_tick(IntervalSchedule(every_ms=every), anchor)
    assert first is not None and now < first <= now + every


# -- task ids -----------------------------------------------------------------------------


def test_task_id_is_deterministic_and_distinct() -> None:
    a = task_id("prod", "report", 1_700_000_000_000)
    assert a == task_id("prod", "report", 1_700_000_000_000)
    assert uuid.UUID(a).version == 5
    assert a == str(uuid.uuid5(DCRON_UUID_NAMESPACE, "prod\x1freport\x1f1700000000000"))
    others = {
        task_id("prod", "report", 1_700_000_000_001),
        task_id("prod", "report2", 1_700_000_000_000),
        task_id("staging", "report", 1_700_000_000_000),
        task_id("prod", "repor", 1_700_000_000_000),
        task_id("prodr", "eport", 1_700_000_000_000),
    }
    assert a not in others
    assert len(others) == 5


def test_uuid_namespace_never_changes() -> None:
    assert str(DCRON_UUID_NAMESPACE) == "15237f8f-94db-4efc-8626-3d16a23f88f2"
    assert task_id("ns", "e", 0) == "785e981a-1603-52d1-809e-8e0fa900098f"


def test_tick_iso() -> None:
    assert tick_iso(0) == "1970-01-01T00:00:00.000+00:00"
    assert tick_iso(ms(2026, 3, 29, 1) + 7) == "2026-03-29T01:00:00.007+00:00"
    assert datetime.fromisoformat(tick_iso(1_777_777_777_777)) == ms_to_datetime(1_777_777_777_777)
    assert ms_to_datetime(5) - ms_to_datetime(0) == timedelta(milliseconds=5)


@settings(max_examples=200, deadline=None)
@given(
    expr=st.sampled_from(LATEST_CRONS),
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
    day=st.sampled_from(DST_DAYS),
    offsets=st.lists(st.integers(-D, D), min_size=1, max_size=30),
)
def test_the_timelines_remembered_cron_ticks_agree_with_next_tick(
    expr: str, tz: str, day: int, offsets: list[int]
) -> None:
    """The engine remembers, per cron schedule, a span of instants that share their next
    tick (entries anchored at different instants): in any order, across DST changes,
    each answer is next_tick's."""
    s = CronSchedule(expr=expr, tz=tz)
    timeline._cron_spans.clear()
    for offset in offsets:
        after = day + offset
        assert timeline._next_tick(s, after) == next_tick(s, after), iso(after)


def test_cron_entries_anchored_at_different_instants_cost_a_few_croniter_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 entries of one daily cron, anchored over 20 s in random order (a bulk add):
    a few croniter steps in all, not one per entry."""
    steps = 0
    step = tickmath.next_tick

    def counted(schedule: Schedule, after_ms: int) -> int | None:
        nonlocal steps
        steps += 1
        return step(schedule, after_ms)

    monkeypatch.setattr(timeline, "_cached_next_tick", counted)
    timeline._cron_spans.clear()
    s = CronSchedule(expr="30 4 * * *", tz="Europe/Paris")
    start = ms(2026, 3, 20, 12)
    anchors = [start + i * 2 for i in range(10_000)]
    random.Random(7).shuffle(anchors)
    assert {timeline._next_tick(s, a) for a in anchors} == {next_tick(s, start)}
    assert steps < 30


def test_around_lord_howes_fall_back_no_remembered_tick_or_first_tick_bound_is_late() -> None:
    """croniter's next tick after a later instant can be earlier around a half-hour
    fall-back (Australia/Lord_Howe, 2026-04-05 02:00 +11 -> 01:30 +10:30): neither the
    engine's remembered span nor a bulk write's first tick bound may then give the
    later one."""
    s = CronSchedule(expr="*/7 * * * *", tz="Australia/Lord_Howe")
    before = datetime_to_ms(datetime(2026, 4, 5, 1, 57, tzinfo=ZoneInfo("Australia/Lord_Howe")))
    later = before + 60_000
    assert next_tick(s, later) < next_tick(s, before)  # type: ignore[operator]
    timeline._cron_spans.clear()
    assert timeline._next_tick(s, before) == next_tick(s, before)
    assert timeline._next_tick(s, later) == next_tick(s, later)
    assert first_tick_bound(s, before) in (0, next_tick(s, later))
    assert first_tick_bound(s, before - 3 * H) == next_tick(s, before - 3 * H)  # far from it


def test_a_remembered_cron_span_never_starts_in_a_fall_backs_repeated_hour() -> None:
    """Europe/London, 2025-10-26: the wall time 01:30 comes twice (BST, then GMT). For a
    cron of Sundays in October at 01:30, croniter's next tick after the first 01:30 is a
    year later, but after 01:20 GMT it is the second 01:30: a span from the first may
    not answer for 01:20 GMT."""
    s = CronSchedule(expr="30 1 * 10 0", tz="Europe/London")
    first = datetime_to_ms(datetime(2025, 10, 26, 0, 30, tzinfo=ZoneInfo("UTC")))  # 01:30 BST
    between = first + 50 * M  # 01:20 GMT
    assert next_tick(s, between) < next_tick(s, first)  # type: ignore[operator]
    timeline._cron_spans.clear()
    assert timeline._next_tick(s, first) == next_tick(s, first)
    assert timeline._next_tick(s, between) == next_tick(s, between)
