"""Redis (registry and broker) dies and comes back empty while the beats run.

The broker list goes with the data, so these tests count the beats' ``fired`` lines.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import Cluster, busiest, now_ms, wait_until
from tests.servers import RedisServer

#: How long Redis stays down: several ticks of every entry, a few retries of every beat.
OUTAGE_S = 3.0
ENTRIES = [f"every-1s-{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("policy", "frozen"),
    [("once", False), ("all", False), ("all", True)],
    ids=["once", "all", "all-one-instance-frozen-meanwhile"],
)
def test_redis_restart_with_data_loss(
    cluster: Cluster, redis_server: RedisServer, policy: str, frozen: bool
) -> None:
    """``frozen``: the busiest instance is SIGSTOPped across the outage and resumed only
    after the others are back, so they reconnect to the empty Redis without it (and the
    third instance joins late, so that every instance has read the entries' state once
    after they started firing)."""
    if frozen:
        beats = cluster.start(2, DCRON_E2E_POLICY=policy)
        cluster.wait_ticks(2, after_ms=now_ms(), entries=ENTRIES, timeout=20)
        beats += cluster.start(1, DCRON_E2E_POLICY=policy)
    else:
        beats = cluster.start(3, DCRON_E2E_POLICY=policy)
    cluster.wait_ticks(3, after_ms=now_ms(), entries=ENTRIES, timeout=20)
    sleeper = busiest(cluster.fired(), beats, since=now_ms() / 1000 - 1.5)[0] if frozen else None
    awake = [b for b in beats if b is not sleeper]

    if sleeper is not None:
        sleeper.pause()
    down_s = now_ms() / 1000
    redis_server.kill()
    # Every instance notices, says so, keeps retrying and keeps running.
    wait_until(
        lambda: all(
            b.grep(r"dcron: Redis unreachable \(attempt 2\), publishing nothing") for b in awake
        ),
        timeout=10,
        what="every beat to log two failed attempts to reach Redis",
    )
    cluster.assert_alive(*beats)
    time.sleep(max(down_s + OUTAGE_S - time.time(), 0))  # the fault lasts OUTAGE_S: not a check
    # Taken before the start: an instance may reconnect before start() has returned.
    up_s = now_ms() / 1000
    redis_server.start()  # same port, no data
    # G5: nothing is published while Redis is unreachable.
    fired_while_down = [f for f in cluster.fired() if down_s + 0.5 < f.logged_at < up_s]
    assert not fired_while_down, f"fired while Redis was down: {fired_while_down}"

    if sleeper is not None:
        cluster.wait_ticks(2, after_ms=int(up_s * 1000), entries=ENTRIES, timeout=20)
        sleeper.resume()
        cluster.wait_working(sleeper, timeout=15)
    cluster.wait_ticks(4, after_ms=int(up_s * 1000), entries=ENTRIES, timeout=30)
    cluster.assert_alive(*beats)
    cluster.stop_all()

    assert any(b.grep(r"dcron: the registry was reset") for b in beats), "data loss not noticed"
    pub = cluster.count_fired()
    pub.assert_once()
    for entry in ENTRIES:
        after = [t for t in pub.ticks(entry) if t > up_s * 1000]
        assert after, f"{entry} did not resume after the restart: {pub.describe(entry)}"
        # Ticks are pure: the instances restore the last ticks, the grid does not move.
        assert not pub.off_grid(entry, 1000), f"{entry} re-anchored: {pub.describe(entry)}"
        if policy == "all" and not frozen:  # G5: it catches up when Redis returns, every tick
            assert not pub.missing(entry, 1000), f"{entry}: {pub.describe(entry)}"
        # With the owner frozen across a data loss, nobody knows which of its ticks were
        # sent: the others wait one node TTL for it, then skip the unknown ticks rather
        # than risk sending one twice (G1 before G2; the README states this limit).
