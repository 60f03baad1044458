"""Scenario 1: three beats, one of them hit every few seconds, for a while.

Every 1-3 s (seeded random, the seed is in the summary) one of the three instances gets
one of:

``SIGKILL``   a crash; started again (a new node) 0.5-3 s later, without waiting for it;
``SIGSTOP``   a freeze of 0.5-6 s (below and above the 3 s node TTL), then ``SIGCONT``;
``SIGTERM``   a graceful restart: it leaves, exits, and is started again at once.

Faults follow one another, so while a restarted instance is still importing Celery the
next fault may hit another one: at times a single instance is working, or none
(both cases are covered by the misfire policy: ticks missed while no instance runs are
caught up).

10 entries every second, node TTL 3 s, heartbeat 0.5 s, no misfire grace. Asserted:

- G1: no (entry, tick) published twice, except in the window the README documents
  (SIGKILL/SIGSTOP between publish and "mark sent": the same task id is re-published);
  every message carries its deterministic task id;
- G2, policy ``all``: every tick of every entry, from its first to its last, arrives;
- G2, policy ``once``: a hole in an entry's ticks is only ever one coalesced catch-up,
  logged by the instance that fired it (``missed N ticks; policy once fires 1``).

CI runs the fault loop for 40 s (``all``) and 30 s (``once``); ``DCRON_SOAK_SECONDS=600``
runs each that long.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from celery_dcron import engine
from tests.chaos.observe import RedisQueueObserver
from tests.chaos.run import TTL_S, Chaos, every, soak_seconds, soak_timeout
from tests.e2e.harness import Beat, Cluster
from tests.servers import RedisServer

#: 10 entries: a beat that catches up on more in one pass logs only the first 10 in its
#: ``catch-up of N entries`` line (engine.SUMMARY_DETAILS), and `once` is judged by them.
ENTRIES = every(10)
SEED_ENV = "DCRON_CHAOS_SEED"


@soak_timeout(40.0)
@pytest.mark.parametrize(("policy", "ci_s"), [("all", 40.0), ("once", 30.0)])
def test_random_kill_freeze_restart_of_one_of_three(
    cluster: Cluster, broker: RedisServer, policy: str, ci_s: float
) -> None:
    assert getattr(engine, "SUMMARY_DETAILS", len(ENTRIES)) >= len(ENTRIES)
    seed = int(os.environ.get(SEED_ENV) or random.randrange(1 << 30))
    rng = random.Random(seed)
    observer = RedisQueueObserver(broker).start()
    run = Chaos(cluster, observer, f"churn-{policy}", policy=policy, entries=ENTRIES)
    run.extra["seed"] = seed
    beats: dict[str, Beat] = {b.label: b for b in run.start(3)}

    deadline = time.monotonic() + soak_seconds(ci_s)
    while time.monotonic() < deadline:
        label = rng.choice(sorted(beats))
        victim = beats[label]
        action = rng.choice(["SIGKILL", "SIGSTOP", "SIGTERM"])
        if action == "SIGKILL":
            run.fault(f"SIGKILL {victim.name}")
            victim.kill()
            time.sleep(rng.uniform(0.5, 3.0))
            beats[label] = cluster.spawn(label, **victim.overrides)
        elif action == "SIGSTOP":
            frozen_s = rng.uniform(0.5, 2 * TTL_S)
            run.fault(f"SIGSTOP {victim.name} {frozen_s:.1f}s")
            victim.pause()
            time.sleep(frozen_s)
            victim.resume()
        else:
            run.fault(f"SIGTERM {victim.name}")
            victim.terminate()
            beats[label] = cluster.spawn(label, **victim.overrides)
        time.sleep(rng.uniform(1.0, 3.0))

    report = run.finish()
    report.assert_ok()
