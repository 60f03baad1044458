"""The Celery glue: beat_schedule parsing, lazy construction, the ``-S dcron`` alias."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.beat import Service
from celery.schedules import crontab, schedule

import celery_dcron
from celery_dcron.entries import MisfirePolicy
from celery_dcron.exceptions import InvalidEntryError, InvalidScheduleError
from celery_dcron.scheduler import DistributedScheduler, entry_from_beat
from celery_dcron.schedules import CronSchedule, IntervalSchedule


def make_app(**conf: object) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.update(broker_url="redis://:pw@127.0.0.1:1/0", **conf)
    return app


def test_entry_from_beat_reads_every_celery_schedule_kind() -> None:
    e = entry_from_beat(
        "r",
        {
            "task": "proj.report",
            "schedule": timedelta(seconds=30),
            "args": (1, "x"),
            "kwargs": {"k": 2},
            "options": {"queue": "q", "priority": 5, "headers": {"h": 1}},
            "misfire_policy": "all",
            "misfire_grace": 60,
            "max_runs": 3,
        },
        app_tz="UTC",
    )
    assert e.schedule == IntervalSchedule(every_ms=30_000)
    assert e.args == (1, "x") and e.kwargs == {"k": 2} and e.options["queue"] == "q"
    assert e.misfire_policy is MisfirePolicy.ALL and e.misfire_grace_s == 60.0 and e.max_runs == 3
    assert entry_from_beat(
        "s", {"task": "t", "schedule": 5}, app_tz="UTC"
    ).schedule == IntervalSchedule(every_ms=5000)
    assert entry_from_beat(
        "s", {"task": "t", "schedule": schedule(2.5)}, app_tz="UTC"
    ).schedule == IntervalSchedule(every_ms=2500)
    c = entry_from_beat(
        "c", {"task": "t", "schedule": crontab(minute="*/15")}, app_tz="Europe/Paris"
    )
    assert isinstance(c.schedule, CronSchedule) and c.schedule.tz == "Europe/Paris"
    s = entry_from_beat(
        "x",
        {"task": "t", "schedule": celery_dcron.cron("*/5 * * * * *", tz="Asia/Tokyo")},
        app_tz="UTC",
    )
    assert s.schedule == CronSchedule(expr="*/5 * * * * *", tz="Asia/Tokyo")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schedule": 5}, "'task'"),
        ({"task": "t"}, "'schedule' is missing"),
        ({"task": "t", "schedule": 5, "args": "x"}, "'args'"),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "'kwargs'"),
        ({"task": "t", "schedule": 5, "bogus": 1}, "unknown keys"),
        ({"task": "t", "schedule": 5, "args": [object()]}, "JSON"),
        ({"task": "t", "schedule": 5, "misfire_policy": "often"}, "misfire_policy"),
        ({"task": "t", "schedule": 5, "max_runs": 0}, "max_runs"),
        ({"task": "t", "schedule": 5, "start_at": datetime(2030, 1, 1)}, "timezone-aware"),
    ],
)
def test_bad_static_entries_name_the_entry_and_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEntryError, match=message) as info:
        entry_from_beat("my-entry", data, app_tz="UTC")
    assert "my-entry" in str(info.value)


def test_bad_schedule_is_an_invalid_schedule_error() -> None:
    with pytest.raises(InvalidScheduleError, match="my-entry"):
        entry_from_beat("my-entry", {"task": "t", "schedule": "every day"}, app_tz="UTC")


def test_start_and_end_are_converted_to_utc_ms() -> None:
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    e = entry_from_beat("e", {"task": "t", "schedule": 5, "start_at": start}, app_tz="UTC")
    assert e.start_ms == int(start.timestamp() * 1000)


def test_lazy_construction_touches_nothing() -> None:
    # Redis at port 1 is unreachable: a lazy scheduler must neither connect nor fail.
    app = make_app(dcron_redis_url="redis://127.0.0.1:1/0")
    sched = DistributedScheduler(app, lazy=True, schedule_filename="celerybeat-schedule")
    assert sched._engine is None
    assert "redis://127.0.0.1:1/0" in sched.info


def test_banner_masks_the_password_and_names_the_node() -> None:
    app = make_app()
    info = DistributedScheduler(app, lazy=True).info
    assert "pw" not in info and "***" in info and "dcron node" in info


def test_dcron_alias_selects_the_scheduler() -> None:
    app = make_app()
    service = Service(app, scheduler_cls="dcron")
    assert isinstance(service.get_scheduler(lazy=True), DistributedScheduler)
    service = Service(app, scheduler_cls="celery_dcron.DistributedScheduler")
    assert isinstance(service.get_scheduler(lazy=True), DistributedScheduler)


def test_public_names() -> None:
    assert set(celery_dcron.__all__) == {
        "ConfigurationError", "ConflictError", "DcronError", "DistributedScheduler",
        "DynamicTasks", "EntryNotFoundError",
        "InvalidEntryError", "InvalidScheduleError", "MisfirePolicy", "RegistryUnavailableError",
        "__version__", "cron",
    }  # fmt: skip
    for name in celery_dcron.__all__:
        assert getattr(celery_dcron, name) is not None
