"""Crash detection on the in-memory registry (G3): a peer whose process closed its Redis
connections (no subscriber on its node channel) and missed its heartbeat is dropped in
about one heartbeat; a frozen one (still subscribed) waits for its TTL.

Engines have an event listener (not started: the test plays its part): each holds its
node channel in the registry's ``connected`` set, and a crash is the test dropping an
engine from the steps and its id from that set. Node TTL 3 s, heartbeats every 1 s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from celery_dcron.crashes import GRACE_MS
from celery_dcron.engine import Engine
from tests.enginekit import MemoryCluster, S, assert_each_tick_once, decisions, entries

N = 12
NAMES = frozenset(f"e{i}" for i in range(N))
INTERVAL_MS = 1000


def _running(
    nodes: int, *, numsub_refused: bool = False, **settings: object
) -> tuple[MemoryCluster, list[Engine]]:
    c = MemoryCluster()
    c.registry.numsub_refused = numsub_refused
    engines = [
        c.add(f"n{i}", entries(N), engine_kw={"listen": True}, **settings) for i in range(nodes)
    ]
    for e in engines:
        assert e.listener is not None
        e.listener.watching_since = 0.0  # its node channel is held, as a running listener's
        c.registry.connected.add(e.node_id)
    c.step_all(3)
    c.align()
    c.advance(2 * S, step_ms=100)
    assert all(e.owned for e in engines)
    return c, engines


def _taken_at(c: MemoryCluster, others: list[Engine], orphans: set[str], until_ms: int) -> int:
    """Step until the others own ``orphans``; the clock then (ms), or fail at ``until_ms``."""
    while c.clock.now_ms() < until_ms:
        c.advance(50, step_ms=50)
        if orphans <= set().union(*(e.owned for e in others)):
            return c.clock.now_ms()
    pytest.fail("the crashed node's entries did not move")


@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("victim", [0, -1])  # the janitor (lowest id) too
def test_a_crashed_peer_is_dropped_after_about_one_heartbeat(
    caplog: pytest.LogCaptureFixture, nodes: int, victim: int
) -> None:
    c, engines = _running(nodes)
    dead = engines[victim]
    others = [e for e in engines if e is not dead]
    orphans = set(dead.owned)
    last_beat = c.clock.now_ms()  # it heartbeat at the last step
    c.engines.remove(dead)
    c.registry.connected.discard(dead.node_id)  # its process died: Redis dropped it
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        taken = _taken_at(c, others, orphans, last_beat + c.ttl_ms)
    # overdue at one interval + grace; then the next turn of a survivor once it is half an
    # interval late (a turn that finds it younger skips it: the next is at most two later)
    assert last_beat + INTERVAL_MS + GRACE_MS < taken <= last_beat + 5 * INTERVAL_MS // 2 + 200
    crashed = decisions(caplog, "node_crashed")
    assert [d["crashed"] for d in crashed] == [dead.node_id]
    assert crashed[0]["node"] in {e.node_id for e in others}
    c.advance(3 * S, step_ms=100)
    assert_each_tick_once(c.recorder)


def test_a_peer_without_a_subscriber_that_still_heartbeats_is_kept() -> None:
    """Its listener is only reconnecting: not overdue, not dropped."""
    c, engines = _running(3)
    c.registry.connected.discard(engines[1].node_id)
    before = {e.node_id: set(e.owned) for e in engines}
    c.advance(3 * c.ttl_ms, step_ms=100)
    assert {e.node_id: set(e.owned) for e in engines} == before
    assert_each_tick_once(c.recorder)


def test_a_frozen_peer_still_subscribed_waits_for_its_ttl() -> None:
    c, engines = _running(3)
    frozen = engines[1]
    others = [e for e in engines if e is not frozen]
    orphans = set(frozen.owned)
    last_beat = c.clock.now_ms()
    c.engines.remove(frozen)  # SIGSTOP: its connections (and subscription) stay
    taken = _taken_at(c, others, orphans, last_beat + c.ttl_ms + 2 * S)
    assert taken >= last_beat + c.ttl_ms
    c.engines.insert(1, frozen)  # SIGCONT
    c.advance(3 * S, step_ms=100)
    assert_each_tick_once(c.recorder)


def test_checks_are_staggered_about_one_per_interval_for_the_cluster() -> None:
    c, _ = _running(3)
    turns: dict[str, int] = {}
    counted: list[list[str]] = []
    real = c.registry.subscribers

    def counting(node_ids: list[str]) -> dict[str, int]:
        counted.append(list(node_ids))
        return real(node_ids)

    def turning(e: Engine) -> Callable[[int], bool]:
        turn = e.crashes.turn

        def wrapped(now_ms: int) -> bool:
            if mine := turn(now_ms):
                turns[e.node_id] = turns.get(e.node_id, 0) + 1
            return mine

        return wrapped

    for e in c.engines:
        e.crashes._probed = True  # past the first check, which counts every channel
        e.crashes.turn = turning(e)  # type: ignore[method-assign]
    c.registry.subscribers = counting  # type: ignore[method-assign]
    for _ in range(120):  # 12 s, each engine heartbeating every 100 ms
        c.clock.advance(100)
        for e in c.engines:
            e._next_beat = 0.0
            e.step()
    # 12 intervals: about one turn per interval for the cluster, a third each
    assert sum(turns.values()) in range(11, 14), turns
    assert all(count in range(3, 6) for count in turns.values()), turns
    # every peer beat within half an interval of each turn: no channel was counted
    assert counted == []


def test_a_turn_counts_only_the_channels_of_late_peers() -> None:
    c, engines = _running(3)
    for e in engines:
        e.crashes._probed = True
    counted: list[list[str]] = []
    real = c.registry.subscribers

    def counting(node_ids: list[str]) -> dict[str, int]:
        counted.append(list(node_ids))
        return real(node_ids)

    c.registry.subscribers = counting  # type: ignore[method-assign]
    late = engines[1]
    c.engines.remove(late)  # frozen: still subscribed, no more heartbeats
    c.advance(2 * INTERVAL_MS, step_ms=100)
    assert counted and all(ids == [late.node_id] for ids in counted), counted


def test_off_by_setting_and_when_redis_refuses_numsub(caplog: pytest.LogCaptureFixture) -> None:
    _, (a, *_) = _running(3, crash_detection=False)
    assert not a.membership.node.watch_ms and not a.crashes.enabled
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c2, _ = _running(3, numsub_refused=True)  # found out at the first check
    assert not any(e.crashes.enabled for e in c2.engines)
    off = decisions(caplog, "crash_detection_off")
    assert off and all(d["level"] == logging.INFO for d in off)
    assert len(off) == 3  # once per instance


def test_an_instance_without_a_listener_is_left_to_its_ttl() -> None:
    c = MemoryCluster()
    alone = c.add("n0", entries(N))  # listen=False: holds no node channel
    watched = [c.add(f"n{i}", entries(N), engine_kw={"listen": True}) for i in (1, 2)]
    for e in watched:
        c.registry.connected.add(e.node_id)
    c.step_all(3)
    assert alone.membership.node.watch_ms == 0
    assert all(e.membership.node.watch_ms == INTERVAL_MS for e in watched)
    orphans = set(alone.owned)
    last_beat = c.clock.now_ms()
    c.engines.remove(alone)
    taken = _taken_at(c, watched, orphans, last_beat + c.ttl_ms + 2 * S)
    assert taken >= last_beat + c.ttl_ms


def test_a_publish_after_the_node_channel_lapsed_checks_the_claim_first() -> None:
    """G1: the others may have taken this node for crashed while its channel was not held
    (between its claim and its publish): it publishes only the claims still its own."""
    c, engines = _running(2)
    e = engines[0]
    assert e.listener is not None
    checks = []
    real = e.dispatcher._still_ours

    def still_ours(ticks):  # type: ignore[no-untyped-def]
        checks.append(len(ticks))
        return real(ticks)

    e.dispatcher._still_ours = still_ours  # type: ignore[method-assign]
    c.advance(2 * S, step_ms=100)
    assert not checks  # held all along: no check
    e.listener.watching_since = None  # the subscription lapsed
    c.advance(2 * S, step_ms=100)
    assert checks
    checks.clear()
    e.listener.watching_since = 10**12  # held again, since after the claims below
    c.advance(S, step_ms=100)
    assert checks
    assert_each_tick_once(c.recorder)


def test_after_a_redis_outage_a_peer_slow_to_reconnect_is_left_to_its_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failover or restart of Redis stops every heartbeat and drops every subscription:
    a peer that reconnects later than the others (within its TTL) is not taken for
    crashed, and no tick is sent twice."""
    c, engines = _running(3)
    slow = engines[1]
    before = {e.node_id: set(e.owned) for e in engines}
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.registry.available = False
        c.advance(1500, step_ms=100)  # every engine fails its heartbeats
        c.registry.available = True
        c.engines.remove(slow)  # still reconnecting: no heartbeat, no subscription
        c.registry.connected.discard(slow.node_id)
        c.advance(c.ttl_ms - 1500 - 300, step_ms=100)
        assert not decisions(caplog, "node_crashed")
        c.engines.insert(1, slow)
        c.registry.connected.add(slow.node_id)
        c.advance(3 * S, step_ms=100)
    assert not decisions(caplog, "node_crashed")
    assert {e.node_id: set(e.owned) for e in engines} == before
    assert_each_tick_once(c.recorder)
