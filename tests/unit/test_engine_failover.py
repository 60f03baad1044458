"""Failover on the in-memory registry: engines that crash, stop or wake up stale (G1, G3).

Engines share one :class:`~celery_dcron.registry.memory.MemoryRegistry` and one manual
clock (tests/enginekit.py); an engine that crashed or froze is one the test stops
stepping: no heartbeat, no leave. Node TTL 3 s, entries every second.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

import pytest

from celery_dcron.engine import Engine, dispatch, loading
from celery_dcron.entries import MisfirePolicy, Tick
from celery_dcron.ticks import task_id
from tests.enginekit import (
    MemoryCluster,
    S,
    assert_each_tick_once,
    decisions,
    dynamic,
    entries,
    ticks_of,
)

N = 12
NAMES = frozenset(f"e{i}" for i in range(N))


def _running(nodes: int, **settings: object) -> tuple[MemoryCluster, list[Engine]]:
    """``nodes`` engines sharing ``N`` entries, all firing for 2 s."""
    c = MemoryCluster()
    engines = [c.add(f"n{i}", entries(N), **settings) for i in range(nodes)]
    c.step_all(3)
    c.align()
    c.advance(2 * S, step_ms=250)
    assert all(e.owned for e in engines)
    return c, engines


def _on_the_grid(c: MemoryCluster, names: Iterable[str]) -> None:
    """Each entry of ``names`` fired every tick: not one missed."""
    for name in names:
        ts = ticks_of(c.recorder, name)
        assert all(y - x == S for x, y in pairwise(ts)), (name, ts)


@pytest.mark.parametrize("nodes", [2, 3])
def test_a_crashed_engines_entries_are_fired_by_the_others_after_the_node_ttl(
    caplog: pytest.LogCaptureFixture, nodes: int
) -> None:
    c, (dead, *others) = _running(nodes)
    orphans = dead.owned
    c.engines.remove(dead)  # crashed: its last heartbeat was at this instant
    died_at = c.clock.now_ms()
    last = {name: ticks_of(c.recorder, name)[-1] for name in orphans}
    c.advance(c.ttl_ms - 250, step_ms=250)
    # within the TTL the others take it for alive: its entries wait
    assert all(ticks_of(c.recorder, name)[-1] == last[name] for name in orphans)
    assert not any(orphans & e.owned for e in others)
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        c.advance(250)  # its heartbeat expires now: the others take its entries at once
    expiry = died_at + c.ttl_ms
    assert set().union(*(e.owned for e in others)) == NAMES
    survivors = {e.node_id for e in others}
    caught = {d["entry"]: d for d in decisions(caplog, "catch_up_entry")}
    assert set(caught) == orphans
    for name in orphans:
        # policy once: the ticks missed meanwhile coalesce into one run, of the latest
        latest = ticks_of(c.recorder, name)[-1]
        assert expiry - S < latest <= expiry and (latest - last[name]) % S == 0
        d = caught[name]
        assert (d["policy"], d["fired"], d["tick_ms"]) == ("once", 1, latest)
        assert d["missed"] == (latest - last[name]) // S >= c.ttl_ms // S
        assert d["node"] in survivors
    c.advance(3 * S, step_ms=250)
    assert_each_tick_once(c.recorder)
    assert {n for *_, n in c.recorder.sent} == survivors | {dead.node_id}
    _on_the_grid(c, NAMES - orphans)  # the survivors' own entries never missed a tick
    for name in orphans:  # and the orphans go on, on their grid, after the catch-up
        ts = [t for t in ticks_of(c.recorder, name) if t > died_at + S]
        assert len(ts) >= 3 and all(y - x == S for x, y in pairwise(ts)), (name, ts)


def test_under_policy_all_the_others_fire_each_tick_a_crashed_engine_missed() -> None:
    c, (dead, _) = _running(2, misfire_policy=MisfirePolicy.ALL)
    c.engines.remove(dead)
    c.advance(c.ttl_ms + 2 * S, step_ms=250)
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, NAMES)  # no tick lost: each missed one fired late, once
    assert {n for name, _, _, n in c.recorder.sent if name in dead.owned} == {"n0", "n1"}


def test_a_graceful_stop_hands_over_at_once(caplog: pytest.LogCaptureFixture) -> None:
    c, (leaving, *others) = _running(3)
    handed = leaving.owned
    leaving.stop()  # status leaving, then deregistered: no TTL to wait for
    stopped_at = c.clock.now_ms()
    c.step_all()
    assert set().union(*(e.owned for e in others)) == NAMES
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        c.advance(3 * S, step_ms=250)
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, NAMES)  # not one tick missed
    assert decisions(caplog, "catch_up") == []
    after = {n for name, t, _, n in c.recorder.sent if name in handed and t > stopped_at}
    assert after and after <= {e.node_id for e in others}


def test_a_stale_engine_that_wakes_up_does_not_double_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owner freezes (SIGSTOP, a VM pause) past the TTL; the other takes over and fires
    its entries. On waking, the stale one runs a pass with its old view and old states
    before any heartbeat: the claims refuse every tick already fired."""
    c, (stale, other) = _running(2, misfire_policy=MisfirePolicy.ALL)
    mine = stale.owned
    c.engines.remove(stale)
    c.advance(c.ttl_ms + 2 * S, step_ms=250)
    assert other.owned == NAMES
    before = len(c.recorder.sent)
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        assert stale.run_pass(c.clock.now_ms()) == 0  # its view still says it owns them
    assert len(c.recorder.sent) == before
    lost = decisions(caplog, "claim_lost")
    assert {d["entry"] for d in lost} == mine
    assert {d["node"] for d in lost} == {stale.node_id}
    assert all(d["last_tick_ms"] >= d["tick_ms"] for d in lost)
    # it rejoins: the entries are split again, and each tick still goes out once
    c.engines.append(stale)
    c.advance(3 * S, step_ms=250)
    assert stale.owned == mine
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, NAMES)


def test_a_crashed_engines_unsent_claim_goes_out_before_its_many_entries_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entries of a dead node are read in pages for seconds (a large reassignment):
    its claims that were never sent go out as soon as it is taken for dead, not once its
    entries are read (nor ten seconds later, at the next look at unsent claims)."""
    for page, size in (("LOAD_PAGE", 20), ("STATE_PAGE", 50), ("HINT_PAGE", 50)):
        monkeypatch.setattr(loading, page, size)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    c.registry.put_entries(dynamic(600))
    dead, other = c.add("n0", []), c.add("n1", [])
    c.advance(3 * S, step_ms=100)  # each reads its share, a page a pass
    while dead.jobs.busy or other.jobs.busy:
        c.advance(100, step_ms=100)
    name = max(dead.owned)
    tick = c.clock.now_ms() + 200
    c.clock.set(tick)
    (claim,) = c.registry.claim(
        [Tick(name=name, tick_ms=tick)], node_id=dead.node_id, lock_ttl_ms=30 * S
    )
    assert claim.won
    c.engines.remove(dead)  # it dies before publishing it
    sent = (name, tick, task_id("default", name, tick), other.node_id)
    while sent not in c.recorder.sent:
        c.advance(100, step_ms=100)
        assert c.clock.now_ms() < tick + c.ttl_ms + 5 * S
    assert other.jobs.busy and name not in other.owned  # still reading them
    assert c.registry.pending() == []
    while other.jobs.busy:
        c.advance(100, step_ms=100)
    assert name in other.owned
    assert_each_tick_once(c.recorder)


def test_a_crashed_engines_unsent_claim_is_published_by_the_next_owner_with_its_id() -> None:
    c, (dead, other) = _running(2)
    name = min(dead.owned)
    tick = ticks_of(c.recorder, name)[-1] + S
    c.clock.set(tick)
    # the owner claims its next tick, then dies before publishing it
    (claim,) = c.registry.claim(
        [Tick(name=name, tick_ms=tick)], node_id=dead.node_id, lock_ttl_ms=30 * S
    )
    assert claim.won
    c.engines.remove(dead)
    c.advance(c.ttl_ms, step_ms=250)
    assert (name, tick, task_id("default", name, tick), other.node_id) in c.recorder.sent
    assert c.registry.pending() == []
    assert_each_tick_once(c.recorder)


class _Stall:
    """A process frozen past the node TTL, once: the cluster clock and the monotonic
    clock jump by TTL + 1 s; meanwhile only ``runner`` runs (its loop, with its run-now
    requests due) and the ``alive`` nodes only heartbeat."""

    def __init__(self, c: MemoryCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.c = c
        self.skew_s = 0.0
        real = time.monotonic
        monkeypatch.setattr(time, "monotonic", lambda: real() + self.skew_s)

    @property
    def happened(self) -> bool:
        return self.skew_s > 0

    def now(self, runner: Engine, alive: Iterable[Engine] = ()) -> None:
        ms = self.c.ttl_ms + 1000
        self.skew_s = ms / 1000
        for _ in range(2):
            self.c.clock.advance(ms // 2)
            for node in alive:
                self.c.registry.heartbeat(node.membership.node, ttl_ms=self.c.ttl_ms)
        for _ in range(3):
            runner._next_beat = runner._next_recover = 0.0
            runner.requests.due = True
            runner.step()


def test_a_run_now_taken_over_while_its_taker_stalled_is_published_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With a broker apart from the registry (publish, then forget the request): the
    owner takes a run-now request and stalls past the node TTL before publishing it; the
    other takes it over (its holder is dead) and publishes it. The stalled one checks the
    request again before publishing, as it checks its claims, and sends nothing."""
    c = MemoryCluster()
    a, b = c.add("a", entries(1, every_s=3600)), c.add("b", entries(1, every_s=3600))
    c.step_all(2)
    owner, other = (a, b) if "e0" in a.view.owned else (b, a)
    real_take, stall = c.registry.take_requests, _Stall(c, monkeypatch)

    def take(requests: Any, *, node_id: str) -> list[bool]:
        result = real_take(requests, node_id=node_id)
        if node_id == owner.node_id and any(result) and not stall.happened:
            stall.now(runner=other)  # just after taking it
        return result

    monkeypatch.setattr(c.registry, "take_requests", take)
    at = c.registry.run_now("e0")
    owner.requests.due = True
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        owner.step()
    assert stall.happened and "e0" in other.view.owned
    runs = [row for row in c.recorder.sent if row[:2] == ("e0", at)]
    assert [row[3] for row in runs] == [other.node_id]
    assert c.registry.requests() == []
    assert "no longer held by this node; not sent" in caplog.text


def test_after_a_stall_every_request_left_is_checked_not_only_the_first(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Three nodes; the taker of several run-now requests stalls past the TTL, and only
    one of the others runs meanwhile: it takes over and sends the requests of the entries
    that moved to it, while those that moved to the third stay the taker's. Awake, the
    taker checks them all: it sends its own, and none of the ones already sent."""
    c = MemoryCluster()
    specs = entries(24, every_s=3600)
    a, b, d = (c.add(n, specs) for n in ("a", "b", "d"))
    c.step_all(2)
    mine = sorted(a.view.owned)
    assert len(mine) >= 2
    real_take, stall = c.registry.take_requests, _Stall(c, monkeypatch)

    def take(requests: Any, *, node_id: str) -> list[bool]:
        result = real_take(requests, node_id=node_id)
        if node_id == "a" and any(result) and not stall.happened:
            stall.now(runner=d, alive=[b])  # b is alive, its turn not come
        return result

    monkeypatch.setattr(c.registry, "take_requests", take)
    asked = {name: c.registry.run_now(name) for name in mine}
    a.requests.due = True
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        a.step()
    sent_by: dict[str, list[str]] = {name: [] for name in mine}
    for name, tick, _task_id, node in c.recorder.sent:
        if asked.get(name) == tick:
            sent_by[name].append(node)
    assert all(len(nodes) == 1 for nodes in sent_by.values()), sent_by  # each sent once
    assert {nodes[0] for nodes in sent_by.values()} == {"a", "d"}  # both kinds happened
    assert c.registry.requests() == []


def test_a_request_sent_while_its_deletion_fails_is_not_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Publish path: the request is published, then Redis does not answer its deletion;
    the next run deletes it first and does not publish it again."""
    from celery_dcron.exceptions import RegistryUnavailableError

    c = MemoryCluster()
    (e,) = [c.add("a", entries(1, every_s=3600))]
    c.step_all(2)
    real_done = c.registry.done_requests
    failures = [RegistryUnavailableError("connection reset")]

    def done(requests: Any) -> None:
        if failures and requests:
            raise failures.pop()
        real_done(requests)

    monkeypatch.setattr(c.registry, "done_requests", done)
    at = c.registry.run_now("e0")
    e.requests.due = True
    with pytest.raises(RegistryUnavailableError):
        e.requests.run()
    assert e.requests.due and [r.holder for r in c.registry.requests()] == ["a"]
    e.requests.run()
    assert [row[:2] for row in c.recorder.sent if row[0] == "e0"] == [("e0", at)]
    assert c.registry.requests() == []


def test_after_a_stall_every_claim_left_is_checked_not_only_the_next_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three nodes; one claims many ticks due together (several publish batches) and
    stalls past the TTL right after, while only one of the others runs: that one takes
    over the claims of the entries that moved to it and publishes them. Awake, the staller
    checks all the claims it has left before publishing any, not only the next batch."""
    monkeypatch.setattr(dispatch, "PUBLISH_BATCH", 2)
    c = MemoryCluster()
    specs = entries(24, every_s=3600)
    a, b, d = (c.add(n, specs) for n in ("a", "b", "d"))
    c.step_all(3)
    c.align()
    c.advance(S, step_ms=250)
    assert len(a.view.owned) >= 4
    real_claim, stall = c.registry.claim, _Stall(c, monkeypatch)
    won: list[tuple[str, int]] = []  # the ticks a claimed just before it stalled

    def claim(ticks: Any, **kw: Any) -> Any:
        result = real_claim(ticks, **kw)
        if kw["node_id"] == "a" and sum(r.won for r in result) >= 4 and not stall.happened:
            won.extend((r.tick.name, r.tick.tick_ms) for r in result if r.won)
            stall.now(runner=d, alive=[b])
        return result

    monkeypatch.setattr(c.registry, "claim", claim)
    c.clock.set(c.clock.now_ms() + 3600 * S)  # every entry due again
    a.step()
    assert stall.happened
    senders: dict[tuple[str, int], list[str]] = {}
    for name, tick, _task_id, node in c.recorder.sent:
        senders.setdefault((name, tick), []).append(node)
    twice = {key: nodes for key, nodes in senders.items() if len(nodes) > 1}
    assert not twice
    # each of a's claims went out once: by d (taken over) or by a (still its own)
    assert {senders[key][0] for key in won} == {"a", "d"}


def test_a_node_superseded_mid_burst_stops_publishing_at_its_keepalive_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long burst heartbeats between publish batches; when that heartbeat finds that a
    new incarnation took this node id over (it sends these claims as its own), the burst
    stops there. Here the burst is slow, not stalled: no more than the keepalive interval
    passes, so only the keepalive heartbeat can tell."""
    monkeypatch.setattr(dispatch, "PUBLISH_BATCH", 2)
    c = MemoryCluster()
    a = c.add("a", entries(8, every_s=3600))
    c.step_all(3)
    c.align()
    c.advance(S, step_ms=250)
    skew = {"s": 0.0}
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + skew["s"])
    publish, before = a.dispatcher.publish, len(c.recorder.sent)

    def slow(spec: Any, tick: Tick, tid: str) -> None:
        publish(spec, tick, tid)
        if len(c.recorder.sent) == before + 1:  # the first of the burst: taken over now
            node = a.membership.node
            new = dataclasses.replace(node, token="new-incarnation")
            assert c.registry.join(new, c.ttl_ms, dead_token=node.token).won
            skew["s"] += a.settings.heartbeat_interval_s + 0.05  # < node TTL / 2

    monkeypatch.setattr(a.dispatcher, "publish", slow)
    c.clock.set(c.clock.now_ms() + 3600 * S)  # all 8 due together
    a.step()
    assert a.membership.superseded
    assert len(c.recorder.sent) - before == 2  # the first batch, not the 6 after it
