"""Dynamic entries through :class:`DynamicTasks` against a real redis-server.

Engines are driven as in test_engine.py: an injected ManualClock decides due-ness,
and every step heartbeats, so a change made through the API is seen at the next step.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab

from celery_dcron import ConflictError, DynamicTasks, EntryNotFoundError, InvalidEntryError
from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec
from celery_dcron.enums import AfterRun, EntrySource
from celery_dcron.exceptions import InvalidScheduleError, VersionConflictError
from celery_dcron.schedules import IntervalSchedule, ms_to_datetime, schedule_to_json
from celery_dcron.ticks import run_now_task_id, task_id
from tests.integration.test_engine import (
    Cluster,
    Recorder,
    _server_ms,
    assert_each_tick_once,
    ticks_of,
)

S = 1000
ROOT = Path(__file__).resolve().parents[2]


def make_app() -> Celery:
    app = Celery("api_tests", set_as_current=False)
    app.conf.timezone = "UTC"

    @app.task(name="t", shared=False)
    def t(*args: Any, **kwargs: Any) -> None: ...

    @app.task(name="sink", shared=False)
    def sink(payload: Any = None) -> None: ...

    @app.task(name="t2", shared=False)
    def t2(*args: Any, **kwargs: Any) -> None: ...

    return app


def api_for(url: str, **settings: Any) -> DynamicTasks:
    conf: dict[str, Any] = {"redis_url": url, "node_id": "api", "default_task": "sink"}
    conf.update(settings)
    return DynamicTasks(make_app(), settings=Settings(**conf))


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    c = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    yield c
    for e in c.engines:
        e.stopped = True


@pytest.fixture
def api(redis_url: str) -> DynamicTasks:
    return api_for(redis_url)


def start(cluster: Cluster, n: int) -> None:
    for i in range(n):
        cluster.add(f"n{i}", [])
    cluster.step_all(3)


def sync_clock(cluster: Cluster, name: str) -> None:
    """Set the clock to the entry's anchor: its ticks then fall on whole seconds from now."""
    cluster.step_all()
    anchor = cluster.engines[0].registry.states([name])[name].anchor_ms
    assert anchor is not None
    cluster.clock.set(anchor)


def owner_of(cluster: Cluster, name: str) -> str:
    owners = [e.node_id for e in cluster.engines if name in e.owned and not e.stopped]
    assert len(owners) == 1, owners
    return owners[0]


def test_an_entry_added_through_the_api_fires_from_its_owner(
    cluster: Cluster, api: DynamicTasks
) -> None:
    start(cluster, 3)
    spec = api.add("dyn", "t", every=1, args=[1, 2], kwargs={"k": "v"})
    assert spec.version == 1 and spec.source == "dynamic"
    sync_clock(cluster, "dyn")
    cluster.advance(3 * S)
    ts = ticks_of(cluster.recorder, "dyn")
    assert len(ts) == 3 and all(b - a == S for a, b in pairwise(ts))
    assert {node for n, *_, node in cluster.recorder.sent if n == "dyn"} == {
        owner_of(cluster, "dyn")
    }
    assert_each_tick_once(cluster.recorder)
    assert api.get("dyn").args == (1, 2)


def test_pause_resume_and_remove_take_effect_at_the_next_step(
    cluster: Cluster, api: DynamicTasks
) -> None:
    start(cluster, 2)
    api.add("dyn", "t", every=1, misfire_policy="skip")
    sync_clock(cluster, "dyn")
    cluster.advance(2 * S)
    assert len(ticks_of(cluster.recorder, "dyn")) == 2
    api.pause("dyn")
    assert api.get("dyn").enabled is False
    cluster.advance(3 * S)
    assert len(ticks_of(cluster.recorder, "dyn")) == 2
    api.resume("dyn")
    cluster.step_all()  # the missed ticks are skipped (policy skip), the on-time one fires
    resumed = len(ticks_of(cluster.recorder, "dyn"))
    assert resumed in (2, 3)
    cluster.advance(2 * S)
    assert len(ticks_of(cluster.recorder, "dyn")) == resumed + 2
    api.remove("dyn")
    cluster.advance(3 * S)
    assert len(ticks_of(cluster.recorder, "dyn")) == resumed + 2
    with pytest.raises(EntryNotFoundError):
        api.get("dyn")
    assert_each_tick_once(cluster.recorder)


def test_run_now_is_dispatched_exactly_once_across_three_engines(
    cluster: Cluster, api: DynamicTasks
) -> None:
    start(cluster, 3)
    api.add("daily", "t", cron="0 3 * * *")
    cluster.step_all()
    tid = api.run_now("daily")
    cluster.step_all(3)
    sent = [row for row in cluster.recorder.sent if row[0] == "daily"]
    assert len(sent) == 1
    _name, tick_ms, sent_id, node = sent[0]
    assert sent_id == tid == run_now_task_id("default", "daily", tick_ms)
    assert sent_id != task_id("default", "daily", tick_ms)
    assert node == owner_of(cluster, "daily")
    assert cluster.engines[0].registry.requests() == []
    with pytest.raises(EntryNotFoundError):
        api.run_now("nope")


def test_max_runs_is_exact_and_the_after_run_action_applies(
    cluster: Cluster, api: DynamicTasks
) -> None:
    start(cluster, 3)
    api.add("thrice", "t", every=1, max_runs=3, after_run="disable")
    sync_clock(cluster, "thrice")
    cluster.advance(6 * S)
    assert len(ticks_of(cluster.recorder, "thrice")) == 3
    assert api.get("thrice").enabled is False
    assert api.state("thrice").run_count == 3


@pytest.mark.parametrize("action", ["delete", "tombstone", "disable"])
def test_a_one_shot_fires_once_then_its_after_run_action_applies(
    cluster: Cluster, api: DynamicTasks, action: str
) -> None:
    start(cluster, 3)
    at_ms = cluster.clock.now_ms() + 2 * S
    api.add("once", "t", at=ms_to_datetime(at_ms), after_run=action)
    cluster.advance(5 * S)
    assert ticks_of(cluster.recorder, "once") == [at_ms]
    cluster.advance(2 * S)
    assert ticks_of(cluster.recorder, "once") == [at_ms]
    if action == "disable":
        assert api.get("once").enabled is False
    else:
        with pytest.raises(EntryNotFoundError):
            api.get("once")
        assert ("once" in api.deleted()) is (action == "tombstone")


def test_tombstones_refuse_re_adding_until_force_or_reuse(
    cluster: Cluster, api: DynamicTasks
) -> None:
    api.add("x", "t", every=5)
    assert api.mark_deleted("x") is True
    with pytest.raises(ConflictError, match="tombstoned"):
        api.add("x", "t", every=5)
    # a static entry of that name, from a (re)started instance, is refused too
    static = EntrySpec(name="x", task="t", schedule=IntervalSchedule(every_ms=S))
    cluster.add("n0", [static])
    cluster.step_all(2)
    assert "x" not in cluster.engines[0].entries
    assert api.force_add("x", "t", every=7).version == 1
    assert api.get("x").schedule == IntervalSchedule(every_ms=7 * S)
    assert "x" not in api.deleted()
    api.mark_deleted("x")
    assert api.reuse_deleted("x") is True
    api.add("x", "t", every=5)
    assert api.cleanup("x") > 0
    with pytest.raises(EntryNotFoundError):
        api.get("x")
    assert api.state("x").anchor_ms is None


def test_a_dynamic_entry_may_not_take_a_static_name_without_force(
    cluster: Cluster, api: DynamicTasks
) -> None:
    static = EntrySpec(name="s", task="t", schedule=IntervalSchedule(every_ms=S))
    cluster.add("n0", [static])
    cluster.step_all(2)
    with pytest.raises(ConflictError, match="static"):
        api.add("s", "t", every=5)
    assert api.force_add("s", "t", every=5).source == "dynamic"


def test_concurrent_updates_conflict_instead_of_losing_a_write(api: DynamicTasks) -> None:
    api.add("e", "t", every=5)
    first, second = api.get("e"), api.get("e")
    updated = api.update("e", expected_version=first.version, description="mine")
    assert updated.version == 2
    with pytest.raises(ConflictError, match="version"):
        api.update("e", expected_version=second.version, description="theirs")
    assert api.get("e").description == "mine"
    with pytest.raises(ConflictError, match="already exists"):
        api.add("e", "t", every=5)
    assert api.update("e", every=timedelta(seconds=9)).schedule == IntervalSchedule(every_ms=9 * S)


def test_put_writes_a_built_entry_keeping_its_source_by_compare_and_set(
    api: DynamicTasks,
) -> None:
    built = api.build("p", "t", every=5).with_changes(source=EntrySource.DJANGO)
    assert api.list() == []  # build writes nothing
    stored = api.put(built)
    assert stored.version == 1 and api.get("p").source is EntrySource.DJANGO
    with pytest.raises(ConflictError, match="already exists"):
        api.put(built)
    changed = api.put(stored.with_changes(description="v2"), expected_version=stored.version)
    assert changed.version == 2
    with pytest.raises(VersionConflictError):
        api.put(stored.with_changes(description="stale"), expected_version=stored.version)
    assert api.put(built, force=True).description == ""  # force: over anything
    api.mark_deleted("p")
    with pytest.raises(ConflictError, match="tombstoned"):
        api.put(built)
    assert api.put(built, force=True).source is EntrySource.DJANGO


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "a{b}"}, "name"),
        ({"task": " "}, "task"),
        ({"options": {"colour": "red"}}, "options"),
        ({"kwargs": {"x": object()}}, "kwargs"),
        ({"after_run": AfterRun.DISABLE}, "after_run"),  # an entry that never ends
        ({"source": EntrySource.STATIC}, "source"),  # static entries: beat_schedule only
    ],
)
def test_put_validates_the_whole_entry_and_writes_nothing(
    api: DynamicTasks, change: dict[str, Any], field: str
) -> None:
    built = api.build("p", "t", every=5)
    with pytest.raises(InvalidEntryError) as err:
        api.put(built.with_changes(**change))
    assert err.value.field == field
    assert api.list() == []


def test_remove_with_an_expected_version_refuses_a_changed_entry(api: DynamicTasks) -> None:
    first = api.add("e", "t", every=5)
    api.update("e", description="changed")
    with pytest.raises(VersionConflictError):
        api.remove("e", expected_version=first.version)
    assert api.get("e").description == "changed"
    api.remove("e", expected_version=first.version + 1)
    with pytest.raises(EntryNotFoundError):
        api.get("e")
    with pytest.raises(VersionConflictError):  # removed since version 2 was read
        api.remove("e", expected_version=2)


def test_namespaces_are_isolated(cluster: Cluster, redis_url: str, api: DynamicTasks) -> None:
    other = api_for(redis_url, namespace="tenant2")
    other.add("e", "t", every=1)
    api.add("mine", "t", every=1)
    assert [s.name for s in other.list()] == ["e"]
    assert [s.name for s in api.list()] == ["mine"]
    other.pause_all()
    assert other.is_paused() and not api.is_paused()
    start(cluster, 1)
    sync_clock(cluster, "mine")
    cluster.advance(2 * S)
    assert {n for n, *_ in cluster.recorder.sent} == {"mine"}


def test_pause_all_claims_nothing_and_resume_follows_the_misfire_policy(
    cluster: Cluster, api: DynamicTasks
) -> None:
    start(cluster, 3)
    api.add("every", "t", every=1, misfire_policy="once")
    api.add("each", "t", every=1, misfire_policy="all")
    sync_clock(cluster, "each")
    cluster.advance(2 * S)
    before = {n: len(ticks_of(cluster.recorder, n)) for n in ("every", "each")}
    api.pause_all()
    cluster.step_all()
    assert all(e.paused for e in cluster.engines)
    cluster.advance(4 * S)
    assert {n: len(ticks_of(cluster.recorder, n)) for n in ("every", "each")} == before
    api.resume_all()
    cluster.step_all()
    assert len(ticks_of(cluster.recorder, "every")) == before["every"] + 1  # coalesced
    assert len(ticks_of(cluster.recorder, "each")) >= before["each"] + 4  # each missed tick
    assert_each_tick_once(cluster.recorder)


def test_reset_starts_an_entry_afresh(cluster: Cluster, api: DynamicTasks) -> None:
    start(cluster, 1)
    api.add("r", "t", every=1)
    sync_clock(cluster, "r")
    cluster.advance(2 * S)
    assert api.state("r").run_count == 2
    api.reset("r")
    state = api.state("r")
    assert state.run_count == 0 and state.last_tick_ms is None


def test_payload_only_entries_go_to_the_default_task(api: DynamicTasks, redis_url: str) -> None:
    spec = api.add("p", payload={"to": "a@b.c"}, every=60)
    assert spec.task == "sink" and spec.kwargs == {"payload": {"to": "a@b.c"}}
    no_default = api_for(redis_url, default_task=None)
    with pytest.raises(InvalidEntryError, match="dcron_default_task"):
        no_default.add("q", payload=1, every=60)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cron": "61 * * * *"}, "minute"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "timezone"),
        ({"every": -1}, "every"),
        ({"every": "soon"}, "every"),
        ({"at": datetime(2099, 1, 1)}, "at"),
        ({"at": "tomorrow"}, "at"),
        ({"at": datetime(2000, 1, 1, tzinfo=timezone.utc)}, "past"),
        ({"every": 1, "cron": "* * * * *"}, "schedule"),
        ({}, "schedule"),
        ({"every": 1, "args": "nope"}, "args"),
        ({"every": 1, "kwargs": [1]}, "kwargs"),
        ({"every": 1, "kwargs": {"x": object()}}, "JSON"),
        ({"every": 1, "payload": "x" * 70_000}, "dcron_max_payload_bytes"),
        ({"every": 1, "options": {"colour": "red"}}, "options"),
        ({"every": 1, "max_runs": 0}, "max_runs"),
        ({"every": 1, "after_run": "delete"}, "after_run"),
        ({"every": 1, "after_run": "explode", "max_runs": 1}, "after_run"),
        ({"every": 1, "misfire_policy": "sometimes"}, "misfire_policy"),
        ({"every": 1, "frequency": 3}, "unknown fields"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    api: DynamicTasks, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEntryError, match=field):
        api.add("bad", "t", **kwargs)
    assert api.list() == []


def test_unknown_task_and_bad_name_are_refused(api: DynamicTasks) -> None:
    with pytest.raises(InvalidEntryError, match="task: 'nope' is not registered"):
        api.add("e", "nope", every=1)
    for name in ("", " lead", "a{b}", "x" * 201, "tab\there"):
        with pytest.raises(InvalidEntryError, match="name"):
            api.add(name, "t", every=1)
    with pytest.raises(InvalidScheduleError):
        api.add("e", "t", cron="* * *")
    assert api.list() == []


# -- partial updates change only what they are given (issue 13) ---------------------------

PARIS = "Europe/Paris"
START = datetime(2030, 1, 1, 8, tzinfo=timezone.utc)
END = datetime(2031, 1, 1, 8, tzinfo=timezone.utc)


def full_entry(api: DynamicTasks) -> EntrySpec:
    """An entry with every field away from its default."""
    return api.add(
        "full", "t", cron="0 7 * * mon-fri", tz=PARIS, args=[1, 2], kwargs={"k": "v"},
        payload={"p": 1}, options={"queue": "reports", "priority": 3}, enabled=False,
        start_at=START, end_at=END, max_runs=5, after_run="disable", misfire_policy="all",
        misfire_grace=30, description="the full one",
    )  # fmt: skip


def flat(spec: EntrySpec) -> dict[str, Any]:
    data = spec.to_json()
    data.update({f"schedule.{k}": v for k, v in data.pop("schedule").items()})
    return data


@pytest.mark.parametrize(
    ("changes", "changed"),
    [
        ({"cron": "30 8 * * *"}, {"schedule.expr"}),
        ({"schedule": crontab(minute="30", hour="8")}, {"schedule.expr", "schedule.day_or"}),
        ({"tz": "Asia/Tokyo"}, {"schedule.tz"}),
        ({"task": "t2"}, {"task"}),
        ({"args": [3]}, {"args"}),
        ({"kwargs": {"k": "w"}}, {"kwargs"}),
        ({"payload": {"p": 2}}, {"kwargs"}),
        ({"options": {"queue": "other"}}, {"options"}),
        ({"enabled": True}, {"enabled"}),
        ({"start_at": START + timedelta(days=1)}, {"start_ms"}),
        ({"end_at": END + timedelta(days=1)}, {"end_ms"}),
        ({"max_runs": 6}, {"max_runs"}),
        ({"after_run": "tombstone"}, {"after_run"}),
        ({"misfire_policy": "skip"}, {"misfire_policy"}),
        ({"misfire_grace": 60}, {"misfire_grace_s"}),
        ({"description": "changed"}, {"description"}),
    ],
    ids=lambda v: ",".join(sorted(v)) if isinstance(v, (dict, set)) else str(v),
)
def test_a_partial_update_changes_only_the_fields_it_is_given(
    api: DynamicTasks, changes: dict[str, Any], changed: set[str]
) -> None:
    before = flat(full_entry(api))
    after = flat(api.update("full", **changes))
    assert after == flat(api.get("full"))
    differ = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert differ == changed | {"version"}, (before, after)


def test_a_cron_update_keeps_the_entrys_time_zone(api: DynamicTasks) -> None:
    api.add("paris", "t", cron="0 7 * * *", tz=PARIS)
    spec = api.update("paris", cron="30 7 * * *")
    assert schedule_to_json(spec.schedule) == {"kind": "cron", "expr": "30 7 * * *",
                                               "tz": PARIS, "day_or": True}  # fmt: skip
    spec = api.update("paris", schedule=crontab(minute="0", hour="9"))
    assert schedule_to_json(spec.schedule)["tz"] == PARIS
    assert schedule_to_json(api.update("paris", cron="0 6 * * *", tz="UTC").schedule)["tz"] == "UTC"
    # an interval has no zone: changing to cron takes the app's, as an add does
    api.add("iv", "t", every=60)
    assert schedule_to_json(api.update("iv", cron="0 6 * * *").schedule)["tz"] == "UTC"


def test_naive_datetimes_of_an_update_take_the_entrys_time_zone(api: DynamicTasks) -> None:
    api.add("paris", "t", cron="0 7 * * *", tz=PARIS)
    spec = api.update("paris", start_at=datetime(2030, 6, 1, 9))  # 09:00 in Paris: 07:00 UTC
    assert spec.start_ms == int(datetime(2030, 6, 1, 7, tzinfo=timezone.utc).timestamp() * 1000)


# -- task checks (issue 13) ------------------------------------------------------------


def test_args_of_a_known_task_are_checked_against_its_signature(redis_url: str) -> None:
    app = make_app()

    @app.task(name="report", shared=False)
    def report(day: str, fmt: str = "pdf") -> None: ...

    api = DynamicTasks(app, settings=Settings(redis_url=redis_url, node_id="api"))
    with pytest.raises(InvalidEntryError, match=r"entry 'r': args: .*report") as err:
        api.add("r", "report", every=60, args=["mon", "pdf", "extra"])
    assert err.value.field == "args" and "check_tasks=False" in str(err.value)
    with pytest.raises(InvalidEntryError, match="entry 'r': kwargs: ") as err:
        api.add("r", "report", every=60, args=["mon"], kwargs={"colour": "red"})
    assert err.value.field == "kwargs"
    api.add("r", "report", every=60, args=["mon"])
    with pytest.raises(InvalidEntryError, match="entry 'r': args: "):
        api.update("r", args=[])
    assert api.update("r", args=[], kwargs={"day": "tue"}).kwargs == {"day": "tue"}
    unchecked = DynamicTasks(app, settings=api.settings, check_tasks=False)
    assert unchecked.update("r", args=[1, 2, 3]).args == (1, 2, 3)


def test_the_api_checks_tasks_whatever_the_beats_setting(redis_url: str) -> None:
    # dcron_check_tasks is what the beat instances do with a task they do not import;
    # an entry typed into the API is checked unless check_tasks=False.
    for beat_checks in (False, True):
        settings = Settings(redis_url=redis_url, node_id="api", check_tasks=beat_checks)
        api = DynamicTasks(make_app(), settings=settings)
        with pytest.raises(InvalidEntryError, match="check_tasks=False") as err:
            api.add("e", "proj.nope", every=1)
        assert err.value.field == "task"
        assert (
            DynamicTasks(make_app(), settings=settings, check_tasks=False)
            .add(f"e{beat_checks}", "proj.nope", every=1)
            .task
            == "proj.nope"
        )


def write_project(root: Path, package: str, *, how: str) -> None:
    """A package ``<package>`` with a Celery app in ``celery.py`` whose tasks are in
    ``tasks.py``, found through ``include=`` or ``autodiscover_tasks`` (``how``)."""
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    include = f"include=[{package + '.tasks'!r}], " if how == "include" else ""
    discover = f"app.autodiscover_tasks([{package!r}])\n" if how == "autodiscover" else ""
    (pkg / "celery.py").write_text(
        "import os\nfrom celery import Celery\n\n"
        f"app = Celery({package!r}, {include}set_as_current=False)\n"
        "app.conf.update(broker_url='memory://', timezone='UTC',\n"
        "                dcron_redis_url=os.environ.get('DCRON_TEST_REDIS_URL', ''),\n"
        "                dcron_namespace=os.environ.get('DCRON_TEST_NAMESPACE', 'default'))\n"
        + discover
    )
    (pkg / "tasks.py").write_text(
        f"from {package}.celery import app\n\n\n"
        f"@app.task\ndef report(day, fmt='pdf'):\n    return day\n"
    )


@pytest.mark.parametrize("how", ["include", "autodiscover"])
def test_the_api_loads_the_apps_task_modules_before_checking(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    package = f"proj_{how}_{uuid.uuid4().hex[:8]}"
    write_project(tmp_path, package, how=how)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DCRON_TEST_REDIS_URL", redis_url)
    app = importlib.import_module(f"{package}.celery").app
    assert f"{package}.tasks" not in sys.modules
    api = DynamicTasks(app)
    spec = api.add("r", f"{package}.tasks.report", every=60, args=["mon"])
    assert spec.task == f"{package}.tasks.report"
    with pytest.raises(InvalidEntryError, match="args: "):
        api.add("r2", f"{package}.tasks.report", every=60)
