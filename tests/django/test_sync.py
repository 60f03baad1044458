"""Rows reach the registry after commit; reconcile repairs the registry from the rows.

Against a real redis-server. ``transaction=True`` so that ``on_commit`` runs as in
production, when the transaction really commits.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from io import StringIO
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.db import transaction

from celery_dcron import signals
from celery_dcron.api import DynamicTasks
from celery_dcron.clock import ManualClock
from celery_dcron.contrib.django import reconciler, sync, validators
from celery_dcron.contrib.django.models import DynamicTask
from celery_dcron.contrib.django.reconciler import LEASE
from celery_dcron.contrib.django.validators import dynamic_tasks
from celery_dcron.entries import Tick
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import ConfigurationError, RegistryUnavailableError
from celery_dcron.registry.leases import LeaseStore, lease_key
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
    # a django entry without a row (its delete never reached Redis) is removed, by a full
    # reconcile (QuerySet.update sends no signal and, without updated_at, is not seen
    # by an incremental one)
    DynamicTask.objects.filter(name="t0").update(name="renamed-behind-our-back")
    report = sync.reconcile(full=True)
    assert report.removed == ["djtest/t0"] and report.written == ["djtest/renamed-behind-our-back"]


def test_every_write_goes_through_the_public_api(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # contrib.django is a client of DynamicTasks like any other: put() and remove() (with
    # compare-and-set on the version it read) for one entry, add_many() for a batch; the
    # registry's own writes are never called.
    calls: list[tuple[str, Any, Any, bool]] = []
    put, remove, add_many = DynamicTasks.put, DynamicTasks.remove, DynamicTasks.add_many

    def spy_put(self: DynamicTasks, spec: Any, **kw: Any) -> Any:
        calls.append(("put", spec.name, kw.get("expected_version"), kw.get("force", False)))
        return put(self, spec, **kw)

    def spy_remove(self: DynamicTasks, name: str, **kw: Any) -> None:
        calls.append(("remove", name, kw.get("expected_version"), False))
        remove(self, name, **kw)

    def spy_add_many(self: DynamicTasks, entries: Any, **kw: Any) -> Any:
        entries = list(entries)
        calls.append(("add_many", tuple(e.name for e in entries), None, kw.get("replace", False)))
        return add_many(self, entries, **kw)

    monkeypatch.setattr(DynamicTasks, "put", spy_put)
    monkeypatch.setattr(DynamicTasks, "remove", spy_remove)
    monkeypatch.setattr(DynamicTasks, "add_many", spy_add_many)
    task = make_task(name="w", cron="*/5 * * * * *")
    task.save()
    assert dt.get("w").source is EntrySource.DJANGO
    dt.update("w", cron="*/9 * * * * *")  # the database wins at the next reconcile
    changed = dt.get("w").version
    sync.reconcile()
    task.delete()
    assert calls == [
        ("put", "w", None, True),
        ("add_many", ("w",), None, True),  # replace: the database wins
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
    DynamicTask.objects.update(updated_at=datetime.now(timezone.utc) - timedelta(hours=1))
    assert sync.reconcile().full == ["djtest"]  # the first one: a watermark now
    dt.registry.remove_entry("once", tombstone=True)  # what the engine does after its run
    report = sync.reconcile()
    # an incremental reconcile reads the rows of the names deleted since the last one
    assert report.incremental == ["djtest"] and report.rows_read == 1
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
    dt: DynamicTasks, redis_url: str, settings: Any
) -> None:
    """Three engines run admin tasks; Redis loses its data; the engines' reconcile signal
    puts every task back (anchors kept), and no (entry, tick) is published twice. (The
    reconcile runs inline here, in step with the engines' manual clock.)"""
    settings.DCRON_RECONCILE_IN_BACKGROUND = False
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


# -- one reconcile at a time, incremental, full, in batches ---------------------------


def _old(rows: Any, hours: float) -> None:
    """Make ``rows`` look saved ``hours`` ago (QuerySet.update leaves updated_at alone
    unless given)."""
    rows.update(updated_at=datetime.now(timezone.utc) - timedelta(hours=hours))


def _leases(dt: DynamicTasks) -> LeaseStore:
    return LeaseStore(dt.registry.transport)


def test_two_concurrent_reconciles_one_works_the_other_skips(
    dt: DynamicTasks, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        make_task(name=f"t{i}", cron=f"{i} * * * * *").save()
    redis.Redis.from_url(redis_url).flushdb()
    # A second reconcile (another beat instance, dcron_sync) starts while the first one
    # holds the lease, in the middle of its batched write.
    inner: list[sync.ReconcileReport] = []
    holders: list[str | None] = []
    add_many = DynamicTasks.add_many

    def concurrent(self: DynamicTasks, entries: Any, **kw: Any) -> Any:
        if not inner:
            holders.append(_leases(dt).holder(LEASE))
            inner.append(sync.reconcile(full=True))
        return add_many(self, entries, **kw)

    monkeypatch.setattr(DynamicTasks, "add_many", concurrent)
    outer = sync.reconcile()
    (second,) = inner
    assert sorted(outer.written) == ["djtest/t0", "djtest/t1", "djtest/t2"]
    assert outer.full == ["djtest"] and not outer.skipped
    assert holders[0] is not None and second.skipped == {"djtest": holders[0]}
    assert not second.changed and second.rows_read == 0 and not second.full
    assert "skipped: djtest (lease held by" in str(second)
    # released at the end; the skipped full reconcile is owed: the next one is full
    assert _leases(dt).holder(LEASE) is None
    assert sync.reconcile().full == ["djtest"]
    assert sync.reconcile().incremental == ["djtest"]


def test_a_lease_held_elsewhere_skips_the_namespace_and_dcron_sync_says_so(
    dt: DynamicTasks,
) -> None:
    make_task(name="a").save()
    grant = _leases(dt).acquire(LEASE, "other-host:1:x", 60_000)
    assert grant.acquired
    report = sync.reconcile()
    assert report.skipped == {"djtest": "other-host:1:x"} and report.rows_read == 0
    with pytest.raises(CommandError, match="could not be reconciled"):
        call_command("dcron_sync", "--wait", "0.3", stdout=StringIO(), stderr=StringIO())
    assert _leases(dt).release(LEASE, "other-host:1:x")
    assert sync.reconcile().full == ["djtest"]


def test_a_reconcile_that_loses_its_lease_stops_and_leaves_the_watermark(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        make_task(name=f"t{i}", cron=f"{i} * * * * *").save()
    first = sync.reconcile()
    assert first.full == ["djtest"]
    mark = _leases(dt).watermark(LEASE)
    assert mark is not None and mark.mark is not None and mark.full_ms is not None
    # the lease expires (a long pause) after the first page: the renewal finds it gone
    monkeypatch.setattr(reconciler, "LEASE_RENEW_S", 0.0)
    bulk_update = DynamicTask.objects.bulk_update

    def lose_lease(*args: Any, **kwargs: Any) -> Any:
        dt.registry.client.delete(lease_key(dt.registry.keys, LEASE))
        return bulk_update(*args, **kwargs)

    dt.update("t0", cron="59 * * * * *")  # something to write back in the first page
    dt.registry.claim([Tick(name="t0", tick_ms=1_000, fire=True)], node_id="n", lock_ttl_ms=1)
    monkeypatch.setattr(DynamicTask.objects, "bulk_update", lose_lease)
    report = sync.reconcile(full=True, page_size=2)
    assert report.rows_read == 2 and report.rows_updated == ["djtest/t0"]  # then it stopped
    assert any("lost the reconcile lease" in e for e in report.errors)
    assert _leases(dt).watermark(LEASE) == mark  # untouched


def test_incremental_reads_rows_changed_since_the_watermark_not_older_ones(
    dt: DynamicTasks,
) -> None:
    for i in range(10):
        make_task(name=f"t{i}", cron=f"{i} * * * * *").save()
    _old(DynamicTask.objects.all(), hours=2)
    _old(DynamicTask.objects.filter(name="t9"), hours=1)  # the latest: the watermark
    first = sync.reconcile()
    assert first.full == ["djtest"] and first.rows_read == 10 and not first.changed
    # Changed behind the table's back: t1 in the registry (the API), t3 in the table
    # (QuerySet.update, which sends no signal, with updated_at).
    dt.update("t1", cron="59 * * * * *")
    DynamicTask.objects.filter(name="t3").update(
        cron="33 * * * * *", updated_at=datetime.now(timezone.utc)
    )
    second = sync.reconcile()
    assert second.incremental == ["djtest"] and not second.full
    assert second.rows_read == 2  # t3, and t9 at the watermark (the overlap)
    assert second.written == ["djtest/t3"] and second.write_batches == 1
    assert dt.get("t3").schedule.expr == "33 * * * * *"  # type: ignore[attr-defined]
    assert dt.get("t1").schedule.expr == "59 * * * * *"  # type: ignore[attr-defined]
    third = sync.reconcile()
    assert third.rows_read == 1 and not third.changed  # t3, at the new watermark
    full = sync.reconcile(full=True)
    assert full.full == ["djtest"] and full.rows_read == 10 and full.written == ["djtest/t1"]
    assert dt.get("t1").schedule.expr == "1 * * * * *"  # type: ignore[attr-defined]


def test_a_full_reconcile_is_due_after_the_full_interval(
    dt: DynamicTasks, dcron_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_task(name="a").save()
    assert sync.reconcile().full == ["djtest"]
    assert sync.reconcile().incremental == ["djtest"]
    monkeypatch.setitem(dcron_app.conf, "dcron_full_reconcile_interval", 0)
    validators._tasks_for.cache_clear()  # the settings are read once
    assert sync.reconcile().full == ["djtest"]  # 0: every reconcile is full
    assert sync.reconcile().full == ["djtest"]
    monkeypatch.setitem(dcron_app.conf, "dcron_full_reconcile_interval", -1)
    validators._tasks_for.cache_clear()
    with pytest.raises(ConfigurationError, match="dcron_full_reconcile_interval"):
        sync.reconcile()


def test_full_reconcile_removes_entries_whose_row_is_gone_incremental_does_not(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_task(name="keep").save()
    make_task(name="gone", cron="5 * * * * *").save()
    assert sync.reconcile().full == ["djtest"]

    def down(self: DynamicTasks, name: str, **kw: Any) -> None:
        raise RegistryUnavailableError("dcron: Redis unreachable: test")

    with monkeypatch.context() as m:  # Redis away when the row is deleted
        m.setattr(DynamicTasks, "remove", down)
        DynamicTask.objects.filter(name="gone").delete()
    assert any("not removed from the registry yet" in f for f in sync.take_failures())
    assert dt.get("gone").source is EntrySource.DJANGO
    incremental = sync.reconcile()
    assert incremental.incremental == ["djtest"] and not incremental.removed
    out = StringIO()
    call_command("dcron_sync", "--full", stdout=out)
    assert "removed: djtest/gone" in out.getvalue()
    assert "0 written, 1 removed" in out.getvalue() and "full: djtest" in out.getvalue()
    assert dt.registry.get_entry("gone") is None and dt.get("keep").source is EntrySource.DJANGO


def _count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count what is sent to Redis: each single command, and each pipeline, is one send."""
    sent: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


@pytest.mark.parametrize("watermark", [False, True], ids=["first-sync", "incremental"])
def test_bulk_create_then_dcron_sync_writes_every_row_in_a_few_round_trips(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch, watermark: bool
) -> None:
    if watermark:
        make_task(name="earlier").save()
        _old(DynamicTask.objects.all(), hours=1)
        sync.reconcile()
    rows = [make_task(name=f"bulk-{i:04}", cron=f"{i % 60} * * * * *") for i in range(2000)]
    DynamicTask.objects.bulk_create(rows)  # no signal: nothing reaches Redis
    assert dt.registry.get_entry("bulk-0000") is None
    sent = _count_round_trips(monkeypatch)
    out = StringIO()
    call_command("dcron_sync", stdout=out)
    text = out.getvalue()
    assert "2000 written" in text
    # 1,000 rows a page and a batch (the row at the watermark is read again: 3 pages)
    assert ("2001 rows read, 3 write batches" if watermark else "2 write batches") in text
    assert ("incremental: djtest" if watermark else "full: djtest") in text
    assert "... and 1980 more" in text  # the list is cut short (all with -v 2)
    # a lease, a watermark, per page a read, the server's time (the due index's first
    # tick of each new cron entry counts from it) and a batched write, the lease again:
    # not one round trip per row (2,000 would be written one by one otherwise)
    assert len(sent) <= 17, len(sent)
    names = {spec.name for spec in dt.list()}
    assert {f"bulk-{i:04}" for i in range(2000)} <= names
    assert dt.get("bulk-1999").source is EntrySource.DJANGO


def test_saves_in_one_transaction_are_written_in_one_batch(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        make_task(name=f"t{i}", cron=f"{i % 60} * * * * *").save()
    old = DynamicTask.objects.get(name="t0")
    sent = _count_round_trips(monkeypatch)
    with transaction.atomic():
        for task in DynamicTask.objects.all():
            task.enabled = False
            task.save()
        old.refresh_from_db()
        old.name = "t0-renamed"
        old.save()
        assert dt.get("t1").enabled  # not before the commit
    # the old name's removal (read, remove and its script's first load), one read of the
    # 50 entries, their batched replacement (read the versions, write, and the batch
    # script's first load), the new one's creation: not two round trips per row
    assert len(sent) <= 12, len(sent)
    assert not any(spec.enabled for spec in dt.list())
    assert dt.registry.get_entry("t0") is None and dt.get("t0-renamed").source == "django"


def test_a_name_deleted_and_taken_again_in_one_transaction_keeps_its_new_entry(
    dt: DynamicTasks,
) -> None:
    make_task(name="x", cron="1 * * * * *").save()
    other = make_task(name="y")
    other.save()
    with transaction.atomic():
        other.description = "changed"
        other.save()  # its commit callback comes first, and writes the whole transaction
        DynamicTask.objects.get(name="x").delete()
        make_task(name="x", cron="2 * * * * *").save()
    assert dt.get("x").schedule.expr == "2 * * * * *"  # type: ignore[attr-defined]
    assert dt.get("y").description == "changed"
    with transaction.atomic():
        DynamicTask.objects.get(name="x").delete()
    assert dt.registry.get_entry("x") is None


def test_the_reconcile_signal_runs_in_the_background_and_merges_what_arrives_meanwhile(
    dt: DynamicTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat's loop sends the signal and goes on at once; signals sent while a reconcile
    runs are merged into one more (full if one of them asked for it)."""
    make_task(name="bg", schedule_kind="interval", cron="", interval_seconds=60).save()
    calls: list[bool] = []
    gate = threading.Event()
    real = sync.reconcile

    def slow(namespaces: Any, *, full: bool = False, **kw: Any) -> Any:
        calls.append(full)
        gate.wait(10)
        return real(namespaces, full=full, **kw)

    monkeypatch.setattr(sync, "reconcile", slow)
    sender = SimpleNamespace(settings=SimpleNamespace(namespace="djtest"))
    started = time.monotonic()
    sync._on_reconcile(sender, reason="periodic")
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:  # the runner took the first one
        time.sleep(0.01)
    sync._on_reconcile(sender, reason="reconnect")
    sync._on_reconcile(sender, reason="reset")
    assert time.monotonic() - started < 0.5  # the loop did not wait for the reconcile
    gate.set()
    assert sync.wait_reconciled(10)
    assert calls == [False, True]  # the first, then one merged run, full for "reset"
    assert dt.get("bg").source == "django"
