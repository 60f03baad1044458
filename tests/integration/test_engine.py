"""The engine against a real redis-server, with the cluster clock injected.

Due-ness is driven by a :class:`ManualClock`; node liveness uses Redis server time,
so the few waits here are for a node TTL to pass on the server (bounded, short).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest

from celery_dcron import engine as engine_module
from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec, MisfirePolicy, Node, NodeStatus, Tick
from celery_dcron.enums import EntrySource
from celery_dcron.registry import Registry
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.ticks import task_id
from tests import enginekit
from tests.enginekit import (
    Recorder,
    S,
    assert_each_tick_once,
    decisions,
    entries,
    ticks_of,
)
from tests.servers import RedisServer


class Cluster(enginekit.Cluster):
    """Engines on a real redis-server (each its own client), short timings."""

    def __init__(self, url: str, clock: ManualClock, recorder: Recorder) -> None:
        super().__init__(clock, recorder)
        self.url = url
        self.base_settings = {
            "redis_url": url,
            "heartbeat_interval_s": 0.1,
            "node_ttl_s": 0.5,
            "socket_timeout_s": 0.3,
        }

    def registry_for(self, settings: Settings) -> Registry:
        return Registry.from_settings(settings)


def _server_ms(url: str) -> int:
    import redis

    sec, usec = redis.Redis.from_url(url).time()
    return int(sec * 1000 + usec // 1000)


def test_three_engines_share_entries_and_fire_each_tick_once(cluster: Cluster) -> None:
    for i in range(3):
        cluster.add(f"n{i}", entries(12))
    cluster.step_all(3)
    cluster.align()
    assert all(e.membership.status is NodeStatus.WORKING for e in cluster.engines)
    owned = [e.owned for e in cluster.engines]
    assert sum(len(o) for o in owned) == 12 and set().union(*owned) == {f"e{i}" for i in range(12)}
    cluster.advance(5 * S)
    assert_each_tick_once(cluster.recorder)
    for i in range(12):
        ts = ticks_of(cluster.recorder, f"e{i}")
        assert len(ts) == 5 and all(b - a == S for a, b in pairwise(ts))
    assert {node for *_, node in cluster.recorder.sent} == {"n0", "n1", "n2"}


def test_graceful_stop_hands_over_without_a_gap(cluster: Cluster) -> None:
    a = cluster.add("a", entries(6))
    cluster.add("b", entries(6))
    cluster.step_all(3)
    cluster.align()
    cluster.advance(2 * S)
    a.stop()
    cluster.advance(3 * S)
    assert_each_tick_once(cluster.recorder)
    for i in range(6):
        ts = ticks_of(cluster.recorder, f"e{i}")
        assert all(b - a == S for a, b in pairwise(ts)), ts


@pytest.mark.parametrize(
    ("policy", "expected_catchup"),
    [(MisfirePolicy.ALL, 3), (MisfirePolicy.ONCE, 1), (MisfirePolicy.SKIP, 0)],
)
def test_dead_owner_entries_are_caught_up_by_policy(
    cluster: Cluster, policy: MisfirePolicy, expected_catchup: int
) -> None:
    a = cluster.add("a", entries(1, every_s=2), misfire_policy=policy)
    b = cluster.add("b", entries(1, every_s=2), misfire_policy=policy)
    cluster.step_all(3)
    cluster.align()
    owner, other = (a, b) if a.owned else (b, a)
    cluster.advance(4 * S)
    last = ticks_of(cluster.recorder, "e0")[-1]
    before = len(ticks_of(cluster.recorder, "e0"))
    # the owner dies silently: it stops stepping (no heartbeat, no leave)
    owner.stopped = True
    # three ticks are missed; the latest is 1.5 s old when the new owner takes over
    cluster.clock.set(last + 3 * 2 * S + 1500)
    time.sleep(0.6)  # the owner's heartbeat expires on the Redis server
    other._next_beat = 0.0
    other.step()
    assert "e0" in other.owned
    caught_up = ticks_of(cluster.recorder, "e0")[before:]
    assert len(caught_up) == expected_catchup
    if policy is MisfirePolicy.ONCE:
        assert caught_up == [last + 6 * S]  # the latest missed tick
    assert_each_tick_once(cluster.recorder)
    # and it goes on firing on the grid afterwards
    cluster.advance(3 * S)
    assert ticks_of(cluster.recorder, "e0")[-1] == last + 10 * S


def test_the_next_heartbeat_comes_at_a_silent_peers_expiry(cluster: Cluster) -> None:
    """G3: a survivor heartbeats when a dead peer's heartbeat expires (server time), not up
    to one heartbeat interval later, so the peer's entries move within the node TTL."""
    conf = {"heartbeat_interval_s": 1.0, "node_ttl_s": 3.0}
    a = cluster.add("a", entries(2), **conf)
    b = cluster.add("b", entries(2), **conf)
    cluster.clock.set(_server_ms(cluster.url))
    cluster.step_all(2)
    assert a._next_beat_in_s() == 1.0  # b heartbeats: its expiry lies a TTL ahead
    b.stopped = True  # b dies silently: its expiry no longer moves
    a._next_beat = 0.0
    a.step()
    expiry = a._peer_expiry_ms
    assert expiry is not None and expiry > cluster.clock.now_ms()
    cluster.clock.set(expiry - 400)
    assert a._next_beat_in_s() == pytest.approx(0.42, abs=0.005)
    cluster.clock.set(expiry + 50)  # the expiry passed: heartbeat at once (+ margin)
    assert a._next_beat_in_s() == pytest.approx(0.02, abs=0.005)
    # Alone in the registry (the others expired or left): the plain interval.
    a.registry.leave("b")
    a._next_beat = 0.0
    a.step()
    assert a._peer_expiry_ms is None
    assert a._next_beat_in_s() == 1.0


def test_grace_window_drops_a_too_old_missed_tick(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    e = cluster.add("a", entries(1, every_s=10), misfire_grace_s=2.0)
    cluster.step_all(2)
    cluster.align()
    cluster.clock.advance(10 * S + 5 * S)  # the first tick is 5 s old: past the 2 s grace
    with caplog.at_level(logging.WARNING, logger="celery_dcron"):
        e.step()
    assert cluster.recorder.sent == []
    (catch_up,) = decisions(caplog, "catch_up")
    assert (catch_up["missed"], catch_up["fired"], catch_up["dropped"]) == (1, 0, 1)
    cluster.clock.advance(5 * S)
    e.step()
    assert len(cluster.recorder.sent) == 1  # the next tick fires on time


def test_failed_publish_is_retried_with_the_same_id(cluster: Cluster) -> None:
    errors: list[tuple[str, int]] = []
    e = cluster.add("a", entries(1))
    e.on_publish_error = lambda spec, tick, exc: errors.append((spec.name, tick.tick_ms))
    cluster.step_all(2)
    cluster.align()
    cluster.recorder.fail = True
    cluster.clock.advance(S)
    e.step()
    assert cluster.recorder.sent == [] and len(errors) == 1
    cluster.recorder.fail = False
    e._next_recover = 0.0
    e.step()
    assert [(n, t) for n, t, _, _ in cluster.recorder.sent] == errors
    assert e.registry.pending() == []


def test_a_dead_nodes_unsent_claim_is_republished_with_its_id(cluster: Cluster) -> None:
    a = cluster.add("a", entries(1))
    b = cluster.add("b", entries(1))
    cluster.step_all(3)
    owner, other = (a, b) if a.owned else (b, a)
    tick = cluster.clock.now_ms() - 10
    # the owner claims a tick, then dies before publishing it
    assert owner.registry.claim(
        [Tick(name="e0", tick_ms=tick)], node_id=owner.node_id, lock_ttl_ms=30_000
    )[0].won
    owner.stopped = True
    time.sleep(0.6)
    other._next_beat = 0.0
    other.step()
    assert ("e0", tick, task_id("default", "e0", tick), other.node_id) in cluster.recorder.sent
    assert other.registry.pending() == []


def test_a_stalled_claimer_does_not_publish_a_claim_taken_over(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = cluster.add("a", entries(1))
    cluster.step_all(2)
    a.registry.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=60_000)
    tick = Tick(name="e0", tick_ms=cluster.clock.now_ms())
    assert a.registry.claim([tick], node_id="a", lock_ttl_ms=30_000)[0].won
    # another node took the claim over while "a" was stalled past half its TTL
    a.registry.client.hset(
        a.registry.keys.pending, a.registry.keys.pending_field("e0", tick.tick_ms), "b"
    )
    with caplog.at_level(logging.WARNING, logger="celery_dcron"):
        sent = a._publish_all([tick], claimed_at=time.monotonic() - 10)
    assert sent == [] and cluster.recorder.sent == []
    assert [(d["entry"], d["tick_ms"]) for d in decisions(caplog, "taken_over")] == [
        ("e0", tick.tick_ms)
    ]


def test_a_pause_while_redis_runs_the_claim_counts_as_a_stall(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """G1: the owner freezes after Redis ran its claim and before the reply is read (a
    SIGSTOP, a GC pause); meanwhile its TTL runs out and the new owner re-publishes the
    pending claim. On waking, the old owner must check the claim before publishing."""
    a = cluster.add("a", entries(1))
    b = cluster.add("b", entries(1))
    cluster.step_all(3)
    cluster.align()
    owner, other = (a, b) if a.owned else (b, a)
    claim = owner.registry.claim

    def claim_then_freeze(*args: Any, **kwargs: Any) -> Any:
        results = claim(*args, **kwargs)
        time.sleep(0.6)  # frozen past the node TTL (0.5 s) with the reply unread
        other._next_beat = 0.0
        other.step()  # the owner expired: the other takes e0 and its unsent claim
        return results

    owner.registry.claim = claim_then_freeze  # type: ignore[method-assign]
    cluster.clock.advance(S)
    with caplog.at_level(logging.WARNING, logger="celery_dcron"):
        owner.step()
    sent = [(n, t, node) for n, t, _, node in cluster.recorder.sent if t == cluster.clock.now_ms()]
    assert sent == [("e0", cluster.clock.now_ms(), other.node_id)], cluster.recorder.sent
    assert [d["node"] for d in decisions(caplog, "taken_over")] == [owner.node_id]
    assert_each_tick_once(cluster.recorder)


def test_malformed_and_unrunnable_entries_are_skipped_others_run(cluster: Cluster) -> None:
    e = cluster.add("a", entries(2))
    e.check = lambda spec: "unknown task" if spec.name == "e1" else None
    cluster.step_all(2)
    e.registry.client.hset(e.registry.keys.entries, "broken", "{oops")
    e.registry.client.hincrby(e.registry.keys.meta, "entries", 1)
    cluster.advance(3 * S)
    names = {n for n, *_ in cluster.recorder.sent}
    assert names == {"e0"}
    assert e.membership.status is NodeStatus.WORKING


def test_redis_down_publishes_nothing_then_catches_up(redis_server: RedisServer) -> None:
    clock = ManualClock(start_ms=_server_ms(redis_server.url))
    rec = Recorder()
    c = Cluster(redis_server.url, clock, rec)
    e = c.add("a", entries(2), misfire_policy=MisfirePolicy.ALL)
    c.step_all(2)
    c.align()
    c.advance(2 * S)
    sent_before = len(rec.sent)
    redis_server.kill()
    clock.advance(3 * S)
    wait = e.step()
    assert wait > 0 and len(rec.sent) == sent_before  # nothing without Redis
    redis_server.restart()  # data lost
    e._next_beat = 0.0
    e.step()
    e.step()
    assert_each_tick_once(rec)
    # the registry was rebuilt from the static schedule and the last ticks it knew
    assert set(e.registry.entries()[0]) == {"e0", "e1"}
    c.advance(2 * S)
    assert_each_tick_once(rec)
    for name in ("e0", "e1"):
        ts = ticks_of(rec, name)
        assert all(b - a == S for a, b in pairwise(ts)), ts


def test_leaving_node_is_removed_at_once(cluster: Cluster) -> None:
    a = cluster.add("a", entries(4))
    b = cluster.add("b", entries(4))
    cluster.step_all(3)
    assert a.owned and b.owned
    a.stop()
    b._next_beat = 0.0
    b.step()
    assert b.owned == frozenset(f"e{i}" for i in range(4))


def test_signals_tell_of_nodes_and_entries(cluster: Cluster) -> None:
    from celery_dcron import signals

    seen: list[tuple[str, str]] = []
    senders: list[tuple[str, str, str]] = []

    def on(kind: str) -> object:
        def receiver(sender: object, **kw: object) -> None:
            obj = kw.get("node") or kw.get("entry")
            seen.append((kind, obj.id if kind.startswith("node") else obj.name))  # type: ignore[union-attr]
            senders.append((*seen[-1], getattr(sender, "node_id", "")))

        return receiver

    receivers = {
        name: on(name)
        for name in ("node_joined", "node_left", "entry_added", "entry_changed", "entry_removed")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, weak=False)
    try:
        a = cluster.add("a", entries(2))
        cluster.step_all(2)
        b = cluster.add("b", entries(2))
        cluster.step_all(2)
        assert ("node_joined", "b") in seen
        # b restarts with a changed schedule: e0 changed, e1 removed, e2 added
        b.stop()
        changed = [entries(1, every_s=2)[0], entries(3)[2]]
        c = cluster.add("c", changed)
        cluster.step_all(3)
        assert ("node_left", "b") in seen and ("node_joined", "c") in seen
        # An entry added, changed and removed anywhere: its owner, told by the change feed,
        # sends the signal (the other instance reads nothing of it).
        d0 = entries(1)[0].with_changes(name="d0", source=EntrySource.DYNAMIC)
        added = a.registry.put_entry(d0, expected_version=None)
        cluster.step_all(1)
        a.registry.put_entry(
            d0.with_changes(schedule=IntervalSchedule(every_ms=2 * S)),
            expected_version=added.version,
        )
        cluster.step_all(1)
        a.registry.remove_entry("d0", tombstone=False)
        cluster.step_all(1)
        assert [kind for kind, name in seen if name == "d0"] == [
            "entry_added", "entry_changed", "entry_removed",
        ]  # fmt: skip
        owner = next(e for e in (a, c) if e.strategy.owner("d0", e.view.nodes) == e.node_id)
        assert {node for _, name, node in senders if name == "d0"} == {owner.node_id}
        failures: list[str] = []

        def on_fail(
            sender: object, entry: EntrySpec, tick: Tick, exc: BaseException, **kw: object
        ) -> None:
            failures.append(entry.name)

        signals.publish_failed.connect(on_fail, weak=False)
        cluster.recorder.fail = True
        cluster.advance(2500)
        signals.publish_failed.disconnect(on_fail)
        assert failures and set(failures) <= {"e0", "e2"}
        assert (
            a.membership.status is NodeStatus.WORKING and c.membership.status is NodeStatus.WORKING
        )
    finally:
        cluster.recorder.fail = False
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)


# -- throughput: spread anchors, claim ahead, chunked claims, batched publishes -------------


def test_claim_ahead_claims_a_window_at_once_and_publishes_no_tick_before_it(
    cluster: Cluster,
) -> None:
    e = cluster.add("a", entries(50))
    cluster.step_all(2)
    cluster.align()
    e.claim_ahead_ms = 200  # from here on (set before, the setup steps would claim ahead)
    published: list[tuple[str, int, int]] = []  # (entry, tick, cluster time at publish)
    e.publish = lambda spec, tick, tid: published.append(
        (spec.name, tick.tick_ms, cluster.clock.now_ms())
    )
    calls: list[int] = []
    claim = e.registry.claim

    def counted_claim(ticks: list[Tick], **kw: Any) -> Any:
        calls.append(len(ticks))
        return claim(ticks, **kw)

    e.registry.claim = counted_claim  # type: ignore[method-assign]
    start = cluster.clock.now_ms()
    cluster.advance(3 * S, step_ms=50)
    assert all(at >= tick for _, tick, at in published), "a tick was published before its time"
    assert [t for _, t, _ in published] == sorted(t for _, t, _ in published)
    counts = Counter((name, tick) for name, tick, _ in published)
    assert max(counts.values()) == 1
    for i in range(50):
        ts = sorted(t for n, t, _ in published if n == f"e{i}")
        assert len(ts) >= 3 and all(b - a == S for a, b in pairwise(ts)), ts
        assert ts[0] - start <= S  # spread anchors: each entry's first tick within 1 s
    assert len(calls) < len(published) / 3  # a window of ticks per claim round trip


def test_spread_anchors_put_entries_on_distinct_instants(cluster: Cluster) -> None:
    e = cluster.add("a", entries(200))
    cluster.step_all(2)
    anchors = [st.anchor_ms for st in e.registry.states().values()]
    assert len({a % S for a in anchors if a is not None}) > 100  # ~126 expected of 200


def test_many_due_ticks_are_claimed_and_published_chunk_by_chunk(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "CLAIM_CHUNK", 10)
    e = cluster.add("a", entries(35))
    cluster.step_all(2)
    cluster.align()
    events: list[str] = []
    claim, publish = e.registry.claim, e.publish

    def logged_claim(ticks: list[Tick], **kw: Any) -> Any:
        events.append(f"claim {len(ticks)}")
        return claim(ticks, **kw)

    def logged_publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        events.append("pub")
        publish(spec, tick, tid)

    e.registry.claim = logged_claim  # type: ignore[method-assign]
    e.publish = logged_publish
    cluster.clock.advance(S)  # every entry has one tick due
    e.step()
    assert events == (["claim 10"] + ["pub"] * 10) * 3 + ["claim 5"] + ["pub"] * 5
    assert_each_tick_once(cluster.recorder)
    assert len(cluster.recorder.sent) == 35 and e.registry.pending() == []


class FailingBatch:
    """A publish batch whose flush (on leaving it) fails while ``fail`` is set."""

    fail = True
    opened = 0

    def __enter__(self) -> None:
        FailingBatch.opened += 1

    def __exit__(self, *exc: object) -> None:
        if FailingBatch.fail:
            raise ConnectionError("flush failed")


def test_a_failed_publish_batch_fails_all_its_ticks_and_resends_them_with_their_ids(
    cluster: Cluster,
) -> None:
    e = cluster.add("a", entries(5), engine_kw={"publish_batch": FailingBatch})
    errors: list[tuple[str, int]] = []
    e.on_publish_error = lambda spec, tick, exc: errors.append((spec.name, tick.tick_ms))
    cluster.step_all(2)
    cluster.align()
    FailingBatch.fail, FailingBatch.opened = True, 0
    cluster.clock.advance(S)
    e.step()
    assert FailingBatch.opened == 1  # the five due ticks went into one batch
    attempted = {(n, t): tid for n, t, tid, _ in cluster.recorder.sent}
    assert len(errors) == 5 and set(errors) == set(attempted)
    assert len(e.registry.pending()) == 5  # not marked sent: delivery is uncertain
    FailingBatch.fail = False
    cluster.recorder.sent.clear()
    e._next_recover = 0.0
    e.step()
    assert {(n, t): tid for n, t, tid, _ in cluster.recorder.sent} == attempted  # same ids
    assert e.registry.pending() == []


def test_a_publish_batch_that_cannot_open_fails_its_ticks_for_a_retry(cluster: Cluster) -> None:
    def broken_batch() -> Any:
        raise ConnectionError("broker down")

    e = cluster.add("a", entries(3), engine_kw={"publish_batch": broken_batch})
    errors: list[str] = []
    e.on_publish_error = lambda spec, tick, exc: errors.append(spec.name)
    cluster.step_all(2)
    cluster.align()
    cluster.clock.advance(S)
    e.step()
    assert sorted(errors) == ["e0", "e1", "e2"] and cluster.recorder.sent == []
    assert len(e.registry.pending()) == 3 and len(e._failed) == 3  # retried soon, same ids
    e.publish_batch = None
    e._next_recover = 0.0
    e.step()
    assert len(cluster.recorder.sent) == 3 and e.registry.pending() == []
    assert_each_tick_once(cluster.recorder)


def test_a_catch_up_is_one_warning_with_per_entry_detail_at_debug(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    e = cluster.add("a", entries(30))
    cluster.step_all(2)
    cluster.align()
    cluster.clock.advance(5 * S)  # nobody fired for 5 s: 5 ticks due per entry
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        e.step()
    warnings = [getattr(r, "dcron_event", None) for r in caplog.records if r.levelno >= 30]
    assert warnings == ["catch_up"], warnings
    (summary,) = decisions(caplog, "catch_up")
    # "missed" counts every tick that came due unfired, the one fired late included (5)
    assert (summary["entries"], summary["missed"], summary["fired"], summary["dropped"]) == (
        30, 150, 30, 0,
    )  # fmt: skip
    details = decisions(caplog, "catch_up_entry")
    assert sorted(d["entry"] for d in details) == sorted(f"e{i}" for i in range(30))
    assert {(d["level"], d["missed"], d["fired"], d["policy"]) for d in details} == {
        (logging.DEBUG, 5, 1, "once")
    }
    assert len(cluster.recorder.sent) == 30
