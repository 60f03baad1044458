"""Crash detection with real ``celery beat`` processes on a real redis-server (G3, G1).

A process killed with SIGKILL closes its Redis connections at once, and with them the
subscription on its node channel: the others take its entries in about one heartbeat,
long before its node TTL. A process frozen with SIGSTOP keeps its connections: its
entries wait for the TTL, as before. The TTL here (6 s) is long against the heartbeat
(0.5 s), so the TTL cannot explain a fast failover.
"""

from __future__ import annotations

from tests.e2e.harness import Beat, Cluster, Fired, Published, busiest, now_ms, wait_until

TTL_S = 6.0
HEARTBEAT_S = 0.5
ENV = {"DCRON_E2E_TTL": str(TTL_S), "DCRON_E2E_HEARTBEAT": str(HEARTBEAT_S)}


def every(n: int) -> list[str]:
    return [f"every-1s-{i}" for i in range(n)]


def first_after(
    fired: Published | list[Fired], entry: str, after_s: float, *, not_by: str
) -> float | None:
    """When ``entry`` was first fired after ``after_s`` by a node other than ``not_by``."""
    if isinstance(fired, Published):
        fired = fired.fired
    return min(
        (f.logged_at for f in fired if f.entry == entry and f.logged_at > after_s
         and f.node != not_by),
        default=None,
    )  # fmt: skip


def start(cluster: Cluster) -> tuple[list[Beat], Beat, list[str], str]:
    """Three beats firing 9 entries; the busiest one, its entries and its node id."""
    entries = every(9)
    beats = cluster.start(3, DCRON_E2E_ENTRIES="9", DCRON_E2E_POLICY="all", **ENV)
    cluster.wait_ticks(3, after_ms=now_ms(), entries=entries, timeout=25)
    victim, owned = busiest(cluster.fired(), beats, since=now_ms() / 1000 - 2.0)
    assert owned, "no beat fired anything in the last 2 s"
    return beats, victim, owned, next(f.node for f in victim.fired())


def test_a_killed_beats_entries_move_in_about_a_heartbeat_not_the_ttl(cluster: Cluster) -> None:
    beats, victim, owned, victim_node = start(cluster)
    killed_s = victim.kill()
    survivors = [b for b in beats if b is not victim]
    cluster.wait_ticks(2, after_ms=int(killed_s * 1000) + 1000, entries=owned, timeout=TTL_S)
    cluster.assert_alive(*survivors)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    latency = {}
    for entry in owned:
        first = first_after(pub, entry, killed_s, not_by=victim_node)
        assert first is not None, f"{entry} never fired on a survivor after the SIGKILL"
        latency[entry] = round(first - killed_s, 3)
    print(f"failover after SIGKILL with crash detection (s): {latency}")
    # about one heartbeat (0.5 s + 0.1 s, then a survivor's turn): well under TTL / 2
    assert max(latency.values()) < TTL_S / 2, latency
    noticed = [line for b in survivors for line in b.grep("closed its Redis connections")]
    assert noticed and all(victim_node in line for line in noticed), noticed
    assert len(noticed) == 1, noticed  # one survivor decided, once


def test_a_frozen_beats_entries_wait_for_its_ttl(cluster: Cluster) -> None:
    beats, victim, owned, victim_node = start(cluster)
    paused_s = victim.pause()
    try:
        # its last heartbeat was at most one interval before the pause
        cluster.wait_status(victim, None, timeout=TTL_S + 5.0)
        gone_s = now_ms() / 1000
        assert gone_s >= paused_s + TTL_S - HEARTBEAT_S - 0.2, gone_s - paused_s
        # Still frozen: the survivors take its entries within about a heartbeat of its
        # node leaving. (Resumed at once, it may win the claims of its catch-up ticks
        # itself; the claim decides, so that is no double, but it proves no takeover.)
        wait_until(
            lambda: all(
                first_after(cluster.fired(), entry, paused_s, not_by=victim_node) is not None
                for entry in owned
            ),
            timeout=4 * HEARTBEAT_S + 2.0,
            what="the survivors to fire each of the frozen beat's entries",
        )
    finally:
        resumed_s = victim.resume()
    cluster.wait_working(victim, timeout=15)
    wait_until(
        lambda: [f for f in victim.fired() if f.logged_at > resumed_s],
        timeout=15,
        what=f"{victim.name} to fire again after SIGCONT",
    )
    cluster.assert_alive(*beats)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    for entry in owned:
        first = first_after(pub, entry, paused_s, not_by=victim_node)
        assert first is not None, f"{entry} never fired on another beat during the freeze"
        assert first >= paused_s + TTL_S - HEARTBEAT_S - 0.2, (entry, first - paused_s)
    assert not any(b.grep("closed its Redis connections") for b in beats)
