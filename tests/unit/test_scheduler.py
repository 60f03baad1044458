"""The Celery glue: beat_schedule parsing, lazy construction, the ``-S dcron`` alias."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.beat import Service
from celery.schedules import crontab, schedule

import celery_dcron
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec, MisfirePolicy
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
    ("data", "field"),
    [
        ({"schedule": 5}, "task"),
        ({"task": "t"}, "schedule"),
        ({"task": "t", "schedule": 5, "args": "x"}, "args"),
        ({"task": "t", "schedule": 5, "kwargs": [1]}, "kwargs"),
        ({"task": "t", "schedule": 5, "options": [1]}, "options"),
        ({"task": "t", "schedule": 5, "bogus": 1}, "bogus"),
        ({"task": "t", "schedule": 5, "args": [object()]}, "args"),
        ({"task": "t", "schedule": 5, "misfire_policy": "often"}, "misfire_policy"),
        ({"task": "t", "schedule": 5, "misfire_grace": -1}, "misfire_grace"),
        ({"task": "t", "schedule": 5, "max_runs": 0}, "max_runs"),
        ({"task": "t", "schedule": 5, "start_at": datetime(2030, 1, 1)}, "start_at"),
        ({"task": "t", "schedule": 5, "end_at": "soon"}, "end_at"),
        ({"task": "t", "schedule": 5, "description": 3}, "description"),
    ],
)
def test_bad_static_entries_name_the_entry_and_field(data: dict[str, object], field: str) -> None:
    # The API's rules (celery_dcron.validation), so the API's messages: "entry 'x': field: ..."
    with pytest.raises(InvalidEntryError) as info:
        entry_from_beat("my-entry", data, app_tz="UTC")
    assert info.value.field == field
    assert str(info.value).startswith("entry 'my-entry': ")
    assert field in str(info.value)


def test_static_entries_keep_every_apply_async_option() -> None:
    # Unlike a dynamic entry's, a static entry's options are Celery beat's: any key, any value.
    options = {"countdown": 3, "expires": datetime(2030, 1, 1, tzinfo=timezone.utc)}
    e = entry_from_beat("e", {"task": "t", "schedule": 5, "options": options}, app_tz="UTC")
    assert e.options == options


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
        "BulkInvalidError", "ConfigurationError", "ConflictError", "DcronError",
        "DistributedScheduler",
        "DynamicTasks", "EntryNotFoundError",
        "InvalidEntryError", "InvalidScheduleError", "MisfirePolicy", "RegistryUnavailableError",
        "__version__", "cron",
    }  # fmt: skip
    for name in celery_dcron.__all__:
        assert getattr(celery_dcron, name) is not None


# -- which entries this beat sends (issue 13: send by name, as Celery beat does) ----------


def checker(check_tasks: bool | None = None) -> tuple[Celery, DistributedScheduler]:
    """An app with a few tasks and a lazy scheduler on its settings (nothing connects)."""
    conf = {} if check_tasks is None else {"dcron_check_tasks": check_tasks}
    app = make_app(dcron_redis_url="redis://127.0.0.1:1/0", **conf)

    @app.task(name="report", shared=False)
    def report(day: str, fmt: str = "pdf") -> None: ...

    @app.task(name="bound", bind=True, shared=False)
    def bound(self: object, n: int) -> None: ...

    @app.task(name="untyped", typing=False, shared=False)
    def untyped(n: int) -> None: ...

    class Klass(app.Task):  # type: ignore[name-defined,misc]
        name = "klass"

        def run(self, n: int) -> None: ...

    app.register_task(Klass())
    sched = DistributedScheduler(app, lazy=True)
    sched._settings = Settings.from_app(app)
    return app, sched


def spec(task: str, args: tuple[object, ...] = (), **kwargs: object) -> EntrySpec:
    return EntrySpec(name="e", task=task, schedule=IntervalSchedule(every_ms=1000),
                     args=args, kwargs=kwargs)  # fmt: skip


def test_unknown_tasks_are_sent_by_name_by_default() -> None:
    assert Settings.from_mapping({}).check_tasks is False
    _, sched = checker()
    assert sched._check_entry(spec("proj.elsewhere", (1,), x=2)) is None


def test_check_tasks_refuses_unknown_tasks_naming_the_field_and_the_fix() -> None:
    _, sched = checker(check_tasks=True)
    reason = sched._check_entry(spec("proj.elsewhere"))
    assert reason is not None
    assert reason.startswith("task: 'proj.elsewhere'") and "dcron_check_tasks = False" in reason
    assert sched._check_entry(spec("report", ("mon",))) is None


@pytest.mark.parametrize("check_tasks", [None, True])
@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (spec("report", ("mon", "pdf", "extra")), "args"),
        (spec("report", ("mon",), colour="red"), "kwargs"),
        (spec("report", ("mon",), day="tue"), "kwargs"),
        (spec("report"), "args"),
        (spec("bound", (1, 2)), "args"),
        (spec("klass", (), m=1), "kwargs"),
    ],
)
def test_args_of_a_known_task_must_fit_its_signature(
    check_tasks: bool | None, entry: EntrySpec, field: str
) -> None:
    _, sched = checker(check_tasks)
    reason = sched._check_entry(entry)
    assert reason is not None and reason.startswith(f"{field}: "), reason
    assert entry.task in reason


@pytest.mark.parametrize(
    "entry",
    [
        spec("report", ("mon",)),
        spec("report", (), day="mon", fmt="csv"),
        spec("bound", (1,)),
        spec("klass", (), n=1),
        spec("untyped", (1, 2, 3)),  # typing=False: Celery does not check, nor do we
    ],
)
def test_args_that_fit_are_accepted(entry: EntrySpec) -> None:
    _, sched = checker(check_tasks=True)
    assert sched._check_entry(entry) is None


def test_a_superseded_instance_exits_with_status_1_instead_of_idling() -> None:
    """Another process took this node id over while this one was frozen: beat's loop
    must end (a supervisor then restarts it), with status 1, without deregistering."""

    class Superseded:
        node_id = "host:0"
        membership = SimpleNamespace(superseded=True)
        stopped = False

        def step(self) -> float:
            return 1.0

        def stop(self) -> None:
            self.stopped = True  # the real Engine.stop deregisters nothing when superseded

    app = make_app()
    sched = DistributedScheduler(app, lazy=True)
    engine = Superseded()
    sched._engine = engine  # type: ignore[assignment]
    with pytest.raises(SystemExit) as exit_info:
        sched.tick()
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as closed:
        sched.close()
    assert closed.value.code == 1 and engine.stopped
