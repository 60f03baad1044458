"""The registry's scripts against a real redis-server: claims, membership, sync, retake."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import redis

from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec, Node, NodeStatus, Tick
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import ConflictError, VersionConflictError
from celery_dcron.registry import Keys, Registry, connect
from celery_dcron.registry import claims as claims_module
from celery_dcron.schedules import CronSchedule, IntervalSchedule
from celery_dcron.ticks import interval_phase_ms

T0 = 1_800_000_000_000


def make_registry(url: str, namespace: str = "default") -> Registry:
    settings = Settings(redis_url=url, namespace=namespace)
    return Registry.from_settings(settings)


def script_calls(redis_url: str) -> int:
    """How many scripts (EVALSHA) the server has run so far."""
    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def spec(name: str, every_ms: int = 1000) -> EntrySpec:
    return EntrySpec(name=name, task="tasks.add", schedule=IntervalSchedule(every_ms=every_ms))


# -- claims -------------------------------------------------------------------------


def test_claim_wins_once_then_refuses_same_and_older_ticks(redis_url: str) -> None:
    reg = make_registry(redis_url)
    first = reg.claim([Tick(name="a", tick_ms=T0)], node_id="n1", lock_ttl_ms=10_000)
    assert first[0].won and first[0].last_tick_ms == T0 and first[0].run_count == 1

    again = reg.claim([Tick(name="a", tick_ms=T0)], node_id="n2", lock_ttl_ms=10_000)
    assert not again[0].won and again[0].last_tick_ms == T0

    older = reg.claim([Tick(name="a", tick_ms=T0 - 1000)], node_id="n2", lock_ttl_ms=10_000)
    assert not older[0].won and older[0].last_tick_ms == T0 and older[0].run_count == 1

    newer = reg.claim([Tick(name="a", tick_ms=T0 + 1000)], node_id="n2", lock_ttl_ms=10_000)
    assert newer[0].won and newer[0].run_count == 2
    state = reg.states()["a"]
    assert state.last_tick_ms == T0 + 1000 and state.run_count == 2 and state.last_node == "n2"


def test_claim_batch_is_one_round_trip_and_ordered(redis_url: str) -> None:
    reg = make_registry(redis_url)
    ticks = [Tick(name=f"e{i}", tick_ms=T0) for i in range(200)]
    ticks += [Tick(name="e0", tick_ms=T0 + 1000), Tick(name="e0", tick_ms=T0 + 500)]
    reg.load_scripts()
    before = script_calls(redis_url)
    results = reg.claim(ticks, node_id="n1", lock_ttl_ms=10_000)
    assert script_calls(redis_url) - before == 1  # the whole batch in one script call
    assert all(r.won for r in results[:201])
    assert not results[201].won  # older than the tick just claimed in the same batch
    assert len(reg.pending()) == 201


def test_a_big_claim_is_cut_into_short_scripts_in_order(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claims_module, "MAX_TICKS_PER_SCRIPT", 50)
    reg = make_registry(redis_url)
    reg.load_scripts()
    # e0's ticks straddle two scripts (T0 in the first, the newer one in the last): still
    # claimed oldest first, and the older one after it is refused
    late = [Tick(name="e0", tick_ms=T0 + 1000), Tick(name="e0", tick_ms=T0 + 500)]
    before = script_calls(redis_url)
    ticks = [Tick(name=f"e{i}", tick_ms=T0) for i in range(120)] + late
    results = reg.claim(ticks, node_id="n1", lock_ttl_ms=10_000)
    assert script_calls(redis_url) - before == 3  # 50 + 50 + 22 ticks
    assert [r.won for r in results] == [True] * 121 + [False]
    assert len(reg.pending()) == 121
    taken = reg.retake(ticks[:121], node_id="n1", lock_ttl_ms=10_000)
    assert taken == [True] * 121


def test_claim_retry_after_lost_reply_is_idempotent(redis_url: str) -> None:
    reg = make_registry(redis_url)
    tick = Tick(name="a", tick_ms=T0)
    assert reg.claim([tick], node_id="n1", lock_ttl_ms=10_000)[0].won
    # the same node retries the same claim (its first reply was lost): still won
    assert reg.claim([tick], node_id="n1", lock_ttl_ms=10_000)[0].won
    # once marked sent, a retry no longer counts as won (nothing to publish again)
    reg.mark_sent([tick])
    assert not reg.claim([tick], node_id="n1", lock_ttl_ms=10_000)[0].won


def test_skip_claim_advances_state_without_pending(redis_url: str) -> None:
    reg = make_registry(redis_url)
    res = reg.claim([Tick(name="a", tick_ms=T0, fire=False)], node_id="n1", lock_ttl_ms=1000)
    assert res[0].won and res[0].run_count == 0
    assert reg.pending() == []
    assert not reg.claim([Tick(name="a", tick_ms=T0)], node_id="n1", lock_ttl_ms=1000)[0].won


def test_max_runs_is_enforced_by_the_script(redis_url: str) -> None:
    reg = make_registry(redis_url)
    won = []
    for i in range(5):
        r = reg.claim(
            [Tick(name="a", tick_ms=T0 + i)], node_id="n1", lock_ttl_ms=1000, max_runs={"a": 3}
        )
        won.append(r[0].won)
    assert won == [True, True, True, False, False]
    assert reg.states()["a"].run_count == 3


def _race_worker(url: str, node: str, start_at: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    reg = make_registry(url)
    ticks = [Tick(name=f"e{i % 10}", tick_ms=T0 + (i // 10) * 1000) for i in range(100)]
    while time.time() < start_at:
        pass
    wins = []
    for tick in ticks:
        if reg.claim([tick], node_id=node, lock_ttl_ms=60_000)[0].won:
            wins.append((tick.name, tick.tick_ms))
    out.put(wins)


def test_processes_racing_for_the_same_ticks_exactly_one_wins_each(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    start_at = time.time() + 1.5
    procs = [
        ctx.Process(target=_race_worker, args=(redis_url, f"p{i}", start_at, out)) for i in range(6)
    ]
    for p in procs:
        p.start()
    wins = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    flat = [w for ws in wins for w in ws]
    assert len(flat) == len(set(flat)) == 100  # every tick won exactly once


def test_threads_racing_for_one_tick_exactly_one_wins(redis_url: str) -> None:
    barrier = threading.Barrier(16)
    winners: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        reg = make_registry(redis_url)
        barrier.wait()
        if reg.claim([Tick(name="hot", tick_ms=T0)], node_id=f"t{i}", lock_ttl_ms=5000)[0].won:
            with lock:
                winners.append(f"t{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


# -- retake -------------------------------------------------------------------------


def test_retake_refuses_a_live_holder_and_takes_a_dead_ones_claim(redis_url: str) -> None:
    reg = make_registry(redis_url)
    holder = Node(id="holder", status=NodeStatus.WORKING)
    reg.heartbeat(holder, ttl_ms=300)
    tick = Tick(name="a", tick_ms=T0)
    assert reg.claim([tick], node_id="holder", lock_ttl_ms=60_000)[0].won
    assert reg.retake([tick], node_id="other", lock_ttl_ms=60_000) == [False]
    assert reg.retake([tick], node_id="holder", lock_ttl_ms=60_000) == [True]
    time.sleep(0.4)  # the holder's heartbeat expires (server time)
    assert reg.retake([tick], node_id="other", lock_ttl_ms=60_000) == [True]
    assert [(p.name, p.tick_ms, p.node) for p in reg.pending()] == [("a", T0, "other")]
    reg.mark_sent([tick])
    assert reg.retake([tick], node_id="other", lock_ttl_ms=60_000) == [False]


def test_a_malformed_last_error_is_skipped_and_cleared_by_a_tick_sent(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    reg = make_registry(redis_url)
    reg.client.hset(reg.keys.errors, mapping={"a": "{oops", "b": '{"tick_ms": 1}'})
    assert reg.errors() == {} and reg.snapshot().errors == {}
    assert "malformed publish error of 'a'" in caplog.text
    reg.mark_sent([Tick(name="a", tick_ms=T0)])  # unreadable: it goes
    assert reg.client.hkeys(reg.keys.errors) == ["b"]


# -- membership ---------------------------------------------------------------------


def test_heartbeat_membership_versions_expiry_and_events(redis_url: str) -> None:
    reg = make_registry(redis_url)
    events = reg.pubsub()
    a = Node(id="a", host="h", pid=1, status=NodeStatus.STARTING)
    b = Node(id="b", host="h", pid=2, status=NodeStatus.WORKING)
    hb1 = reg.heartbeat(a, ttl_ms=10_000)
    hb2 = reg.heartbeat(a, ttl_ms=10_000)
    assert hb2.members_version == hb1.members_version  # nothing changed
    hb3 = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=10_000)
    assert hb3.members_version == hb1.members_version + 1  # a status change is a change
    reg.heartbeat(b, ttl_ms=200)
    nodes, _ = reg.nodes()
    assert [(n.id, n.status) for n in nodes] == [
        ("a", NodeStatus.WORKING),
        ("b", NodeStatus.WORKING),
    ]
    time.sleep(0.3)
    nodes, _ = reg.nodes()
    assert [n.id for n in nodes] == ["a"]  # b expired by server time
    hb4 = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=10_000)
    assert hb4.members_version > hb3.members_version + 1 - 1  # b's expiry was recorded
    assert "b" not in reg.client.hkeys(reg.keys.nodes)
    reg.leave("a")
    assert reg.nodes()[0] == []
    received = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        msg = events.get_message(timeout=0.1)
        if msg:
            received.append(msg["data"])
    assert received.count("members") >= 3


def test_heartbeat_returns_server_time(redis_url: str) -> None:
    reg = make_registry(redis_url)
    hb = reg.heartbeat(Node(id="a"), ttl_ms=1000)
    sec, usec = reg.client.time()
    assert abs(hb.server_ms - (sec * 1000 + usec // 1000)) < 1000


# -- entries ------------------------------------------------------------------------


def test_sync_static_writes_anchors_removes_stale_and_respects_dynamic_and_tombstones(
    redis_url: str,
) -> None:
    reg = make_registry(redis_url)
    k = reg.keys
    r1 = reg.sync_static([spec("a"), spec("b")])
    assert r1.changed == 2 and not r1.skipped
    anchors = reg.states()
    assert anchors["a"].anchor_ms is not None and anchors["a"].last_tick_ms is None
    assert reg.sync_static([spec("a"), spec("b")]).changed == 0  # idempotent
    # a dynamic entry "c" and a tombstoned "d" are not overwritten by static config
    reg.client.hset(k.entries, "c", spec("c").with_changes(source=EntrySource.DYNAMIC).dumps())
    reg.client.hset(k.tombstones, "d", "1")
    r2 = reg.sync_static([spec("a", 2000), spec("c"), spec("d")])
    assert r2.skipped == {"c": "dynamic", "d": "tombstoned"}
    entries, bad = reg.entries()
    assert sorted(entries) == ["a", "c"] and not bad  # b removed: no longer configured
    assert entries["a"].schedule == IntervalSchedule(every_ms=2000)
    assert entries["c"].source == "dynamic"


def test_interval_anchors_are_spread_on_each_entrys_grid_and_never_move(redis_url: str) -> None:
    reg = make_registry(redis_url, namespace="grid")
    reg.client.hset(reg.keys.anchor, "old", "1700000000123")  # anchored by an earlier version
    before = reg.server_ms()
    specs = [spec(f"e{i}", 60_000) for i in range(50)] + [spec("old", 60_000)]
    cron = EntrySpec(name="c", task="t", schedule=CronSchedule(expr="* * * * *"))
    reg.sync_static([*specs, cron])
    after = reg.server_ms()
    states = reg.states()
    anchors = {name: st.anchor_ms for name, st in states.items()}
    assert anchors["old"] == 1_700_000_000_123  # an existing anchor is kept (HSETNX)
    assert before <= (anchors["c"] or 0) <= after  # not an interval: anchored at now
    for s in specs[:-1]:
        anchor = anchors[s.name]
        assert anchor is not None
        assert anchor % 60_000 == interval_phase_ms("grid", s.name, 60_000)
        assert before - 60_000 < anchor <= after  # nothing due: first tick after now
    assert len(set(anchors[s.name] for s in specs[:-1])) > 40  # spread over the minute
    # a dynamic entry is anchored the same way; a reset re-anchors it on its grid
    created = reg.put_entry(
        spec("dyn", 5000).with_changes(source=EntrySource.DYNAMIC), expected_version=None
    )
    phase = interval_phase_ms("grid", "dyn", 5000)
    assert (reg.states()["dyn"].anchor_ms or 0) % 5000 == phase
    reg.claim([Tick(name="dyn", tick_ms=T0)], node_id="n1", lock_ttl_ms=1000)
    assert reg.reset(created.name)
    state = reg.states()["dyn"]
    assert state.last_tick_ms is None and (state.anchor_ms or 0) % 5000 == phase
    assert reg.server_ms() - 5000 < (state.anchor_ms or 0)


def test_malformed_entries_are_reported_not_raised(redis_url: str) -> None:
    reg = make_registry(redis_url)
    reg.sync_static([spec("good")])
    reg.client.hset(reg.keys.entries, "junk", "{not json")
    reg.client.hset(
        reg.keys.entries, "weird", '{"name": "weird", "task": "t", "schedule": {"kind": "nope"}}'
    )
    entries, bad = reg.entries()
    assert list(entries) == ["good"]
    assert set(bad) == {"junk", "weird"}


def test_a_stale_version_is_a_version_conflict_that_set_enabled_retries(
    redis_url: str,
) -> None:
    reg = make_registry(redis_url)
    first = reg.put_entry(spec("x").with_changes(source=EntrySource.DYNAMIC), expected_version=None)
    reg.put_entry(first.with_changes(description="theirs"), expected_version=1)
    with pytest.raises(VersionConflictError, match="changed by someone else"):
        reg.put_entry(first.with_changes(description="mine"), expected_version=1)
    with pytest.raises(VersionConflictError):
        reg.remove_entry("x", tombstone=False, expected_version=1)
    with pytest.raises(ConflictError) as exists:
        reg.put_entry(first, expected_version=None)
    assert not isinstance(exists.value, VersionConflictError)
    # set_enabled reads version 1 (stale), is refused, reads again and succeeds
    reads = iter([first])
    read = reg.entry_store.get_entry
    reg.entry_store.get_entry = lambda name: next(reads, None) or read(name)  # type: ignore[method-assign]
    disabled = reg.set_enabled("x", False)
    assert not disabled.enabled and disabled.version == 3
    assert disabled.description == "theirs"


def test_namespaces_do_not_share_keys(redis_url: str) -> None:
    a = make_registry(redis_url, "alpha")
    b = make_registry(redis_url, "beta")
    a.sync_static([spec("x")])
    assert a.claim([Tick(name="x", tick_ms=T0)], node_id="n", lock_ttl_ms=1000)[0].won
    assert b.entries()[0] == {}
    assert b.claim([Tick(name="x", tick_ms=T0)], node_id="n", lock_ttl_ms=1000)[0].won


def test_every_key_of_a_namespace_shares_one_hash_tag() -> None:
    keys = Keys("dcron", "prod")
    names = [*keys.all_fixed(), keys.lock("a:b", 1), keys.events]
    assert all(n.startswith("{dcron:prod}:") for n in names)


def test_unreachable_redis_raises_registry_unavailable() -> None:
    from celery_dcron.exceptions import RegistryUnavailableError

    settings = Settings(redis_url="redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    reg = Registry.from_settings(settings, client=connect(settings))
    with pytest.raises(RegistryUnavailableError):
        reg.claim([Tick(name="a", tick_ms=T0)], node_id="n", lock_ttl_ms=1000)
