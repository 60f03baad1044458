"""One contract, two registries: every test runs on the Redis registry (a real
redis-server) and on the in-memory one (a manual clock). The Redis registry is the
truth: a test that fails on "memory" only is a bug in ``celery_dcron.registry.memory``.

Time: the Redis registry follows the server's clock, the memory one its injected clock.
``Backend.advance`` moves the memory clock, and sleeps as long on Redis; TTLs stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
import redis

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec, Node, NodeStatus, PublishRejection, Tick
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import (
    ConflictError,
    EntryNotFoundError,
    InvalidEntryError,
    RegistryUnavailableError,
)
from celery_dcron.interfaces import Registry, Subscription
from celery_dcron.registry import DueHint, due_hint
from celery_dcron.registry import Registry as RedisRegistry
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import AtSchedule, CronSchedule, IntervalSchedule
from celery_dcron.ticks import FOLD_MS, interval_phase_ms, next_tick

T0 = 1_800_000_000_000
NS = "contract"
#: Node TTL for the expiry tests, and how far to move past it (real ms on Redis).
TTL_MS = 300
PAST_TTL_MS = 450


@dataclass
class Backend:
    kind: str
    reg: Registry
    #: move the registry's clock forward by this many ms
    advance: Callable[[int], object]
    #: what a Redis restart without persistence does
    lose_data: Callable[[], object]
    #: store raw text as an entry's definition (as a buggy writer could)
    write_raw: Callable[[str, str], object]
    #: a registry of the same kind that cannot reach its data
    unreachable: Callable[[], Registry]


def _memory() -> Backend:
    clock = ManualClock(start_ms=T0 + 123_456)
    reg = MemoryRegistry(clock, namespace=NS)

    def write_raw(name: str, text: str) -> None:
        reg._data.entries[name] = text  # no public way to store a malformed entry

    def unreachable() -> Registry:
        down = MemoryRegistry(clock, namespace=NS)
        down.available = False
        return down

    return Backend("memory", reg, clock.advance, reg.lose_data, write_raw, unreachable)


def _redis(url: str) -> Iterator[Backend]:
    reg = RedisRegistry.from_settings(Settings(redis_url=url, namespace=NS))
    client = redis.Redis.from_url(url)

    def unreachable() -> Registry:
        s = Settings(redis_url="redis://127.0.0.1:1/0", namespace=NS, socket_timeout_s=0.5)
        return RedisRegistry.from_settings(s)

    yield Backend(
        "redis",
        reg,
        lambda ms: time.sleep(ms / 1000),
        lambda: client.flushall(),
        lambda name, text: reg.client.hset(reg.keys.entries, name, text),
        unreachable,
    )
    client.close()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield _memory()
    else:
        yield from _redis(request.getfixturevalue("redis_url"))


def spec(name: str, every_ms: int = 1000, **kw: object) -> EntrySpec:
    return EntrySpec(name=name, task="t.add", schedule=IntervalSchedule(every_ms=every_ms), **kw)  # type: ignore[arg-type]


def dynamic(name: str, every_ms: int = 1000) -> EntrySpec:
    return spec(name, every_ms, source=EntrySource.DYNAMIC)


def tick(name: str, at: int, *, fire: bool = True) -> Tick:
    return Tick(name=name, tick_ms=at, fire=fire)


def versions(reg: Registry) -> tuple[int, int]:
    """(members, entries) versions, read by a heartbeat of a node that never changes."""
    hb = reg.heartbeat(Node(id="probe", status=NodeStatus.WORKING), ttl_ms=60_000)
    return hb.members_version, hb.entries_version


def wait_events(sub: Subscription, want: set[str], timeout_s: float = 2.0) -> set[str]:
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not want <= seen and time.monotonic() < deadline:
        message = sub.get_message(timeout=0.05)
        if message is not None:
            seen.add(str(message.get("data")))
    return seen


# -- membership ---------------------------------------------------------------------


def test_heartbeat_registers_nodes_with_status_and_versions(backend: Backend) -> None:
    reg = backend.reg
    a = Node(id="a", host="h", pid=1, status=NodeStatus.STARTING)
    hb1 = reg.heartbeat(a, ttl_ms=60_000)
    assert abs(hb1.server_ms - reg.server_ms()) < 1000
    assert hb1.peer_expiry_ms is None  # alone
    assert not hb1.paused and hb1.epoch and hb1.reset_ms is None
    assert reg.heartbeat(a, ttl_ms=60_000).members_version == hb1.members_version
    hb3 = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=60_000)
    assert hb3.members_version > hb1.members_version  # a status change is a change
    reg.heartbeat(Node(id="b", status=NodeStatus.LEAVING), ttl_ms=30_000)
    hb4 = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=60_000)
    assert hb4.peer_expiry_ms is not None
    assert 0 < hb4.peer_expiry_ms - hb4.server_ms <= 30_000  # b's expiry, not ours
    nodes, server_ms = reg.nodes()
    assert [(n.id, n.status) for n in nodes] == [
        ("a", NodeStatus.WORKING),
        ("b", NodeStatus.LEAVING),
    ]
    assert abs(server_ms - hb4.server_ms) < 1000


def test_an_expired_node_disappears_and_counts_as_a_membership_change(backend: Backend) -> None:
    reg = backend.reg
    a = Node(id="a", status=NodeStatus.WORKING)
    reg.heartbeat(a, ttl_ms=60_000)
    before = reg.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=TTL_MS)
    assert [n.id for n in reg.nodes()[0]] == ["a", "b"]
    backend.advance(PAST_TTL_MS)
    assert [n.id for n in reg.nodes()[0]] == ["a"]  # expired by the registry's clock
    after = reg.heartbeat(a, ttl_ms=60_000)
    assert after.members_version > before.members_version
    assert after.peer_expiry_ms is None  # b was forgotten
    # an expired node that heartbeats again is back, as a change
    again = reg.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=60_000)
    assert again.members_version > after.members_version
    assert [n.id for n in reg.nodes()[0]] == ["a", "b"]


def test_leave_deregisters_at_once(backend: Backend) -> None:
    reg = backend.reg
    hb = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=60_000)
    reg.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=60_000)
    reg.leave("a")
    assert [n.id for n in reg.nodes()[0]] == ["b"]
    assert reg.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=60_000).members_version > (
        hb.members_version
    )


def _numsub(reg: Registry, ids: list[str], want: dict[str, int]) -> dict[str, int]:
    """``reg.subscribers(ids)`` once it says ``want`` (a subscription is counted once
    the server processed it), or its last answer after 2 s."""
    deadline = time.monotonic() + 2.0
    counts = reg.subscribers(ids)
    while counts != want and time.monotonic() < deadline:
        time.sleep(0.01)
        counts = reg.subscribers(ids)
    return counts


def test_a_node_channel_counts_the_subscriptions_watching_it_until_closed(
    backend: Backend,
) -> None:
    reg = backend.reg
    assert reg.subscribers([]) == {}
    assert reg.subscribers(["a", "b"]) == {"a": 0, "b": 0}
    sub = reg.pubsub()
    other = reg.pubsub()
    try:
        reg.watch(sub, "a")
        assert _numsub(reg, ["a", "b"], {"a": 1, "b": 0}) == {"a": 1, "b": 0}
        reg.watch(other, "a")
        assert _numsub(reg, ["b", "a"], {"b": 0, "a": 2}) == {"b": 0, "a": 2}
    finally:
        sub.close()
    assert _numsub(reg, ["a"], {"a": 1}) == {"a": 1}  # a closed one counts no more
    other.close()
    assert _numsub(reg, ["a"], {"a": 0}) == {"a": 0}


def test_expire_crashed_takes_only_overdue_nodes_that_hold_a_channel(backend: Backend) -> None:
    reg = backend.reg
    watched = Node(id="a", status=NodeStatus.WORKING, watch_ms=100)
    unwatched = Node(id="b", status=NodeStatus.WORKING)  # no node channel: only its TTL
    late = Node(id="c", status=NodeStatus.WORKING, watch_ms=100)
    for node in (watched, unwatched, late):
        reg.heartbeat(node, ttl_ms=2_000)
    early = reg.expire_crashed(["a", "b", "c", "nobody"], grace_ms=50)
    assert early.taken == ()
    assert early.overdue_in_ms is not None and 0 < early.overdue_in_ms <= 150
    backend.advance(100)
    hb = reg.heartbeat(late, ttl_ms=2_000)  # c heartbeats: its overdue time moves
    backend.advance(100)
    checked = reg.expire_crashed(["a", "b", "c"], grace_ms=50)
    assert checked.taken == ("a",)  # 200 ms late; c 100 ms: within 100 + 50
    assert checked.overdue_in_ms is not None and 0 <= checked.overdue_in_ms <= 50
    assert reg.expire_crashed(["a"], grace_ms=50).taken == ()  # taken once
    # the next full heartbeat forgets it, as a membership change
    after = reg.heartbeat(late, ttl_ms=2_000)
    assert after.members_version > hb.members_version
    assert [n.id for n in reg.nodes()[0]] == ["b", "c"]
    assert [n.watch_ms for n in reg.nodes()[0]] == [0, 100]


def test_join_takes_a_free_expired_or_own_id_and_refuses_a_live_holder(backend: Backend) -> None:
    reg = backend.reg
    old = Node(id="h:0", host="h", pid=7, token="7:100:aa", status=NodeStatus.WORKING)
    first = reg.join(old, ttl_ms=60_000)
    assert first.won and first.holder is None  # free
    assert [(n.id, n.token) for n in reg.nodes()[0]] == [("h:0", "7:100:aa")]
    assert reg.join(old, ttl_ms=60_000).won  # its own id again (same token)
    new = Node(id="h:0", host="h", pid=8, token="8:200:bb", status=NodeStatus.STARTING)
    refused = reg.join(new, ttl_ms=60_000)
    assert not refused.won and refused.holder is not None
    assert (refused.holder.host, refused.holder.pid, refused.holder.token) == ("h", 7, "7:100:aa")
    assert not reg.join(new, ttl_ms=60_000, dead_token="7:100:zz").won  # not the token seen
    assert [n.token for n in reg.nodes()[0]] == ["7:100:aa"]  # the holder kept it
    # the caller proved the holder dead and passes the token it saw: compare-and-swap
    taken = reg.join(new, ttl_ms=60_000, dead_token="7:100:aa")
    assert taken.won and taken.holder is not None and taken.holder.token == "7:100:aa"
    assert [(n.id, n.token, n.status) for n in reg.nodes()[0]] == [
        ("h:0", "8:200:bb", NodeStatus.STARTING)
    ]
    # an expired holder needs no proof
    reg.join(Node(id="h:1", token="9:1:cc"), ttl_ms=TTL_MS)
    backend.advance(PAST_TTL_MS)
    late = reg.join(Node(id="h:1", token="10:1:dd"), ttl_ms=60_000)
    assert late.won and late.holder is not None and late.holder.token == "9:1:cc"


def test_join_is_a_membership_change(backend: Backend) -> None:
    reg = backend.reg
    before, _ = versions(reg)
    sub = reg.pubsub()
    reg.join(Node(id="h:0", token="1:1:aa"), ttl_ms=60_000)
    assert versions(reg)[0] > before
    assert "members" in wait_events(sub, {"members"})
    sub.close()


def test_a_heartbeat_of_a_superseded_incarnation_writes_nothing(backend: Backend) -> None:
    reg = backend.reg
    old = Node(id="x", host="h", pid=7, token="7:1:aa", status=NodeStatus.WORKING)
    assert not reg.heartbeat(old, ttl_ms=60_000).superseded
    new = Node(id="x", host="h2", pid=8, token="8:1:bb", status=NodeStatus.STARTING)
    assert reg.join(new, ttl_ms=60_000, dead_token="7:1:aa").won
    hb = reg.heartbeat(old, ttl_ms=60_000)
    assert hb.superseded
    ((node,),) = [reg.nodes()[0]]
    assert (node.host, node.token, node.status) == ("h2", "8:1:bb", NodeStatus.STARTING)
    assert not reg.heartbeat(new, ttl_ms=60_000).superseded
    # a record without a token (or a heartbeat without one) is not checked
    assert not reg.heartbeat(Node(id="x", status=NodeStatus.WORKING), ttl_ms=60_000).superseded


def test_touch_moves_a_registered_nodes_expiry_and_nothing_else(backend: Backend) -> None:
    """The light heartbeat: no version, record or status written, no node forgotten."""
    reg = backend.reg
    assert reg.touch("a", T0) is None  # not registered: nothing written
    assert reg.nodes()[0] == []
    hb = reg.heartbeat(Node(id="a", status=NodeStatus.WORKING), ttl_ms=60_000)
    assert dict(hb.alive) == {"a": hb.server_ms + 60_000}  # the full one's live nodes
    reg.heartbeat(Node(id="b", status=NodeStatus.WORKING), ttl_ms=TTL_MS)
    before = versions(reg)  # registers "probe"
    expiry = reg.server_ms() + 61_000  # not a's expiry now (then nothing changes)
    alive = reg.touch("a", expiry)
    assert alive is not None and alive.keys() == {"a", "b", "probe"} and alive["a"] == expiry
    assert reg.touch("a", expiry) is None  # no change
    assert reg.touch("a", expiry + 1, read_alive=False) == {}
    assert versions(reg) == before
    ((a,),) = [[n for n in reg.nodes()[0] if n.id == "a"]]
    assert abs(a.heartbeat_ms - reg.server_ms()) < 2000  # the heartbeat time follows
    backend.advance(PAST_TTL_MS)
    alive = reg.touch("a", expiry + 2)  # b expired: read, not forgotten
    assert alive is not None and alive["b"] <= reg.server_ms()
    assert [n.id for n in reg.nodes()[0]] == ["a", "probe"]
    backend.lose_data()
    assert reg.touch("a", expiry + 3) is None  # gone with the data: a full heartbeat follows


def test_events_tell_members_and_entries_changes_apart(backend: Backend) -> None:
    reg = backend.reg
    sub = reg.pubsub()
    try:
        reg.heartbeat(Node(id="a"), ttl_ms=60_000)
        assert wait_events(sub, {"members"}) == {"members"}
        reg.put_entry(dynamic("x"), expected_version=None)
        assert wait_events(sub, {"entries"}) == {"entries"}
        assert not reg.follow_master()
    finally:
        sub.close()


# -- entries ------------------------------------------------------------------------


def test_put_get_is_compare_and_set_on_the_version(backend: Backend) -> None:
    reg = backend.reg
    _, v0 = versions(reg)
    created = reg.put_entry(dynamic("x").with_changes(version=7), expected_version=None)
    assert created.version == 1  # the registry numbers versions, not the caller
    assert reg.get_entry("x") == created
    assert reg.get_entry("nope") is None
    with pytest.raises(ConflictError):
        reg.put_entry(dynamic("x"), expected_version=None)  # exists
    updated = reg.put_entry(dynamic("x", 2000), expected_version=1)
    assert updated.version == 2 and reg.get_entry("x") == updated
    with pytest.raises(ConflictError):
        reg.put_entry(dynamic("x", 3000), expected_version=1)  # stale version
    with pytest.raises(EntryNotFoundError):
        reg.put_entry(dynamic("y"), expected_version=1)
    forced = reg.put_entry(dynamic("x", 4000), expected_version=None, force=True)
    assert forced.version == 3 and reg.get_entry("x") == forced
    assert versions(reg)[1] == v0 + 3  # each write bumps the entries version once
    entries, bad = reg.entries()
    assert entries == {"x": forced} and bad == {}
    with pytest.raises(InvalidEntryError):  # checked before anything is written
        reg.put_entry(dynamic("z").with_changes(args=(object(),)), expected_version=None)
    assert reg.get_entry("z") is None


def test_put_entries_creates_or_replaces_each_entry_on_its_own(backend: Backend) -> None:
    reg = backend.reg
    _, v0 = versions(reg)
    reg.put_entry(dynamic("taken"), expected_version=None)
    reg.remove_entry("gone", tombstone=True)
    reg.sync_static([spec("s")])
    specs = [dynamic("a"), dynamic("taken", 2000), dynamic("gone"), dynamic("s"),
             dynamic("bad").with_changes(args=(object(),)),
             dynamic("b").with_changes(version=9)]  # fmt: skip
    out = reg.put_entries(specs)
    assert [type(r).__name__ for r in out] == [
        "EntrySpec", "ConflictError", "ConflictError", "ConflictError", "InvalidEntryError",
        "EntrySpec",
    ]  # fmt: skip
    assert out[0] == reg.get_entry("a") and out[0].version == 1
    assert out[5] == reg.get_entry("b") and out[5].version == 1
    assert reg.get_entry("taken") == dynamic("taken").with_changes(version=1)
    assert reg.get_entry("bad") is None and "gone" in reg.tombstones()
    assert {"a", "b"} <= set(reg.states(["a", "b"]))  # anchored
    assert versions(reg)[1] == v0 + 2 + 2  # each write bumps the entries version once
    replaced = reg.put_entries(specs[:4], replace=True)
    assert [r.version if isinstance(r, EntrySpec) else None for r in replaced] == [
        2, 2, None, None
    ]  # fmt: skip
    assert all(isinstance(r, ConflictError) for r in replaced[2:])
    assert reg.get_entry("taken") == replaced[1] and replaced[1].schedule.every_ms == 2000  # type: ignore[union-attr]
    assert reg.get_entry("s") == spec("s") and reg.put_entries([]) == []
    # an entry that cannot be encoded is refused as such, before the name is looked at
    unencodable = dynamic("s").with_changes(args=(object(),))
    assert isinstance(reg.put_entries([unencodable], replace=True)[0], InvalidEntryError)


def test_remove_clears_state_and_a_tombstone_keeps_the_name_deleted(backend: Backend) -> None:
    reg = backend.reg
    reg.put_entry(dynamic("x"), expected_version=None)
    reg.claim([tick("x", T0)], node_id="n1", lock_ttl_ms=60_000)
    with pytest.raises(ConflictError):
        reg.remove_entry("x", tombstone=False, expected_version=9)
    assert reg.get_entry("x") is not None
    before = reg.server_ms()
    assert reg.remove_entry("x", tombstone=True, expected_version=1)
    assert reg.get_entry("x") is None and "x" not in reg.states()
    assert not reg.remove_entry("x", tombstone=True)  # nothing left to remove
    assert before <= reg.tombstones()["x"] <= reg.server_ms()
    with pytest.raises(ConflictError):
        reg.put_entry(dynamic("x"), expected_version=None)
    assert reg.sync_static([spec("x")]).skipped == {"x": "tombstoned"}
    assert reg.reuse_deleted("x") and not reg.reuse_deleted("x")
    assert reg.put_entry(dynamic("x"), expected_version=None).version == 1
    # a tombstone can be set on an absent name; a forced write drops it
    assert not reg.remove_entry("y", tombstone=True)
    assert "y" in reg.tombstones()
    assert reg.put_entry(dynamic("y"), expected_version=None, force=True).version == 1
    assert "y" not in reg.tombstones()


def test_a_static_name_is_refused_to_new_dynamic_entries_unless_forced(backend: Backend) -> None:
    reg = backend.reg
    reg.sync_static([spec("s")])
    with pytest.raises(ConflictError):
        reg.put_entry(dynamic("s"), expected_version=None)
    replaced = reg.put_entry(dynamic("s", 5000), expected_version=None, force=True)
    assert replaced.source == "dynamic" and reg.get_entry("s") == replaced
    assert reg.snapshot().static == set()  # now a dynamic entry ...
    assert reg.sync_static([spec("s")]).skipped == {"s": "dynamic"}  # ... kept by sync
    assert reg.get_entry("s") == replaced


def test_sync_static_writes_anchors_once_and_removes_unlisted_entries(backend: Backend) -> None:
    reg = backend.reg
    _, v0 = versions(reg)
    before = reg.server_ms()
    cron = EntrySpec(name="c", task="t", schedule=CronSchedule(expr="* * * * *"))
    first = reg.sync_static([spec("a", 60_000), spec("b"), cron])
    after = reg.server_ms()
    assert first.changed == 3 and dict(first.skipped) == {}
    states = reg.states()
    anchor_a = states["a"].anchor_ms
    assert anchor_a is not None and states["a"].last_tick_ms is None
    assert anchor_a % 60_000 == interval_phase_ms(NS, "a", 60_000)  # on the entry's grid
    assert before - 60_000 < anchor_a <= after  # nothing due yet
    assert before <= (states["c"].anchor_ms or 0) <= after  # not an interval: now
    assert reg.sync_static([spec("a", 60_000), spec("b"), cron]).changed == 0
    assert versions(reg)[1] == v0 + 3  # one version per entry written; unchanged: none
    backend.advance(5)
    changed = reg.sync_static([spec("a", 30_000), spec("b")])
    assert changed.changed == 2  # a rewritten, c removed
    entries, _ = reg.entries()
    assert sorted(entries) == ["a", "b"]
    assert entries["a"].schedule == IntervalSchedule(every_ms=30_000)
    assert reg.states()["a"].anchor_ms == anchor_a  # an anchor never moves
    assert reg.snapshot().static == {"a", "b"}


def test_a_static_schedule_in_pages_then_its_stale_entries_dropped(backend: Backend) -> None:
    """A large beat_schedule is written a page per call (final=False: nothing removed);
    then the static names are scanned, and those it does not list dropped: only names
    that are still static entries (not a dynamic entry of that name)."""
    reg = backend.reg
    reg.sync_static([spec("a"), spec("b"), *[spec(f"old{i}") for i in range(5)]])
    assert reg.sync_static([spec("a"), spec("c")], final=False).changed == 1  # c
    assert reg.sync_static([spec("b", 2000)], final=False).changed == 1
    assert reg.snapshot().static == {"a", "b", "c", *[f"old{i}" for i in range(5)]}
    seen: set[str] = set()
    cursor = 0
    while True:
        cursor, names = reg.scan_static(cursor, 3)
        seen.update(names)
        if cursor == 0:
            break
    assert seen == reg.snapshot().static
    reg.put_entry(dynamic("dyn"), expected_version=None)
    assert reg.drop_static(["old0", "old1", "dyn", "nothing"]) == 2
    assert reg.drop_static([f"old{i}" for i in range(5)]) == 3
    assert reg.drop_static([]) == 0
    assert reg.snapshot().static == {"a", "b", "c"}
    entries, _ = reg.entries()
    assert sorted(entries) == ["a", "b", "c", "dyn"]
    assert "old0" not in dict(reg.due_range(None, 2**53))


def test_malformed_entries_are_reported_not_raised(backend: Backend) -> None:
    reg = backend.reg
    reg.sync_static([spec("good")])
    backend.write_raw("junk", "{not json")
    backend.write_raw("alias", spec("other").dumps())
    entries, bad = reg.entries()
    assert list(entries) == ["good"] and set(bad) == {"junk", "alias"}
    with pytest.raises(InvalidEntryError):
        reg.get_entry("junk")
    snap = reg.snapshot()
    assert set(snap.entries) == {"good"} and set(snap.bad) == {"junk", "alias"}
    assert snap.names == ["alias", "good", "junk"]


# -- claims -------------------------------------------------------------------------


def test_claim_wins_once_and_refuses_the_same_or_an_older_tick(backend: Backend) -> None:
    reg = backend.reg
    first = reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)[0]
    assert (first.won, first.last_tick_ms, first.run_count) == (True, T0, 1)
    same = reg.claim([tick("a", T0)], node_id="n2", lock_ttl_ms=60_000)[0]
    assert (same.won, same.last_tick_ms, same.run_count) == (False, T0, 1)
    older = reg.claim([tick("a", T0 - 1000)], node_id="n2", lock_ttl_ms=60_000)[0]
    assert (older.won, older.last_tick_ms) == (False, T0)
    newer = reg.claim([tick("a", T0 + 1000)], node_id="n2", lock_ttl_ms=60_000)[0]
    assert (newer.won, newer.last_tick_ms, newer.run_count) == (True, T0 + 1000, 2)
    state = reg.states()["a"]
    assert (state.last_tick_ms, state.run_count, state.last_node) == (T0 + 1000, 2, "n2")
    assert state.anchor_ms is None  # claims never anchor


def test_a_batch_is_claimed_in_order(backend: Backend) -> None:
    reg = backend.reg
    ticks = [tick("e0", T0), tick("e1", T0), tick("e0", T0 + 1000), tick("e0", T0 + 500)]
    results = reg.claim(ticks, node_id="n1", lock_ttl_ms=60_000)
    assert [r.won for r in results] == [True, True, True, False]
    assert results[3].last_tick_ms == T0 + 1000 and results[3].run_count == 2
    assert sorted((p.name, p.tick_ms) for p in reg.pending()) == [
        ("e0", T0),
        ("e0", T0 + 1000),
        ("e1", T0),
    ]


def test_a_lost_reply_retried_by_the_claimer_counts_as_won_until_sent(backend: Backend) -> None:
    reg = backend.reg
    assert reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)[0].won
    retry = reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)[0]
    assert retry.won and retry.run_count == 1  # counted once
    assert not reg.claim([tick("a", T0)], node_id="n2", lock_ttl_ms=60_000)[0].won
    reg.mark_sent([tick("a", T0)])
    assert reg.pending() == []
    assert not reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)[0].won


def test_a_skip_claim_advances_the_last_tick_without_a_run(backend: Backend) -> None:
    reg = backend.reg
    skip = reg.claim([tick("a", T0, fire=False)], node_id="n1", lock_ttl_ms=60_000)[0]
    assert (skip.won, skip.last_tick_ms, skip.run_count) == (True, T0, 0)
    assert reg.pending() == []
    assert not reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)[0].won
    state = reg.states()["a"]
    assert (state.last_tick_ms, state.run_count, state.last_node) == (T0, 0, None)


def test_max_runs_stops_claims_without_moving_the_last_tick(backend: Backend) -> None:
    reg = backend.reg
    won = [
        reg.claim([tick("a", T0 + i)], node_id="n1", lock_ttl_ms=60_000, max_runs={"a": 2})[0]
        for i in range(4)
    ]
    assert [r.won for r in won] == [True, True, False, False]
    assert won[3].last_tick_ms == T0 + 1 and won[3].run_count == 2
    # no limit given (None) means no limit
    assert reg.claim([tick("a", T0 + 9)], node_id="n1", lock_ttl_ms=1000, max_runs={"a": None})[
        0
    ].won


def test_the_per_tick_lock_outlives_a_reset_until_its_ttl(backend: Backend) -> None:
    reg = backend.reg
    reg.put_entry(dynamic("a"), expected_version=None)
    assert reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=TTL_MS)[0].won
    reg.mark_sent([tick("a", T0)])
    assert reg.reset("a")  # the last tick is gone, the tick's fire lock is not
    blocked = reg.claim([tick("a", T0)], node_id="n2", lock_ttl_ms=TTL_MS)[0]
    assert (blocked.won, blocked.last_tick_ms, blocked.run_count) == (False, None, 0)
    assert reg.claim([tick("a", T0 + 1)], node_id="n2", lock_ttl_ms=TTL_MS)[0].won
    reg.reset("a")
    backend.advance(PAST_TTL_MS)
    assert reg.claim([tick("a", T0)], node_id="n2", lock_ttl_ms=TTL_MS)[0].won


# -- pending claims -----------------------------------------------------------------


def test_retake_refuses_a_live_holder_and_takes_a_dead_ones_claim(backend: Backend) -> None:
    reg = backend.reg
    reg.heartbeat(Node(id="holder", status=NodeStatus.WORKING), ttl_ms=TTL_MS)
    t = tick("a", T0)
    assert reg.claim([t], node_id="holder", lock_ttl_ms=60_000)[0].won
    assert reg.retake([t], node_id="other", lock_ttl_ms=60_000) == [False]
    assert reg.retake([t], node_id="holder", lock_ttl_ms=60_000) == [True]
    backend.advance(PAST_TTL_MS)
    assert reg.retake([t, tick("a", T0 + 1)], node_id="other", lock_ttl_ms=60_000) == [
        True,
        False,  # never claimed: nothing to retake
    ]
    assert [(p.name, p.tick_ms, p.node) for p in reg.pending()] == [("a", T0, "other")]
    reg.mark_sent([t])
    assert reg.retake([t], node_id="other", lock_ttl_ms=60_000) == [False]


def test_a_claim_of_a_node_that_never_heartbeated_can_be_retaken(backend: Backend) -> None:
    reg = backend.reg
    t = tick("a", T0)
    reg.claim([t], node_id="ghost", lock_ttl_ms=60_000)
    assert reg.retake([t], node_id="n1", lock_ttl_ms=60_000) == [True]
    assert [(p.name, p.node) for p in reg.pending()] == [("a", "n1")]


def test_drop_pending_forgets_unsent_claims(backend: Backend) -> None:
    reg = backend.reg
    reg.claim([tick("a", T0), tick("b", T0)], node_id="n1", lock_ttl_ms=60_000)
    reg.drop_pending([tick("a", T0)])
    assert [(p.name, p.node) for p in reg.pending()] == [("b", "n1")]
    assert reg.states()["a"].last_tick_ms == T0  # the claim itself stands


def rejected(name: str, at: int, *, run_now: bool = False) -> PublishRejection:
    return PublishRejection(
        name=name, tick_ms=at, task_id=f"id-{at}", reason="arguments", at_ms=at + 5,
        error="TypeError('add() missing 1 required positional argument: y')", node="n1",
        version=2, run_now=run_now,
    )  # fmt: skip


def test_a_rejected_tick_is_finished_and_kept_as_its_entrys_last_error(backend: Backend) -> None:
    reg = backend.reg
    for name in ("a", "b"):
        reg.put_entry(dynamic(name), expected_version=None)
    reg.claim([tick("a", T0), tick("b", T0)], node_id="n1", lock_ttl_ms=60_000)
    reg.reject([rejected("a", T0)])
    assert [(p.name, p.tick_ms) for p in reg.pending()] == [("b", T0)]  # a's tick is done
    assert reg.states()["a"].run_count == 1  # the claim stands: it counts as a run
    assert reg.errors() == {"a": rejected("a", T0)}
    assert reg.errors(["a", "b", "zzz"]) == {"a": rejected("a", T0)}
    assert reg.errors(["b"]) == {} and reg.errors([]) == {}
    assert reg.snapshot().errors == {"a": rejected("a", T0)}
    assert reg.snapshot(["a"]).errors == {"a": rejected("a", T0)}
    assert reg.snapshot(["b"]).errors == {} and reg.snapshot([]).errors == {}
    # a later rejection replaces the error; a run-now's finishes no claim
    reg.reject([rejected("a", T0 + 1000), rejected("b", T0 + 5, run_now=True)])
    assert reg.errors() == {"a": rejected("a", T0 + 1000), "b": rejected("b", T0 + 5, run_now=True)}
    assert [(p.name, p.tick_ms) for p in reg.pending()] == [("b", T0)]
    reg.reject([])


def test_a_tick_sent_clears_an_error_of_its_tick_or_earlier_not_a_later_one(
    backend: Backend,
) -> None:
    reg = backend.reg
    reg.put_entry(dynamic("a"), expected_version=None)
    reg.reject([rejected("a", T0 + 2000)])
    reg.claim([tick("a", T0 + 1000)], node_id="n1", lock_ttl_ms=60_000)
    reg.mark_sent([tick("a", T0 + 1000)])  # an older tick sent late (a re-publish)
    assert reg.errors() == {"a": rejected("a", T0 + 2000)}
    reg.mark_sent([tick("a", T0 + 2000), tick("other", T0)])
    assert reg.errors() == {} and reg.pending() == []


def test_remove_reset_and_cleanup_clear_the_last_error(backend: Backend) -> None:
    reg = backend.reg
    for name in ("removed", "reset", "erased", "kept"):
        reg.put_entry(dynamic(name), expected_version=None)
    reg.reject([rejected(name, T0) for name in ("removed", "reset", "erased", "kept")])
    assert reg.remove_entry("removed", tombstone=False)
    assert reg.reset("reset")
    assert reg.cleanup("erased") == 3  # definition, anchor, error
    assert set(reg.errors()) == {"kept"}
    reg.put_entry(dynamic("removed"), expected_version=None)  # a new entry of that name
    assert "removed" not in reg.snapshot().errors


def test_states_of_some_entries_or_all(backend: Backend) -> None:
    reg = backend.reg
    reg.sync_static([spec("a")])
    reg.claim([tick("b", T0)], node_id="n1", lock_ttl_ms=60_000)
    assert set(reg.states()) == {"a", "b"}
    assert set(reg.states(["b", "missing"])) == {"b"}
    assert reg.states([]) == {}


def test_load_reads_definitions_and_states_as_get_entries_and_states_do(
    backend: Backend,
) -> None:
    reg = backend.reg
    reg.sync_static([spec("a"), spec("b")])
    reg.put_entry(dynamic("d", every_ms=5000), expected_version=None)
    reg.claim([tick("b", T0), tick("c", T0, fire=False)], node_id="n1", lock_ttl_ms=60_000)
    backend.write_raw("junk", "{not json")
    backend.write_raw("sep", spec("sep").dumps()[:-1] + ', "x": "\x1f"}')  # raw \x1f
    names = ["a", "b", "c", "d", "junk", "sep", "missing"]
    loaded = reg.load(names)
    good, bad = reg.get_entries(names)
    assert loaded.specs == good and set(good) == {"a", "b", "d"}
    assert set(loaded.bad) == {"junk", "sep"} and set(bad) >= {"junk"}
    expected = {n: replace(st, last_node=None) for n, st in reg.states(names).items()}
    assert loaded.states == expected and set(expected) == {"a", "b", "c", "d"}
    assert loaded.states["b"].last_tick_ms == T0 and loaded.states["b"].run_count == 1
    assert reg.load([]) == ({}, {}, {}, {})
    assert reg.last_runs(names) == {"b": T0, "c": T0} and reg.last_runs([]) == {}


def test_due_hints_are_each_entrys_schedule_text_start_and_last_tick(backend: Backend) -> None:
    """What a large reassignment orders entries by, read without their definitions whole:
    the same in Redis (a Lua script) as in Python (entrytext.due_fields); no hint when
    unsure (a key spelled twice, no schedule object, the reply's separator in the text)."""
    reg = backend.reg
    decoy = '"schedule": {"kind": "interval", "every_ms": 5}, "start_ms": 9'
    cron = CronSchedule(expr="*/5 * * * *", tz="Europe/Paris")
    specs = [
        dynamic("plain", every_ms=5000),
        dynamic("late").with_changes(start_ms=T0 + 10**6, max_runs=3),
        EntrySpec(
            name="spelled", task="t", schedule=cron, args=(decoy,), options={"queue": decoy},
            description=decoy, source=EntrySource.DYNAMIC,
        ),
        dynamic("twice").with_changes(kwargs={"x": {"schedule": {"k": "}"}}}),
    ]  # fmt: skip
    texts = {s.name: s.dumps() for s in specs}
    texts["sep"] = texts["plain"].replace('"interval"', '"inter\x1fval"')  # a raw \x1f
    texts["open"] = '{"schedule": {"kind": "interval", "every_ms": 5'
    for name, text in [*texts.items(), ("junk", "{not json")]:
        backend.write_raw(name, text)
    reg.claim([tick("plain", T0), tick("late", T0 - 5, fire=False)], node_id="n", lock_ttl_ms=1)
    names = [*texts, "junk", "missing"]
    hints = reg.due_hints(names)
    states = reg.states(names)
    assert hints == {
        **{n: due_hint(texts[n], states.get(n)) for n in texts},
        "junk": DueHint("", None, None), "missing": DueHint("", None, None),
    }  # fmt: skip
    assert hints["plain"] == DueHint('{"every_ms": 5000, "kind": "interval"}', None, T0)
    assert hints["late"] == DueHint('{"every_ms": 1000, "kind": "interval"}', T0 + 10**6, T0 - 5)
    assert hints["spelled"].schedule.startswith('{"day_or": true, "expr": "*/5 * * * *"')
    assert hints["twice"] == hints["sep"] == hints["open"] == DueHint("", None, None)
    assert reg.due_hints([]) == {}


def test_the_due_index_is_unknown_after_each_write_and_holds_what_owners_set(
    backend: Backend,
) -> None:
    """Each write to an entry (static sync, put, bulk put, reset) sets its due time to 0,
    unknown, but a new interval entry's: a whole interval after the anchor it gets (unless
    a start_at could move its first tick); a removal (remove, cleanup, a static entry
    dropped) takes it out; set_due writes only entries that still exist; due_range reads
    by time, earliest first."""
    reg = backend.reg
    assert reg.due_index_complete() and reg.due_range(None, 2**53) == []
    reg.sync_static([spec("s1"), spec("s2")])
    reg.put_entry(dynamic("a"), expected_version=None)
    reg.put_entries([dynamic("b"), dynamic("c"), dynamic("d", every_ms=7000)])
    late = dynamic("late").with_changes(start_ms=T0)
    reg.put_entries([late])
    reg.put_entry(late.with_changes(name="late1"), expected_version=None)
    cron = spec("cron", source=EntrySource.DYNAMIC).with_changes(
        schedule=CronSchedule(expr="* * * * *")
    )
    reg.put_entry(cron, expected_version=None)
    # a bulk write gives a new cron or one-off entry its first tick after the server's
    # time (before its anchor); its start_at only moves that later
    yearly = cron.with_changes(name="yearly", schedule=CronSchedule(expr="0 0 1 1 *"))
    at = cron.with_changes(name="at", schedule=AtSchedule(at_ms=2**52))
    reg.put_entries([yearly, at, yearly.with_changes(name="yearly-late", start_ms=T0)])
    anchors = {n: st.anchor_ms for n, st in reg.states().items()}
    first = {"a": 1000, "b": 1000, "c": 1000, "d": 7000}
    new_year = next_tick(yearly.schedule, anchors["yearly"])  # type: ignore[arg-type]
    assert dict(reg.due_range(None, 2**53)) == {
        **{n: anchors[n] + every for n, every in first.items()},  # type: ignore[operator]
        "late": 0, "late1": 0, "cron": 0, "s1": 0, "s2": 0,
        "yearly": new_year, "yearly-late": new_year, "at": 2**52,
    }  # fmt: skip
    # replace=True reads the server's time as an add does; a caller's (add_many's) too
    reg.put_entries([yearly.with_changes(name="yearly-r")], replace=True)
    reg.put_entries([yearly.with_changes(name="yearly-s")], since_ms=reg.server_ms())
    anchors = {n: st.anchor_ms for n, st in reg.states().items()}
    for name in ("yearly-r", "yearly-s"):
        assert dict(reg.due_range(None, 2**53))[name] == next_tick(
            yearly.schedule,
            anchors[name],  # type: ignore[arg-type]
        )
    # a time later than the server's now (its clock stepped back): no bound from it
    reg.put_entries([yearly.with_changes(name="yearly-f")], since_ms=reg.server_ms() + 60_000)
    assert dict(reg.due_range(None, 2**53))["yearly-f"] == 0
    # nor from one older than FOLD_MS: the bound holds for anchors within it of the time
    reg.put_entries([yearly.with_changes(name="yearly-o")], since_ms=reg.server_ms() - FOLD_MS)
    assert dict(reg.due_range(None, 2**53))["yearly-o"] == 0
    for name in ("yearly", "at", "yearly-late", "yearly-r", "yearly-s", "yearly-f", "yearly-o"):
        reg.remove_entry(name, tombstone=False)
    reg.put_entries([dynamic("d", every_ms=7000)], replace=True)  # anchored before: unknown
    assert dict(reg.due_range(None, 0))["d"] == 0
    for name in ("late", "late1", "cron"):
        reg.remove_entry(name, tombstone=False)
    reg.set_due({"a": T0 + 5, "b": T0 + 1, "c": T0 + 9, "s1": T0 + 3, "gone": T0})
    assert reg.due_range(None, 2**53) == [
        ("d", 0), ("s2", 0), ("b", T0 + 1), ("s1", T0 + 3), ("a", T0 + 5), ("c", T0 + 9),
    ]  # fmt: skip
    assert reg.due_range(T0 + 1, T0 + 5) == [("s1", T0 + 3), ("a", T0 + 5)]  # (after, until]
    assert reg.due_range(None, T0 + 9, offset=2, count=2) == [("b", T0 + 1), ("s1", T0 + 3)]
    a = reg.get_entry("a")
    assert a is not None
    reg.put_entry(a.with_changes(args=(1,)), expected_version=a.version)
    reg.reset("b")
    reg.put_entries([dynamic("c")], replace=True)
    assert dict(reg.due_range(None, 2**53)) == {
        "a": 0, "b": 0, "c": 0, "d": 0, "s1": T0 + 3, "s2": 0,
    }  # fmt: skip
    assert reg.load(["c", "s1", "missing"]).due == {"c": 0, "s1": T0 + 3}  # read with them
    # a claim that outlived a removal leaves a last tick: the next is after it, not a whole
    # interval after the new anchor
    reg.put_entry(dynamic("z"), expected_version=None)
    reg.remove_entry("z", tombstone=False)
    reg.claim([tick("z", T0)], node_id="n1", lock_ttl_ms=60_000)
    reg.put_entry(dynamic("z"), expected_version=None)
    reg.put_entries([dynamic("z2")])
    reg.remove_entry("z2", tombstone=False)
    reg.claim([tick("z2", T0)], node_id="n1", lock_ttl_ms=60_000)
    reg.put_entries([dynamic("z2")])
    assert dict(reg.due_range(None, 0)).keys() >= {"z", "z2"}
    reg.remove_entry("z", tombstone=False)
    reg.remove_entry("z2", tombstone=False)
    reg.remove_entry("a", tombstone=True)
    reg.cleanup("b")
    reg.sync_static([spec("s2")])  # s1 leaves the static schedule
    assert [n for n, _ in reg.due_range(None, 2**53)] == ["c", "d", "s2"]
    assert reg.due_index_complete()
    backend.write_raw("legacy", dynamic("legacy").dumps())  # written before the index
    assert not reg.due_index_complete()
    reg.set_due({"legacy": T0})
    assert reg.due_index_complete()


def test_load_and_last_runs_take_pages_of_many_names(backend: Backend) -> None:
    """More names than Lua's unpack() takes at once (~8,000)."""
    reg = backend.reg
    specs = [dynamic(f"d{i:05d}") for i in range(9_000)]
    reg.put_entries(specs)
    names = [s.name for s in specs] + ["missing"]
    loaded = reg.load(names)
    assert set(loaded.specs) == set(names[:-1]) and not loaded.bad
    assert set(loaded.states) == set(names[:-1])  # anchored when written
    reg.claim([tick(n, T0) for n in names[:600]], node_id="n1", lock_ttl_ms=60_000)
    assert reg.last_runs(names) == dict.fromkeys(names[:600], T0)


# -- run-now requests ---------------------------------------------------------------


def test_run_now_requests_are_taken_by_one_live_node_until_done(backend: Backend) -> None:
    reg = backend.reg
    with pytest.raises(EntryNotFoundError):
        reg.run_now("x")
    reg.put_entry(dynamic("x"), expected_version=None)
    _, v0 = versions(reg)
    at = reg.run_now("x")
    assert abs(at - reg.server_ms()) < 1000 and versions(reg)[1] == v0 + 1
    [waiting] = reg.requests()
    assert (waiting.name, waiting.request_ms, waiting.holder) == ("x", at, "")
    reg.heartbeat(Node(id="n1", status=NodeStatus.WORKING), ttl_ms=TTL_MS)
    assert reg.take_requests([waiting], node_id="n1") == [True]
    assert reg.take_requests([waiting], node_id="n2") == [False]  # n1 is alive
    assert reg.take_requests([waiting], node_id="n1") == [True]  # a retry of its own
    assert [r.holder for r in reg.requests()] == ["n1"]
    backend.advance(PAST_TTL_MS)
    assert reg.take_requests([waiting], node_id="n2") == [True]  # n1 died
    reg.done_requests([waiting])
    assert reg.requests() == []
    assert reg.take_requests([waiting], node_id="n2") == [False]
    assert reg.take_requests([], node_id="n2") == []


# -- flags and resets ---------------------------------------------------------------


def test_set_enabled_writes_only_a_change(backend: Backend) -> None:
    reg = backend.reg
    with pytest.raises(EntryNotFoundError):
        reg.set_enabled("x", False)
    reg.put_entry(dynamic("x"), expected_version=None)
    off = reg.set_enabled("x", False)
    assert not off.enabled and off.version == 2 and reg.get_entry("x") == off
    assert reg.set_enabled("x", False) == off  # already disabled: nothing written
    on = reg.set_enabled("x", True)
    assert on.enabled and on.version == 3
    reg.sync_static([spec("s")])  # static entries can be paused too, and stay static
    assert not reg.set_enabled("s", False).enabled
    assert reg.snapshot().static == {"s"}


def test_pause_all_reaches_every_heartbeat(backend: Backend) -> None:
    reg = backend.reg
    _, v0 = versions(reg)
    assert not reg.is_paused()
    reg.set_paused(True)
    hb = reg.heartbeat(Node(id="n1"), ttl_ms=60_000)
    assert reg.is_paused() and hb.paused and reg.snapshot().paused
    assert hb.entries_version == v0 + 1
    reg.set_paused(False)
    assert not reg.is_paused() and not reg.heartbeat(Node(id="n1"), ttl_ms=60_000).paused


def test_reset_starts_an_entry_afresh_on_its_grid(backend: Backend) -> None:
    reg = backend.reg
    assert not reg.reset("x")
    reg.put_entry(dynamic("x", 5000), expected_version=None)
    reg.claim([tick("x", T0), tick("x", T0 + 5000)], node_id="n1", lock_ttl_ms=60_000)
    backend.advance(10)
    before = reg.server_ms()
    assert reg.reset("x")
    state = reg.states()["x"]
    assert (state.last_tick_ms, state.run_count, state.last_node) == (None, 0, None)
    assert state.anchor_ms is not None
    assert state.anchor_ms % 5000 == interval_phase_ms(NS, "x", 5000)
    assert before - 5000 < state.anchor_ms <= reg.server_ms()


def test_cleanup_erases_every_trace_of_an_entry(backend: Backend) -> None:
    reg = backend.reg
    reg.put_entry(dynamic("x"), expected_version=None)  # entry + anchor
    reg.claim([tick("x", T0)], node_id="n1", lock_ttl_ms=60_000)  # last, runs, node, pending
    reg.run_now("x")  # a request
    reg.put_entry(dynamic("y"), expected_version=None)
    reg.claim([tick("y", T0)], node_id="n1", lock_ttl_ms=60_000)
    assert reg.cleanup("x") == 7
    assert reg.get_entry("x") is None and "x" not in reg.states()
    assert [p.name for p in reg.pending()] == ["y"] and reg.requests() == []
    reg.remove_entry("y", tombstone=True)
    assert reg.cleanup("y") == 2  # the tombstone and the unsent claim
    assert reg.tombstones() == {} and reg.pending() == []


def test_snapshot_reads_nodes_entries_states_and_flags_at_once(backend: Backend) -> None:
    reg = backend.reg
    reg.heartbeat(Node(id="n1", status=NodeStatus.WORKING), ttl_ms=60_000)
    reg.sync_static([spec("a"), spec("b")])
    reg.put_entry(dynamic("c"), expected_version=None)
    reg.remove_entry("gone", tombstone=True)
    reg.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)
    snap = reg.snapshot()
    assert [n.id for n in snap.nodes] == ["n1"] and snap.nodes[0].status is NodeStatus.WORKING
    assert abs(snap.server_ms - reg.server_ms()) < 1000
    assert snap.names == ["a", "b", "c"] and set(snap.entries) == {"a", "b", "c"}
    assert snap.states == reg.states() and snap.states["a"].last_tick_ms == T0
    assert snap.static == {"a", "b"} and set(snap.tombstones) == {"gone"}
    assert (snap.paused, snap.bad, snap.reset_ms) == (False, {}, None)
    some = reg.snapshot(["a", "zzz"])
    assert some.names == ["a", "b", "c"]  # every name, for ownership
    assert set(some.entries) == {"a"} and set(some.states) == {"a"}
    none = reg.snapshot([])
    assert none.names == ["a", "b", "c"] and none.entries == {} and none.states == {}


def test_a_data_loss_shows_as_a_new_epoch_and_restored_anchors_are_set_once(
    backend: Backend,
) -> None:
    reg = backend.reg
    node = Node(id="n1", status=NodeStatus.WORKING)
    reg.sync_static([spec("a")])
    anchor = reg.states()["a"].anchor_ms
    assert anchor is not None
    old = reg.heartbeat(node, ttl_ms=60_000)
    assert reg.heartbeat(node, ttl_ms=60_000).epoch == old.epoch  # stable while data lives
    backend.advance(5)
    backend.lose_data()
    new = reg.heartbeat(node, ttl_ms=60_000)
    assert new.epoch and new.epoch != old.epoch
    assert new.entries_version < old.entries_version and new.reset_ms is None
    assert reg.entries() == ({}, {}) and reg.states() == {}
    reg.restore_anchors({"a": anchor}, reset_ms=T0)
    reg.restore_anchors({"a": anchor + 1, "b": 42}, reset_ms=T0 + 1)  # the first one wins
    assert reg.states()["a"].anchor_ms == anchor and reg.states()["b"].anchor_ms == 42
    assert reg.heartbeat(node, ttl_ms=60_000).reset_ms == T0
    assert reg.snapshot().reset_ms == T0
    reg.sync_static([spec("a")])
    assert reg.states()["a"].anchor_ms == anchor  # the static sync keeps the restored anchor


def test_an_unreachable_registry_raises_and_claims_nothing(backend: Backend) -> None:
    down = backend.unreachable()
    with pytest.raises(RegistryUnavailableError):
        down.claim([tick("a", T0)], node_id="n1", lock_ttl_ms=60_000)
    with pytest.raises(RegistryUnavailableError):
        down.heartbeat(Node(id="n1"), ttl_ms=60_000)


# -- the change feed ----------------------------------------------------------------


def trim_feed(backend: Backend) -> None:
    """Drop every record of the change feed (as ``XTRIM MAXLEN 0`` does)."""
    reg = backend.reg
    if isinstance(reg, MemoryRegistry):
        reg.trim_feed(0)
    else:
        assert isinstance(reg, RedisRegistry)
        reg.client.xtrim(reg.keys.feed, maxlen=0, approximate=False)


def test_each_write_is_one_feed_record_naming_its_entry_in_order(backend: Backend) -> None:
    reg = backend.reg
    start = reg.feed_position()
    reg.put_entry(dynamic("a"), expected_version=None)
    reg.put_entry(dynamic("b"), expected_version=None)
    reg.put_entry(dynamic("a", 2000), expected_version=1)
    reg.reset("b")
    reg.run_now("a")
    reg.remove_entry("b", tombstone=False)
    reg.set_paused(True)
    reg.cleanup("a")
    reg.sync_static([spec("s1"), spec("s2")])
    reg.sync_static([spec("s1")])
    page = reg.read_feed(start, 100)
    assert not page.gap
    assert [(r.kind, r.name) for r in page.records] == [
        ("put", "a"), ("put", "b"), ("put", "a"), ("state", "b"), ("run", "a"), ("del", "b"),
        ("pause", ""), ("del", "a"), ("put", "s1"), ("put", "s2"), ("del", "s2"),
    ]  # fmt: skip
    assert [r.seq for r in page.records] == list(range(start.seq + 1, start.seq + 12))
    assert page.head == page.position.seq == start.seq + 11 == versions(reg)[1]
    # Read in pages: each starts after the last record of the one before.
    first = reg.read_feed(start, 4)
    second = reg.read_feed(first.position, 4)
    assert [r.seq for r in first.records + second.records] == [r.seq for r in page.records[:8]]
    assert reg.read_feed(page.position, 100).records == []
    assert reg.feed_position() == page.position
    # A refused write records nothing.
    with pytest.raises(ConflictError):
        reg.put_entry(dynamic("s1"), expected_version=None)
    assert reg.read_feed(page.position, 100).records == []


def test_a_trimmed_or_reset_feed_is_a_gap(backend: Backend) -> None:
    reg = backend.reg
    reg.put_entry(dynamic("a"), expected_version=None)
    here = reg.feed_position()
    reg.put_entry(dynamic("b"), expected_version=None)
    trim_feed(backend)
    page = reg.read_feed(here, 100)
    assert page.gap and page.records == [] and page.position == here
    reg.put_entry(dynamic("c"), expected_version=None)  # records after the trim: still a gap
    assert reg.read_feed(here, 100).gap
    fresh = reg.feed_position()  # a reload starts again from here
    reg.put_entry(dynamic("d"), expected_version=None)
    assert [r.name for r in reg.read_feed(fresh, 100).records] == ["d"]
    backend.lose_data()
    reg.put_entry(dynamic("e"), expected_version=None)
    assert reg.read_feed(reg.read_feed(fresh, 100).position, 100).gap


def test_entries_are_read_by_pages_and_by_names(backend: Backend) -> None:
    reg = backend.reg
    names = [f"e{i:03d}" for i in range(250)]
    reg.put_entries([dynamic(n) for n in names])
    backend.write_raw("broken", "{not json")
    seen: set[str] = set()
    specs: dict[str, EntrySpec] = {}
    bad: dict[str, str] = {}
    cursor = 0
    for _ in range(1000):
        cursor, page, good, errors = reg.scan_entries(cursor, 50, lambda n: n.endswith(("7", "n")))
        seen.update(page)
        specs.update(good)
        bad.update(errors)
        if cursor == 0:
            break
    assert seen == {*names, "broken"}
    assert sorted(specs) == [n for n in names if n.endswith("7")]
    assert specs["e007"] == reg.get_entry("e007")
    assert list(bad) == ["broken"]
    good, errors = reg.get_entries(["e001", "nope", "broken", "e002"])
    assert sorted(good) == ["e001", "e002"] and list(errors) == ["broken"]
    assert reg.get_entries([]) == ({}, {})


def test_put_entries_writes_one_feed_record_per_entry_in_order(backend: Backend) -> None:
    """A bulk write is each entry's own write, also over several script calls: one feed
    record per entry written, in the order given; a refused entry records nothing; a
    name given twice sees the first write (refused: it exists; replaced: over it)."""
    from celery_dcron.registry.scripts import PUT_ENTRIES_MAX  # entries per script call

    reg = backend.reg
    reg.put_entry(dynamic("taken"), expected_version=None)
    reg.remove_entry("gone", tombstone=True)
    reg.sync_static([spec("s")])
    start = reg.feed_position()
    specs = [dynamic(f"e{i:04d}") for i in range(2 * PUT_ENTRIES_MAX + 5)]
    specs[7], specs[PUT_ENTRIES_MAX + 1], specs[-1] = dynamic("taken"), dynamic("gone"), spec("s")
    specs[PUT_ENTRIES_MAX - 1] = dynamic("twice")  # the last of the first script call
    specs[PUT_ENTRIES_MAX + 2] = dynamic("twice", 2000)  # in the second
    out = reg.put_entries(specs)
    assert len(out) == len(specs)
    refused = [(i, s.name) for i, s in enumerate(specs) if not isinstance(out[i], EntrySpec)]
    assert refused == [(7, "taken"), (PUT_ENTRIES_MAX + 1, "gone"), (PUT_ENTRIES_MAX + 2, "twice"),
                       (len(specs) - 1, "s")]  # fmt: skip
    assert all(isinstance(out[i], ConflictError) for i, _ in refused)
    written = [s.name for s, r in zip(specs, out, strict=True) if isinstance(r, EntrySpec)]
    page = reg.read_feed(start, 10_000)
    assert not page.gap
    assert [(r.kind, r.name) for r in page.records] == [("put", name) for name in written]
    assert [r.seq for r in page.records] == list(range(start.seq + 1, page.head + 1))
    assert page.head == start.seq + len(written) == versions(reg)[1]
    assert reg.get_entry("twice") == dynamic("twice").with_changes(version=1)
    assert reg.get_entry("taken") == dynamic("taken").with_changes(version=1)  # kept
    # replace: the second write of a name is made over the first
    again = reg.put_entries([dynamic("twice", 3000), dynamic("twice", 4000)], replace=True)
    assert [r.version if isinstance(r, EntrySpec) else r for r in again] == [2, 3]
    assert reg.get_entry("twice") == again[1]
    assert [r.name for r in reg.read_feed(page.position, 100).records] == ["twice", "twice"]
