"""SIGTERM in the middle of a publishing burst: the tick being published is recorded as
sent before the instance exits, so no later owner publishes it again (G1 with restarts)."""

from __future__ import annotations

import random
import time

from tests.e2e.harness import Cluster


def test_sigterm_during_bursts_never_sends_a_tick_twice(cluster: Cluster) -> None:
    env = {"DCRON_E2E_ENTRIES": "300", "DCRON_E2E_POLICY": "all"}
    beats = cluster.start(2, **env)
    cluster.wait_ticks(2, timeout=40)
    rng = random.Random(7)
    for round_ in range(8):
        victim = beats[round_ % 2]
        time.sleep(rng.uniform(0.3, 1.3))  # ticks are spread over the second: mid-burst
        code = victim.terminate()
        assert code == 0, victim.log_tail()
        beats[round_ % 2] = cluster.restart(victim)
    cluster.wait_ticks(2, after_ms=int(time.time() * 1000), timeout=40)
    cluster.stop_all()
    published = cluster.count_published()
    assert sum(published.counts.values()) > 3000
    published.assert_once()  # no duplicate, and every message has its "fired" log line
