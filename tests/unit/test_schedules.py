"""Schedules: validation, JSON forms, conversion from Celery, the ``cron`` class."""

from __future__ import annotations

import pickle
import sys
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule, solar
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from celery_dcron.celery_schedules import cron, from_celery
from celery_dcron.exceptions import InvalidEntryError, InvalidScheduleError
from celery_dcron.schedules import (
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    SolarSchedule,
    datetime_to_ms,
    ms_to_datetime,
    schedule_from_json,
    schedule_to_json,
)
from celery_dcron.ticks import next_tick

pytestmark = pytest.mark.unit

UTC = timezone.utc


def ms(*args: int, tz: str = "UTC") -> int:
    return datetime_to_ms(datetime(*args, tzinfo=ZoneInfo(tz)))  # type: ignore[arg-type,misc]


@pytest.fixture
def app() -> Celery:
    return Celery("test_schedules", set_as_current=False, timezone="Europe/Paris")


# -- value objects and validation -------------------------------------------------------


def test_schedule_alias_is_usable_at_runtime() -> None:
    assert isinstance(IntervalSchedule(every_ms=1), Schedule)
    assert isinstance(AtSchedule(at_ms=0), Schedule)
    assert not isinstance("* * * * *", Schedule)


def test_schedules_are_frozen_and_hashable() -> None:
    a = CronSchedule(expr="0 * * * *", tz="Europe/Paris")
    assert a == CronSchedule(expr="0 * * * *", tz="Europe/Paris")
    assert len({a, CronSchedule(expr="0 * * * *", tz="Europe/Paris")}) == 1
    with pytest.raises(AttributeError):
        a.expr = "1 * * * *"  # type: ignore[misc]


@pytest.mark.parametrize("every_ms", [0, -1, 1.5, True, "5000", None])
def test_interval_must_be_positive_int(every_ms: Any) -> None:
    with pytest.raises(InvalidScheduleError, match=r"every_ms.*positive whole number"):
        IntervalSchedule(every_ms=every_ms)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "minute '61' is invalid; minute must be 0-59"),
        ("* 24 * * *", "hour '24' is invalid; hour must be 0-23"),
        ("* * 32 * *", "day of month '32' is invalid; day of month must be 1-31"),
        ("* * 0 * *", "day of month '0' is invalid"),
        ("* * * 13 *", "month '13' is invalid; month must be 1-12"),
        ("* * * foo *", "month 'foo' is invalid"),
        ("* * * * 8", "day of week '8' is invalid; day of week must be 0-6"),
        ("60 * * * * *", "second '60' is invalid; second must be 0-59"),
        ("0 61 * * * *", "minute '61' is invalid.*seconds come first"),
        ("*/0 * * * *", "minute '\\*/0' is invalid"),
        ("* * *", "expected 5 fields.*got 3"),
        ("", "expected 5 fields.*got 0"),
        ("0 0 1 1 * 2030 1", "expected 5 fields.*got 7"),
        ("@reboot", "expected 5 fields"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("R * * * *", "minute 'R': random \\(R\\) and hashed \\(H\\)"),
        ("0 H * * *", "hour 'H': random"),
        ("0 0 * * 1,H(0-3)", "day of week '1,H\\(0-3\\)': random"),
    ],
)
def test_bad_cron_names_the_field(expr: str, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message) as info:
        CronSchedule(expr=expr)
    assert str(info.value).startswith(f"cron {expr!r}: ")
    assert isinstance(info.value, InvalidEntryError)  # and so a ValueError


@pytest.mark.parametrize(
    "expr",
    [
        "*/5 * * * *",
        "*/5 * * * * *",
        "0 9 * * mon-fri",
        "0 0 1 jan *",
        "0 0 L * *",
        "0 0 29 2 *",
        "0 0 * * 1#2",
        "0 0 * * 7",
        "@daily",
        "@HOURLY",
        "0 0 * * THU",  # contains an "h" but is not a hashed value
    ],
)
def test_good_cron(expr: str) -> None:
    assert CronSchedule(expr=expr).expr == expr


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "../etc/passwd", 5, None])
def test_bad_timezone(tz: Any) -> None:
    with pytest.raises(InvalidScheduleError, match=r"tz|timezone"):
        CronSchedule(expr="* * * * *", tz=tz)


def test_unknown_timezone_message_names_the_fix() -> None:
    with pytest.raises(InvalidScheduleError, match=r"unknown timezone 'Mars/Olympus'.*IANA"):
        CronSchedule(expr="* * * * *", tz="Mars/Olympus")


def test_cron_types() -> None:
    with pytest.raises(InvalidScheduleError, match="must be a string"):
        CronSchedule(expr=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError, match="day_or must be true or false"):
        CronSchedule(expr="* * * * *", day_or="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event": "moonrise", "lat": 0, "lon": 0}, "solar event 'moonrise' is unknown.*sunrise"),
        ({"event": "sunset", "lat": 91, "lon": 0}, "lat 91 must be between -90 and 90"),
        ({"event": "sunset", "lat": 0, "lon": -181}, "lon -181 must be between -180 and 180"),
        ({"event": "sunset", "lat": True, "lon": 0}, "lat True"),
        ({"event": "sunset", "lat": float("nan"), "lon": 0}, "lat nan"),
    ],
)
def test_bad_solar(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        SolarSchedule(**kwargs)


def test_solar_without_ephem_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ephem", None)  # makes `import ephem` fail
    with pytest.raises(InvalidScheduleError, match=r"pip install celery-dcron\[solar\]"):
        SolarSchedule(event="sunrise", lat=48.85, lon=2.35)


@pytest.mark.parametrize("at_ms", [1.0, "0", None, False])
def test_at_must_be_int(at_ms: Any) -> None:
    with pytest.raises(InvalidScheduleError, match="at_ms"):
        AtSchedule(at_ms=at_ms)


def test_ms_datetime_conversions_are_exact() -> None:
    assert datetime_to_ms(datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)) % 1000 == 999
    assert ms_to_datetime(1_767_225_600_123) == datetime(2026, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)
    assert datetime_to_ms(ms_to_datetime(-1)) == -1
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ms(datetime(2026, 1, 1))


# -- JSON -------------------------------------------------------------------------------

CRON_EXPRS = ["*/5 * * * *", "*/5 * * * * *", "0 9 * * mon-fri", "0 0 L * *", "@daily"]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]

schedules = st.one_of(
    st.builds(IntervalSchedule, every_ms=st.integers(1, 10**12)),
    st.builds(AtSchedule, at_ms=st.integers(-(10**13), 10**13)),
    st.builds(
        CronSchedule,
        expr=st.sampled_from(CRON_EXPRS),
        tz=st.sampled_from(ZONES),
        day_or=st.booleans(),
    ),
    st.builds(
        SolarSchedule,
        event=st.sampled_from(["sunrise", "sunset", "solar_noon", "dusk_civil"]),
        lat=st.floats(-90, 90),
        lon=st.floats(-180, 180),
    ),
)


@settings(deadline=None)
@given(schedules)
def test_json_round_trip(s: Schedule) -> None:
    data = schedule_to_json(s)
    assert schedule_from_json(data, entry="e") == s
    assert schedule_from_json(dict(data), entry="e") == s


def test_json_forms() -> None:
    assert schedule_to_json(IntervalSchedule(every_ms=5000)) == {
        "kind": "interval",
        "every_ms": 5000,
    }
    assert schedule_to_json(CronSchedule(expr="0 * * * *", tz="Europe/Paris")) == {
        "kind": "cron",
        "expr": "0 * * * *",
        "tz": "Europe/Paris",
        "day_or": True,
    }
    assert schedule_to_json(SolarSchedule(event="sunset", lat=1.5, lon=-2.0)) == {
        "kind": "solar",
        "event": "sunset",
        "lat": 1.5,
        "lon": -2.0,
    }
    assert schedule_to_json(AtSchedule(at_ms=7)) == {"kind": "at", "at_ms": 7}


def test_json_defaults_and_extra_keys() -> None:
    got = schedule_from_json({"kind": "cron", "expr": "0 * * * *", "future": 1}, entry="e")
    assert got == CronSchedule(expr="0 * * * *", tz="UTC", day_or=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object, got list"),
        ("interval", "must be a JSON object, got str"),
        ({}, "unknown kind None"),
        ({"kind": "weekly"}, "unknown kind 'weekly'"),
        ({"kind": "interval"}, "missing 'every_ms'"),
        ({"kind": "interval", "every_ms": "5"}, "every_ms '5' must be an integer"),
        ({"kind": "interval", "every_ms": 0}, "positive whole number"),
        ({"kind": "cron", "expr": "61 * * * *"}, "minute must be 0-59"),
        ({"kind": "cron", "expr": None}, "expr None must be a string"),
        ({"kind": "cron", "expr": "* * * * *", "tz": "Nowhere"}, "unknown timezone"),
        ({"kind": "cron", "expr": "* * * * *", "day_or": "no"}, "day_or"),
        ({"kind": "solar", "event": "sunrise", "lat": "1", "lon": 0}, "lat '1' must be a number"),
        ({"kind": "solar", "event": "x", "lat": 1, "lon": 0}, "solar event 'x' is unknown"),
        ({"kind": "at", "at_ms": 1.5}, "at_ms 1.5 must be an integer"),
        ({"kind": "at"}, "missing 'at_ms'"),
    ],
)
def test_bad_json_names_the_entry(data: Any, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message) as info:
        schedule_from_json(data, entry="report")
    assert str(info.value).startswith("entry 'report': ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"kind": st.sampled_from(["interval", "cron", "solar", "at", "x"])},
            optional={
                k: json_values
                for k in ("every_ms", "expr", "tz", "day_or", "event", "lat", "lon", "at_ms")
            },
        ),
    )
)
def test_from_json_never_crashes(data: Any) -> None:
    try:
        got = schedule_from_json(data, entry="e")
    except InvalidScheduleError as exc:
        assert str(exc).startswith("entry 'e': ")
    else:
        assert schedule_from_json(schedule_to_json(got), entry="e") == got


# -- from_celery --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (5, IntervalSchedule(every_ms=5000)),
        (0.25, IntervalSchedule(every_ms=250)),
        (timedelta(minutes=2), IntervalSchedule(every_ms=120_000)),
        (timedelta(microseconds=1500), IntervalSchedule(every_ms=2)),
        (schedule(timedelta(seconds=30)), IntervalSchedule(every_ms=30_000)),
        (schedule(10.5), IntervalSchedule(every_ms=10_500)),
        (datetime(2026, 5, 1, 12, tzinfo=UTC), AtSchedule(at_ms=ms(2026, 5, 1, 12))),
        # naive datetimes are in the app timezone (Europe/Paris, CEST in May)
        (datetime(2026, 5, 1, 12), AtSchedule(at_ms=ms(2026, 5, 1, 10))),
        (IntervalSchedule(every_ms=7), IntervalSchedule(every_ms=7)),
        (AtSchedule(at_ms=7), AtSchedule(at_ms=7)),
        (cron("*/5 * * * * *"), CronSchedule(expr="*/5 * * * * *", tz="Europe/Paris")),
        (cron("0 9 * * *", tz="Asia/Tokyo"), CronSchedule(expr="0 9 * * *", tz="Asia/Tokyo")),
        (
            cron("0 9 1 * 1", day_or=False),
            CronSchedule(expr="0 9 1 * 1", tz="Europe/Paris", day_or=False),
        ),
    ],
)
def test_from_celery(obj: object, expected: Schedule) -> None:
    assert from_celery(obj, entry="e", app_tz="Europe/Paris") == expected


@pytest.mark.parametrize(
    ("tab", "expr"),
    [
        (crontab(), "* * * * *"),
        (crontab(minute=0, hour=9), "0 9 * * *"),
        (
            crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"),
            "0,15,30,45 9,10,11,12,13,14,15,16,17 * * 1,2,3,4,5",
        ),
        (crontab(minute=0, hour=0, day_of_month="1,15"), "0 0 1,15 * *"),
        (crontab(minute=0, hour=0, day_of_month=13, day_of_week=5), "0 0 13 * 5"),
        (crontab(minute=30, hour=2, month_of_year="*/3"), "30 2 * 1,4,7,10 *"),
    ],
)
def test_from_celery_crontab(tab: crontab, expr: str) -> None:
    got = from_celery(tab, entry="e", app_tz="Europe/Paris")
    # Celery ANDs day_of_month and day_of_week (see crontab._delta_to_next): day_or=False.
    assert got == CronSchedule(expr=expr, tz="Europe/Paris", day_or=False)


def test_from_celery_solar() -> None:
    got = from_celery(solar("sunset", 48.85, 2.35), entry="e", app_tz="UTC")
    assert got == SolarSchedule(event="sunset", lat=48.85, lon=2.35)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            "*/5 * * * *",
            "schedule '\\*/5 \\* \\* \\* \\*' \\(str\\) is not supported; use a number",
        ),
        (None, "\\(NoneType\\) is not supported.*crontab.*celery_dcron.cron"),
        (True, "\\(bool\\) is not supported"),
        (0, "positive whole number"),
        (-5, "positive whole number"),
        (0.0001, "positive whole number"),
        (float("inf"), "finite number of seconds"),
        (float("nan"), "finite number of seconds"),
        (timedelta(0), "positive whole number"),
    ],
)
def test_from_celery_rejects(obj: object, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message) as info:
        from_celery(obj, entry="report", app_tz="UTC")
    assert str(info.value).startswith("entry 'report': ")


def test_from_celery_bad_app_tz_for_naive_datetime() -> None:
    with pytest.raises(InvalidScheduleError, match="entry 'e': app timezone: unknown timezone"):
        from_celery(datetime(2026, 1, 1), entry="e", app_tz="Nowhere/Land")


CRONTABS = [
    crontab(),
    crontab(minute=0),
    crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"),
    crontab(minute=5, hour=3, day_of_month="1,15"),
    crontab(minute=0, hour=0, day_of_month=13, day_of_week=5),
    crontab(minute=30, hour=2, day_of_month=31),
    crontab(minute=0, hour=12, day_of_month="29", month_of_year="2"),
    crontab(minute="10,40", hour="*/6", month_of_year="1,7"),  # names: Celery 5.5+
    crontab(minute=0, hour=0, day_of_week="sun"),
]


def _near_dst_change(tick: int, tz: str) -> bool:
    zone = ZoneInfo(tz)
    day = timedelta(days=1)
    at = ms_to_datetime(tick)
    return (at - day).astimezone(zone).utcoffset() != (at + day).astimezone(zone).utcoffset()


@settings(deadline=None)
@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "Europe/Paris"])
@pytest.mark.parametrize("index", range(len(CRONTABS)))
@given(last=st.integers(ms(2024, 1, 1), ms(2030, 1, 1)))
def test_crontab_ticks_match_celery(tz: str, index: int, last: int) -> None:
    """Our tick after ``last`` is Celery's own ``crontab.remaining_delta`` answer.

    Except on DST change days, where Celery's wall-clock arithmetic differs from
    croniter (we follow croniter, see test_ticks.py): in a spring-forward gap Celery
    fires ``30 2 * * *`` at 02:30 with the old offset (03:30 CEST), croniter at 03:00;
    in a fall-back overlap Celery fires a wall time once (the first occurrence) and an
    hourly crontab skips the repeated hour, croniter fires each occurrence.
    """
    app = Celery("cmp", set_as_current=False, timezone=tz)
    base = CRONTABS[index]
    last_dt = ms_to_datetime(last).astimezone(ZoneInfo(tz))
    # Celery before 5.7 answers only for a last run on the day of "now": make now = last.
    tab = crontab(*base.__reduce__()[1], app=app, nowfun=lambda: last_dt)
    run_at, delta, _ = tab.remaining_delta(last_dt)
    celery_next = datetime_to_ms(run_at + delta)
    ours = next_tick(from_celery(tab, entry="e", app_tz=tz), last)
    assert ours is not None
    assume(not _near_dst_change(celery_next, tz) and not _near_dst_change(ours, tz))
    assert ours == celery_next, ms_to_datetime(last)


# -- the cron class ---------------------------------------------------------------------


def test_an_invalid_cron_is_reported_where_it_is_used_naming_the_entry() -> None:
    """Built in a celeryconfig while Celery imports it, a cron(...) must not raise: the
    beat (and the API) report it with the entry's name (tests/e2e/test_beat_errors.py)."""
    bad_minute, bad_zone = cron("61 * * * *"), cron("* * * * *", tz="Nowhere")
    assert isinstance(bad_minute.error, InvalidScheduleError)
    assert cron("*/5 * * * *").error is None
    with pytest.raises(InvalidScheduleError, match="minute must be 0-59"):
        bad_minute.to_schedule()
    with pytest.raises(InvalidScheduleError, match="unknown timezone"):
        bad_zone.is_due(datetime.now(timezone.utc))
    with pytest.raises(
        InvalidScheduleError, match=r"^entry 'report': cron '61 \* \* \* \*': minute"
    ):
        from_celery(bad_minute, entry="report", app_tz="UTC")


def test_cron_repr_eq_hash_pickle() -> None:
    a = cron("*/5 * * * * *", tz="Europe/Paris")
    assert repr(a) == "<cron: '*/5 * * * * *', tz='Europe/Paris'>"
    assert repr(cron("0 * * * *", day_or=False)) == "<cron: '0 * * * *', day_or=False>"
    assert a == cron("*/5 * * * * *", tz="Europe/Paris")
    assert a != cron("*/5 * * * * *", tz="UTC")
    assert a != cron("*/6 * * * * *", tz="Europe/Paris")
    assert a != crontab()
    assert hash(a) == hash(cron("*/5 * * * * *", tz="Europe/Paris"))
    b = pickle.loads(pickle.dumps(a))
    assert b == a
    assert b.to_schedule() == CronSchedule(expr="*/5 * * * * *", tz="Europe/Paris")


def test_cron_tz_none_is_the_app_timezone(app: Celery) -> None:
    c = cron("0 9 * * *", app=app)
    assert c.to_schedule() == CronSchedule(expr="0 9 * * *", tz="Europe/Paris")
    assert c.to_schedule(app_tz="Asia/Tokyo").tz == "Asia/Tokyo"
    assert cron("0 9 * * *", tz="UTC", app=app).to_schedule(app_tz="Asia/Tokyo").tz == "UTC"


def _at(app: Celery, now: datetime, expr: str = "*/5 * * * * *") -> cron:
    return cron(expr, tz="UTC", nowfun=lambda: now, app=app)


def test_cron_is_due_contract(app: Celery) -> None:
    now = datetime(2026, 5, 1, 12, 0, 7, 500_000, tzinfo=UTC)
    c = _at(app, now)
    # last run at :05, the :10 tick is not reached yet: check again in 2.5 s
    state = c.is_due(datetime(2026, 5, 1, 12, 0, 5, tzinfo=UTC))
    assert (state.is_due, state.next) == (False, 2.5)
    assert c.remaining_estimate(datetime(2026, 5, 1, 12, 0, 5, tzinfo=UTC)) == timedelta(
        seconds=2.5
    )
    # last run at :00, the :05 tick has passed: due now, next check at :10
    state = c.is_due(datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC))
    assert (state.is_due, state.next) == (True, 2.5)
    # a long time ago: due once, next check at the next tick after now
    assert tuple(c.is_due(datetime(2020, 1, 1, tzinfo=UTC))) == (True, 2.5)
    # naive last_run_at is UTC (Celery's maybe_make_aware)
    assert tuple(c.is_due(datetime(2026, 5, 1, 12, 0, 5))) == (False, 2.5)


def test_cron_in_celery_beat_entry(app: Celery) -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    c = _at(app, now, "0 * * * *")
    entry = ScheduleEntry(
        name="hourly",
        task="t",
        schedule=c,
        last_run_at=datetime(2026, 5, 1, 11, 30, tzinfo=UTC),
        app=app,
    )
    assert tuple(entry.is_due()) == (True, 3600.0)
    entry.last_run_at = now
    assert tuple(entry.is_due()) == (False, 3600.0)


def test_equal_schedules_are_one_object_from_a_beat_schedule_or_read_back() -> None:
    """100,000 entries of one crontab hold one schedule, not 100,000 equal ones: the
    conversion of a beat_schedule shares them by value, as reading back does."""
    a = from_celery(crontab(minute=0, hour=4), entry="a", app_tz="UTC")
    b = from_celery(crontab(minute="0", hour="4"), entry="b", app_tz="UTC")
    assert a is b
    assert schedule_from_json(schedule_to_json(a), entry="c") is a
    every = from_celery(30, entry="d", app_tz="UTC")
    assert every is from_celery(timedelta(seconds=30), entry="e", app_tz="UTC")
    assert every is schedule_from_json({"kind": "interval", "every_ms": 30_000}, entry="f")
    assert cron("0 4 * * *").to_schedule(app_tz="UTC") is cron("0 4 * * *").to_schedule(
        app_tz="UTC"
    )
    # a shared schedule is found by value and type: day_or 0 is still refused
    with pytest.raises(InvalidScheduleError, match="day_or"):
        schedule_from_json({"kind": "cron", "expr": a.expr, "tz": "UTC", "day_or": 0}, entry="h")  # type: ignore[attr-defined]
    other = from_celery(crontab(minute=0, hour=4), entry="g", app_tz="Europe/Paris")
    assert other == CronSchedule(expr=a.expr, tz="Europe/Paris", day_or=False) and other is not a  # type: ignore[attr-defined]
