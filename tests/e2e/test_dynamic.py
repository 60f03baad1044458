"""Dynamic entries against three real beats: added, paused, resumed and removed from
another process; a one-shot whose owner is killed just before its time fires once."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from celery import Celery

from celery_dcron import DynamicTasks
from celery_dcron.config import Settings
from celery_dcron.registry import Registry
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import task_id
from tests.e2e.harness import Cluster, now_ms, wait_until


def api(cluster: Cluster) -> DynamicTasks:
    app = Celery("e2e-api", set_as_current=False)
    app.conf.update(
        broker_url=cluster.broker_url, dcron_redis_url=cluster.registry_url, dcron_namespace="e2e"
    )

    @app.task(name="beatapp.record")
    def record(i: int | None = None) -> int | None:  # the beats' task, known by name
        return i

    return DynamicTasks(app)


def ticks(cluster: Cluster, entry: str) -> list[int]:
    return sorted(t for (name, t) in cluster.count_published().counts if name == entry)


def test_entry_added_paused_resumed_removed_from_another_process(cluster: Cluster) -> None:
    cluster.start(3, DCRON_E2E_ENTRIES="3")
    tasks = api(cluster)
    added = now_ms()
    tasks.add("dyn", "beatapp.record", every=1)
    wait_until(lambda: ticks(cluster, "dyn"), timeout=10, what="the added entry to fire")
    first = ticks(cluster, "dyn")[0]
    assert first - added <= 2500  # anchored at add time: its first tick, within a second

    tasks.pause("dyn")
    paused = now_ms()
    time.sleep(3)  # the window in which nothing may fire: part of the check, bounded
    late = [t for t in ticks(cluster, "dyn") if t > paused + 1200]
    assert not late, f"fired after the pause: {late}"

    tasks.resume("dyn")
    resumed = now_ms()
    wait_until(
        lambda: [t for t in ticks(cluster, "dyn") if t > resumed],
        timeout=10,
        what="the entry to fire again after resume",
    )

    tasks.remove("dyn")
    removed = now_ms()
    time.sleep(3)
    late = [t for t in ticks(cluster, "dyn") if t > removed + 1200]
    assert not late, f"fired after removal: {late}"
    cluster.count_published().assert_once()


def test_one_shot_fires_once_when_its_owner_is_killed_around_its_time(cluster: Cluster) -> None:
    beats = cluster.start(3, DCRON_E2E_ENTRIES="3")
    tasks = api(cluster)
    at_ms = now_ms() + 4000
    tasks.add("launch", "beatapp.record", at=datetime.fromtimestamp(at_ms / 1000, timezone.utc))
    # find its owner the way every instance does, and kill it just before the time
    registry = Registry.from_settings(Settings(redis_url=cluster.registry_url, namespace="e2e"))
    nodes, _ = registry.nodes()
    names = sorted(registry.entries()[0])
    owner_id = get_strategy("consistent_hash").assign(names, nodes)["launch"]
    owner = next(b for b in beats if cluster.pid_of(owner_id) == b.pid)
    time.sleep(max(at_ms - 300 - now_ms(), 0) / 1000)
    owner.kill()

    wait_until(lambda: ticks(cluster, "launch"), timeout=15, what="the one-shot to fire")
    time.sleep(2)  # a second publish would show up here
    pub = cluster.count_published()
    pub.assert_once()
    assert [t for (n, t) in pub.counts if n == "launch"] == [at_ms]
    ids = [m.task_id for m in pub.messages if m.entry == "launch"]
    assert ids == [task_id("e2e", "launch", at_ms)]
