"""Several real ``celery beat -S celery_dcron.DistributedScheduler`` instances, and faults.

Each test runs 3-4 beat processes on its own redis-server (registry and broker), with
1-second interval entries, a node TTL of 3 s and a heartbeat of 0.5 s, then stops them
all and counts what reached the broker: every (entry, tick) at most once with its
deterministic task id (G1), and no tick missing that the guarantees say must be there (G2).
"""

from __future__ import annotations

import itertools
import re

import pytest

from celery_dcron.config import SETTINGS
from celery_dcron.entries import Node, NodeStatus
from celery_dcron.strategies import get_strategy
from tests.e2e.harness import KEYS, Beat, Cluster, Published, busiest, now_ms, wait_until

TTL_S = 3.0
HEARTBEAT_S = 0.5
#: Scheduling noise allowed on top of a bound (two cores shared with other test runs).
SLACK_S = 1.0
CRON = "cron-2s"


def every(n: int) -> list[str]:
    return [f"every-1s-{i}" for i in range(n)]


def step_ms(entry: str) -> int:
    return 2000 if entry == CRON else 1000


def assert_no_missing(pub: Published, entries: list[str]) -> None:
    """G2: every tick between the first and the last one published, published."""
    problems = {}
    for entry in entries:
        assert pub.ticks(entry), f"{entry} never fired"
        missing = pub.missing(entry, step_ms(entry))
        off = pub.off_grid(entry, step_ms(entry))
        if missing or off:
            problems[entry] = f"missing {missing} off-grid {off}; ticks: {pub.describe(entry)}"
    assert not problems, "ticks missing:\n" + "\n".join(f"  {e}: {p}" for e, p in problems.items())


def assignment(cluster: Cluster, node_ids: list[str]) -> dict[str, str]:
    """What the default strategy assigns, computed here from the registry's entry names."""
    names = sorted(cluster.client().hkeys(KEYS.entries))
    virtual = next(s.default for s in SETTINGS if s.name == "dcron_virtual_nodes")
    nodes = [Node(id=n, status=NodeStatus.WORKING) for n in node_ids]
    return dict(get_strategy("consistent_hash", virtual_nodes=virtual).assign(names, nodes))


def owners(
    pub: Published, *, after_s: float, before_s: float = float("inf")
) -> dict[str, set[str]]:
    """entry -> nodes that logged firing it within (after_s, before_s) (epoch seconds)."""
    out: dict[str, set[str]] = {}
    for f in pub.fired:
        if after_s < f.logged_at < before_s:
            out.setdefault(f.entry, set()).add(f.node)
    return out


# -- start-up ----------------------------------------------------------------------------


def test_banner_shows_the_node_id_the_instance_registers(cluster: Cluster) -> None:
    (beat,) = cluster.start(1)
    banner = beat.grep(r"^\s+\. dcron node -> ")
    assert banner, beat.log_tail()
    shown = banner[0].split("-> ", 1)[1].strip()
    if shown.endswith(":<slot>"):  # the default id: its slot is chosen when joining
        shown = shown.removesuffix("<slot>") + (beat.node_id or "").rpartition(":")[2]
    assert shown == beat.node_id, (
        f"the start-up banner names node {shown!r}, the instance registers as {beat.node_id!r} "
        f"({beat.grep('joining namespace')})"
    )


# -- steady state --------------------------------------------------------------------------


def test_steady_state_three_instances_fire_every_tick_once(cluster: Cluster) -> None:
    # 18 entries so that each of 3 random node ids owns some under consistent hashing
    # (P(a node owns none of 19) ~ 0.2 %; of 7 it would be ~ 17 %).
    entries = [*every(18), CRON]
    beats = cluster.start(3, DCRON_E2E_ENTRIES="18", DCRON_E2E_CRON="1")
    working_s = now_ms() / 1000
    cluster.wait_ticks(8, after_ms=int(working_s * 1000), entries=every(18), timeout=30)
    cluster.assert_alive(*beats)
    assert cluster.stop_all() == {b.name: 0 for b in beats}

    pub = cluster.count_published()
    pub.assert_once()
    assert_no_missing(pub, entries)
    assert all(t % 2000 == 0 for t in pub.ticks(CRON)), pub.ticks(CRON)

    node_ids = [b.node_id for b in beats]
    by_node = pub.by_node()
    assert set(by_node) == set(node_ids), f"not every node fired: {dict(by_node)}"
    # Once all three are working, each entry is fired by the node the strategy names.
    want = assignment(cluster, [n for n in node_ids if n])
    seen = owners(pub, after_s=working_s + 1.5)
    wrong = {e: (nodes, want.get(e)) for e, nodes in seen.items() if nodes != {want.get(e)}}
    assert not wrong, f"entries fired by another node than their owner: {wrong}"


# -- crash: SIGKILL ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["once", "all"])
def test_sigkill_entries_resume_on_the_others(cluster: Cluster, policy: str) -> None:
    entries = every(6)
    beats = cluster.start(3, DCRON_E2E_POLICY=policy)
    cluster.wait_ticks(3, after_ms=now_ms(), entries=entries, timeout=20)
    victim, owned = busiest(cluster.fired(), beats, since=now_ms() / 1000 - 2.0)
    assert owned, "no beat fired anything in the last 2 s"
    killed_s = victim.kill()
    survivors = [b for b in beats if b is not victim]
    takeover_ms = int((killed_s + TTL_S + HEARTBEAT_S) * 1000)
    cluster.wait_ticks(3, after_ms=takeover_ms, entries=entries, timeout=25)
    cluster.assert_alive(*survivors)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    # G3: the victim's entries fire again on the others within the TTL (the survivors
    # heartbeat at its expiry), plus slack for a loaded machine.
    late, latency = {}, {}
    for entry in owned:
        first = min(
            (f.logged_at for f in pub.fired if f.entry == entry and f.logged_at > killed_s),
            default=None,
        )
        assert first is not None, f"{entry} never fired after the SIGKILL"
        latency[entry] = round(first - killed_s, 3)
        if first - killed_s > TTL_S + SLACK_S:
            late[entry] = latency[entry]
    print(f"failover after SIGKILL of {victim.name} (s): {latency}")
    assert not late, f"failover slower than TTL {TTL_S}s + slack {SLACK_S}s: {late}"
    for entry in entries:
        assert pub.max_gap(entry) <= (TTL_S + 2.0) * 1000, f"{entry}: {pub.describe(entry)}"
    if policy == "all":
        assert_no_missing(pub, entries)
    else:
        # `once`: the missed ticks of each entry coalesce into one catch-up run, which
        # the new owner logs in its catch-up summary line ("dcron: catch-up of K entries:
        # ... | <entry> missed N ticks; policy once fires 1 (up to tick=T) | ...").
        for entry in entries:
            ticks = pub.ticks(entry)
            holes = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != 1000]
            assert len(holes) <= 1, f"{entry}: more than one catch-up: {pub.describe(entry)}"
            for a, b in holes:
                # the ticks in the hole and the one fired late (b): all came due unfired
                missed = (b - a) // 1000
                node = pub.node_of(entry, b)
                beat = cluster.beat_of_node(node or "")
                assert beat is not None, f"{entry} tick {b}: no beat logged firing it"
                pattern = (
                    rf"dcron: catch-up of .*[:|] {re.escape(entry)} missed {missed} ticks; "
                    r"policy once fires 1"
                )
                assert beat.grep(pattern), (
                    f"{entry}: gap {a}->{b} ({missed} missed) not logged by {beat.name} "
                    f"as a coalesced catch-up; ticks: {pub.describe(entry)}"
                )


# -- freeze: SIGSTOP -----------------------------------------------------------------------


def test_sigstop_longer_than_ttl_then_sigcont_no_duplicates(cluster: Cluster) -> None:
    entries = every(6)
    beats = cluster.start(3, DCRON_E2E_POLICY="all")
    cluster.wait_ticks(2, after_ms=now_ms(), entries=entries, timeout=20)
    victim, owned = busiest(cluster.fired(), beats, since=now_ms() / 1000 - 1.5)
    paused_s = victim.pause()
    # The others expire it from the registry, then fire its entries.
    cluster.wait_status(victim, None, timeout=TTL_S + 2 * HEARTBEAT_S + 5.0)
    cluster.wait_ticks(2, after_ms=int((paused_s + TTL_S) * 1000), entries=owned, timeout=15)
    resumed_s = victim.resume()
    # It rejoins (same node id, working again) and fires again.
    cluster.wait_working(victim, timeout=15)
    wait_until(
        lambda: [f for f in victim.fired() if f.logged_at > resumed_s],
        timeout=15,
        what=f"{victim.name} to fire again after SIGCONT",
    )
    cluster.wait_ticks(3, after_ms=int(resumed_s * 1000), entries=entries, timeout=20)
    cluster.assert_alive(*beats)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    assert_no_missing(pub, entries)


# -- graceful stop: SIGTERM ----------------------------------------------------------------


def test_sigterm_hands_over_without_gap(cluster: Cluster) -> None:
    entries = every(6)
    beats = cluster.start(3)
    cluster.wait_ticks(3, after_ms=now_ms(), entries=entries, timeout=20)
    victim, owned = busiest(cluster.fired(), beats, since=now_ms() / 1000 - 2.0)
    term_s = now_ms() / 1000
    assert victim.terminate() == 0
    assert victim.grep(r"dcron: node \S+ status working -> leaving"), victim.log_tail()
    assert victim.grep(r"dcron: node \S+ left the cluster"), victim.log_tail()
    assert cluster.node_of(victim) is None, cluster.statuses()
    cluster.wait_ticks(3, after_ms=int(term_s * 1000), entries=owned, timeout=15)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    for entry in owned:
        assert pub.max_gap(entry) <= 1500, f"{entry}: {pub.describe(entry)}"
        # Handed over at once: the new owner fires the next ticks on time.
        late = [
            (f.tick_ms, round(f.logged_at - f.tick_ms / 1000, 3))
            for f in pub.fired
            if f.entry == entry and f.logged_at > term_s and f.logged_at - f.tick_ms / 1000 > 1.5
        ]
        assert not late, f"{entry} fired late after the handover: {late}"
    assert_no_missing(pub, entries)


# -- restart and join ----------------------------------------------------------------------


def test_a_large_static_schedule_is_written_in_pages_while_the_others_fire(
    cluster: Cluster,
) -> None:
    """A beat_schedule of 2,506+ entries is written in pages (1,000 a script call, a page
    per pass of the loop); a beat restarted with 1,000 of them gone from its schedule
    removes them (scanned, then dropped a page at a time). Meanwhile the 1 s entries
    fire: each tick once, none missing (G1, G2, G8)."""
    entries = every(6)
    env = {"DCRON_E2E_POLICY": "all", "DCRON_E2E_IDLE_STATIC": "2500"}
    beats = cluster.start(2, **env)
    client = cluster.client()
    static = client.hlen(KEYS.static)  # (and Celery's own celery.backend_cleanup)
    assert static >= 2506
    cluster.wait_ticks(2, after_ms=now_ms(), entries=entries, timeout=20)
    restarted = cluster.restart(beats[1], DCRON_E2E_IDLE_STATIC="1500")
    assert client.hlen(KEYS.static) == client.hlen(KEYS.entries) == static - 1000
    assert not client.hexists(KEYS.static, "idle-static-01500")
    assert restarted.grep(r"static schedule synced, 1000 entries changed")
    cluster.wait_ticks(3, after_ms=now_ms(), entries=entries, timeout=20)
    cluster.assert_alive(beats[0], restarted)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    assert_no_missing(pub, entries)


def test_restart_and_join_rebalance_without_duplicates_or_misses(cluster: Cluster) -> None:
    # 24 entries so that a 4th random node id owns some (P(none) ~ 0.1 %).
    entries = every(24)
    env = {"DCRON_E2E_POLICY": "all", "DCRON_E2E_ENTRIES": "24"}
    beats = cluster.start(3, **env)
    cluster.wait_ticks(2, after_ms=now_ms(), entries=entries, timeout=20)

    restarted = cluster.restart(beats[1])
    # the killed generation expires: three working nodes again
    wait_until(
        lambda: sorted(cluster.statuses().values()) == ["working"] * 3,
        timeout=TTL_S + 10,
        what="three working nodes after the restart",
        on_timeout=lambda: str(cluster.statuses()),
    )
    stable_s = now_ms() / 1000
    cluster.wait_ticks(2, after_ms=int((stable_s + 1) * 1000), entries=entries, timeout=20)
    spawn_s = now_ms() / 1000
    joiner = cluster.start(1, **env)[0]
    joined_s = now_ms() / 1000
    cluster.wait_ticks(4, after_ms=int(joined_s * 1000), entries=entries, timeout=20)
    live: list[Beat] = [beats[0], restarted, beats[2], joiner]
    cluster.assert_alive(*live)
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    assert_no_missing(pub, entries)
    assert pub.entries_by_node().get(joiner.node_id or ""), (
        f"the joiner fired nothing: {pub.by_node()}"
    )
    assert pub.entries_by_node().get(restarted.node_id or ""), (
        "the restarted instance fired nothing"
    )
    # G4: a join moves only the entries the joiner now owns.
    before = owners(pub, after_s=stable_s + 1.0, before_s=spawn_s)
    after = owners(pub, after_s=joined_s + 1.5)
    moved = {e for e in entries if before.get(e) != after.get(e)}
    assert all(after.get(e) == {joiner.node_id} for e in moved), (before, after)
    assert moved, "nothing moved to the joiner"
