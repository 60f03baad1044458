"""Rows reach the registry after commit; reconcile repairs the registry from the rows.

Against a real redis-server. ``transaction=True`` so that ``on_commit`` runs as in
production, when the transaction really commits.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from io import StringIO
from itertools import pairwise
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import transaction

from celery_dcron import signals
from celery_dcron.api import DynamicTasks
from celery_dcron.clock import ManualClock
from celery_dcron.contrib.django import sync
from celery_dcron.contrib.django.models import DynamicTask
from celery_dcron.contrib.django.validators import dynamic_tasks
from celery_dcron.enums import EntrySource
from celery_dcron.ticks import task_id
from tests.django.conftest import make_task
from tests.integration.test_engine import Cluster, Recorder, _server_ms

pytestmark = pytest.mark.django_db(transaction=True)


def test_save_writes_the_entry_after_commit_and_delete_removes_it(dt: DynamicTasks) -> None:
    with transaction.atomic():
        task = make_task(name="report", cron="*/5 * * * * *")
        task.save()
        assert dt.registry.get_entry("report") is None  # not before the commit
    spec = dt.get("report")
    assert spec.source == "django" and spec.task == "djtest.ping"
    task.cron = "*/7 * * * * *"
    task.save()
    assert dt.get("report").schedule.expr == "*/7 * * * * *"  # type: ignore[attr-defined]
    task.delete()
    assert dt.registry.get_entry("report") is None


def test_rollback_writes_nothing_and_rename_moves_the_entry(dt: DynamicTasks) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        make_task(name="never").save()
        raise RuntimeError("rolled back")
    assert dt.registry.get_entry("never") is None
    task = make_task(name="old-name")
    task.save()
    task.name = "new-name"
    task.save()
    assert dt.registry.get_entry("old-name") is None
    assert dt.get("new-name").source == "django"


def test_a_static_or_api_entry_of_that_name_is_never_overwritten(dt: DynamicTasks) -> None:
    dt.add("mine", "djtest.ping", every=60)
    sync.take_failures()
    DynamicTask.objects.create(
        name="mine", task="djtest.ping", schedule_kind="cron", cron="* * * * *"
    )
    assert dt.get("mine").source == "dynamic"
    assert any("a dynamic entry has that name" in f for f in sync.take_failures())


def test_redis_down_at_save_the_row_is_kept_and_reconcile_writes_it(
    dcron_app: Any, redis_server: Any
) -> None:
    dcron_app.conf.dcron_redis_url = redis_server.url_for(0)
    from celery_dcron.contrib.django import validators

    validators._tasks_for.cache_clear()
    redis_server.kill()
    sync.take_failures()
    task = make_task(name="while-down")
    task.save()
    assert DynamicTask.objects.filter(name="while-down").exists()
    assert any("not written to the registry yet" in f for f in sync.take_failures())
    redis_server.restart()
    report = sync.reconcile()
    assert report.written == ["djtest/while-down"]
    assert dynamic_tasks("").get("while-down").source == "django"


def test_reconcile_after_flushdb_restores_every_row_and_removes_orphans(
    dt: DynamicTasks, redis_url: str
) -> None:
    for i in range(5):
        make_task(name=f"t{i}", cron=f"{i} * * * * *").save()
    before = {s.name: s for s in dt.list()}
    redis.Redis.from_url(redis_url).flushdb()
    report = sync.reconcile()
    assert sorted(report.written) == [f"djtest/t{i}" for i in range(5)]
    after = {s.name: s for s in dt.list()}
    assert {n: s.with_changes(version=0) for n, s in after.items()} == {
        n: s.with_changes(version=0) for n, s in before.items()
    }
    assert not sync.reconcile().changed  # nothing left to do
    # a django entry without a row (its delete never reached Redis) is removed
    DynamicTask.objects.filter(name="t0").update(name="renamed-behind-our-back")
    report = sync.reconcile()
    assert report.removed == ["djtest/t0"] and report.written == ["djtest/renamed-behind-our-back"]


def test_every_write_goes_through_the_public_api(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # contrib.django is a client of DynamicTasks like any other: put() and remove(), with
    # compare-and-set on the version it read; the registry's own writes are never called.
    calls: list[tuple[str, str, int | None, bool]] = []
    put, remove = DynamicTasks.put, DynamicTasks.remove

    def spy_put(self: DynamicTasks, spec: Any, **kw: Any) -> Any:
        calls.append(("put", spec.name, kw.get("expected_version"), kw.get("force", False)))
        return put(self, spec, **kw)

    def spy_remove(self: DynamicTasks, name: str, **kw: Any) -> None:
        calls.append(("remove", name, kw.get("expected_version"), False))
        remove(self, name, **kw)

    monkeypatch.setattr(DynamicTasks, "put", spy_put)
    monkeypatch.setattr(DynamicTasks, "remove", spy_remove)
    task = make_task(name="w", cron="*/5 * * * * *")
    task.save()
    assert dt.get("w").source is EntrySource.DJANGO
    dt.update("w", cron="*/9 * * * * *")  # the database wins at the next reconcile
    changed = dt.get("w").version
    sync.reconcile()
    task.delete()
    assert calls == [
        ("put", "w", None, True),
        ("put", "w", changed, False),
        ("remove", "w", changed + 1, False),
    ]


def test_reconcile_writes_back_a_changed_entry_and_dry_run_changes_nothing(
    dt: DynamicTasks,
) -> None:
    make_task(name="x", cron="*/5 * * * * *").save()
    dt.update("x", cron="*/9 * * * * *")  # changed through the API: the database wins
    report = sync.reconcile(dry_run=True)
    assert report.written == ["djtest/x"]
    assert dt.get("x").schedule.expr == "*/9 * * * * *"  # type: ignore[attr-defined]
    sync.reconcile()
    assert dt.get("x").schedule.expr == "*/5 * * * * *"  # type: ignore[attr-defined]


def test_finished_one_off_with_delete_deletes_its_row(dt: DynamicTasks) -> None:
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    make_task(name="once", schedule_kind="at", cron="", at=at, after_run="delete").save()
    dt.registry.remove_entry("once", tombstone=True)  # what the engine does after its run
    report = sync.reconcile()
    assert report.rows_deleted == ["djtest/once"]
    assert not DynamicTask.objects.filter(name="once").exists()
    assert "once" not in dt.deleted()  # "delete" frees the name again


def test_dcron_sync_command_reports_and_fails_on_errors(dt: DynamicTasks, redis_url: str) -> None:
    make_task(name="a").save()
    redis.Redis.from_url(redis_url).flushdb()
    out = StringIO()
    call_command("dcron_sync", "--dry-run", stdout=out)
    assert "would be written: djtest/a" in out.getvalue()
    assert dt.registry.get_entry("a") is None
    out = StringIO()
    call_command("dcron_sync", stdout=out)
    assert "written: djtest/a" in out.getvalue() and dt.get("a").source == "django"


def test_engines_reconcile_after_flushdb_and_no_tick_fires_twice(
    dt: DynamicTasks, redis_url: str
) -> None:
    """Three engines run admin tasks; Redis loses its data; the engines' reconcile signal
    puts every task back (anchors kept), and no (entry, tick) is published twice."""
    for i in range(6):
        make_task(name=f"every-{i}", schedule_kind="interval", cron="", interval_seconds=1).save()
    signals.reconcile.connect(sync._on_reconcile, weak=False, dispatch_uid="dcron_django")
    try:
        clock = ManualClock(start_ms=_server_ms(redis_url))
        rec = Recorder()
        cluster = Cluster(redis_url, clock, rec)
        for node in ("a", "b", "c"):
            cluster.add(node, [], namespace="djtest")
        cluster.step_all(3)
        cluster.advance(5_000)
        fired_before = len(rec.sent)
        assert fired_before >= 6 * 4
        redis.Redis.from_url(redis_url).flushdb()
        cluster.advance(8_000)
    finally:
        signals.reconcile.disconnect(dispatch_uid="dcron_django")
    names = {s.name for s in dt.list()}
    assert names == {f"every-{i}" for i in range(6)}
    dup = [k for k, n in rec.counts().items() if n > 1]
    assert not dup, f"published twice: {dup[:5]}"
    for name, tick, tid, _ in rec.sent:
        assert tid == task_id("djtest", name, tick)
    end_ms = clock.now_ms()
    for i in range(6):
        ticks = sorted(t for n, t, _, _ in rec.sent if n == f"every-{i}")
        assert end_ms - ticks[-1] <= 1_000, (i, ticks)  # it kept firing after the flush
        assert all((b - a) % 1000 == 0 for a, b in pairwise(ticks)), ticks  # grid kept
