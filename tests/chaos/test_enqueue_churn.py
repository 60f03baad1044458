"""Scenario: the registry on the broker's Redis (the default deployment), beats killed and
frozen again and again: not one tick twice, not one tick missed (issue 12, item 2).

Three beats with ``dcron_redis_url`` = the broker URL (the same append-only redis-server
and database), so each claimed tick is pushed and marked sent by one Lua script. Every
0.5-2 s (seeded random, the seed is in the summary) one of them gets ``SIGKILL`` (started
again 0.3-2 s later, a new node) or ``SIGSTOP`` for 0.2-6 s (below and above the 3 s node
TTL: its claims are retaken by the others meanwhile), then ``SIGCONT``. 10 entries every
second, policy ``all``. Between two faults, a run-now request for one of them (from
another process, as ``DynamicTasks.run_now`` makes it): the requests are taken and sent
by beats that are killed and frozen too.

Asserted, with no allowance at all: no (entry, tick) on the queue twice (G1 has no window
on this path, not even the one the publish path documents), every tick of every entry
from its first to its last on the queue (G2, ``all``), every message with its
deterministic task id; every run-now request on the queue exactly once, with its own
id; every beat that sent anything sent it through the script.

The fault loop runs ``DCRON_ENQUEUE_CHAOS_SECONDS`` (default 120 s; CI runs it), or
``DCRON_SOAK_SECONDS`` when set.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_dcron.config import Settings
from celery_dcron.registry import Registry
from celery_dcron.ticks import run_now_task_id
from tests.chaos.observe import RedisQueueObserver
from tests.chaos.run import TTL_S, Chaos, every, soak_seconds, soak_timeout
from tests.e2e.conftest import held
from tests.e2e.harness import NAMESPACE, Beat, Message, wait_until
from tests.e2e.test_enqueue import ONE_SCRIPT, SameRedisCluster
from tests.servers import RedisServer

ENTRIES = every(10)
SEED_ENV = "DCRON_CHAOS_SEED"
DURATION_ENV = "DCRON_ENQUEUE_CHAOS_SECONDS"
CI_S = float(os.environ.get(DURATION_ENV) or 120.0)


@pytest.fixture
def same_cluster(
    broker: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SameRedisCluster]:
    """Beats whose registry is the broker's database (the append-only ``broker``)."""
    yield from held(SameRedisCluster(broker, tmp_path / "procs"), request)


@soak_timeout(CI_S)
def test_kill_and_freeze_never_send_a_tick_twice_or_miss_one(
    same_cluster: SameRedisCluster, broker: RedisServer
) -> None:
    cluster = same_cluster
    seed = int(os.environ.get(SEED_ENV) or random.randrange(1 << 30))
    rng = random.Random(seed)
    observer = RedisQueueObserver(broker).start()
    run = Chaos(cluster, observer, "enqueue-churn", policy="all", entries=ENTRIES)
    run.extra["seed"] = seed
    beats: dict[str, Beat] = {b.label: b for b in run.start(3)}
    registry = Registry.from_settings(Settings(redis_url=cluster.registry_url, namespace=NAMESPACE))
    requested: list[tuple[str, int]] = []  # (entry, request_ms) of each run-now

    deadline = time.monotonic() + soak_seconds(CI_S)
    while time.monotonic() < deadline:
        entry = rng.choice(ENTRIES)
        requested.append((entry, registry.run_now(entry)))
        label = rng.choice(sorted(beats))
        victim = beats[label]
        if rng.random() < 0.5:
            run.fault(f"SIGKILL {victim.name}")
            victim.kill()
            time.sleep(rng.uniform(0.3, 2.0))
            beats[label] = cluster.spawn(label, **victim.overrides)
        else:
            frozen_s = rng.uniform(0.2, 2 * TTL_S)
            run.fault(f"SIGSTOP {victim.name} {frozen_s:.1f}s")
            victim.pause()
            time.sleep(frozen_s)
            victim.resume()
        time.sleep(rng.uniform(0.5, 2.0))

    wait_until(lambda: not registry.requests(), timeout=30, what="every run-now request to be sent")

    def is_run_now(m: Message) -> bool:
        return (
            m.entry is not None
            and m.tick_ms is not None
            and m.task_id == run_now_task_id(NAMESPACE, m.entry, m.tick_ms)
        )

    run.extra["run-now"] = len(requested)
    report = run.finish(aside=is_run_now)
    sent_now = Counter((m.entry, m.tick_ms) for m in run.aside)
    print(f"run-now: {len(requested)} requested, {len(run.aside)} on the queue")
    twice = sorted(key for key, n in sent_now.items() if n > 1)
    unsent = sorted(set(requested) - set(sent_now))
    unasked = sorted(set(sent_now) - set(requested))
    senders = [b for b in cluster.beats if b.fired()]
    report.extra["sending-beats"] = len(senders)
    not_scripted = [b.name for b in senders if not b.grep(ONE_SCRIPT)]
    report.assert_ok(
        *([f"G1: duplicates (none allowed here): {report.window_dups}"] * bool(report.window_dups)),
        *([f"beats that did not use the script: {not_scripted}"] * bool(not_scripted)),
        *([f"run-now requests sent twice: {twice}"] * bool(twice)),
        *([f"run-now requests never sent: {unsent}"] * bool(unsent)),
        *([f"run-now messages nobody asked for: {unasked}"] * bool(unasked)),
    )
