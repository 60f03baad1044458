"""Membership rules that need no Redis: the janitor, and when a heartbeat is light or full
(on the in-memory registry and a manual clock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest

from celery_dcron.clock import ManualClock
from celery_dcron.entries import Node, NodeStatus
from celery_dcron.exceptions import RegistryUnavailableError
from celery_dcron.membership import (
    FULL_HEARTBEAT_EVERY_MS,
    EventListener,
    Membership,
    heard_on,
    janitor_id,
)
from celery_dcron.registry import Heartbeat
from celery_dcron.registry.memory import MemoryRegistry

T0 = 1_800_000_000_000
TTL_MS = 2500
#: the default heartbeat interval: a third of the TTL
EVERY_MS = 833


def test_the_janitor_is_the_working_node_with_the_lowest_id() -> None:
    nodes = [
        Node(id="b", status=NodeStatus.WORKING),
        Node(id="a", status=NodeStatus.STARTING),
        Node(id="c", status=NodeStatus.WORKING),
        Node(id="0", status=NodeStatus.LEAVING),
    ]
    assert janitor_id(nodes) == "b"
    assert janitor_id(nodes[1:2]) is None
    assert janitor_id([]) is None


# -- light and full heartbeats ----------------------------------------------------------


class Spy(MemoryRegistry):
    """The memory registry, recording each heartbeat: "full", "read" (a light one that
    reads the expiries) or "touch" (a light one that does not)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.calls: list[str] = []
        #: the next touch takes this long (a stall while it runs)
        self.touch_takes_ms = 0

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        self.calls.append("full")
        return super().heartbeat(node, ttl_ms)

    def touch(
        self, node_id: str, expiry_ms: int, *, read_alive: bool = True
    ) -> dict[str, int] | None:
        self.calls.append("read" if read_alive else "touch")
        alive = super().touch(node_id, expiry_ms, read_alive=read_alive)
        self.clock.advance(self.touch_takes_ms)  # type: ignore[attr-defined]
        self.touch_takes_ms = 0
        return alive

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


class World:
    """One registry and clock, memberships on them, and an event listener that is
    subscribed (events arrive) but not started: tests say when it hears one."""

    def __init__(self) -> None:
        self.clock = ManualClock(start_ms=T0)
        self.registry = Spy(self.clock)
        self.listener = EventListener(self.registry, threading.Event())  # type: ignore[arg-type]
        self.listener.subscribed = True

    def member(self, node_id: str, **kw: object) -> Membership:
        return Membership(self.registry, self.clock, node_id=node_id, ttl_ms=TTL_MS, **kw)  # type: ignore[arg-type]

    def event(self) -> None:
        self.listener.hear()

    def round(self, *members: Membership) -> list[str]:
        """One heartbeat interval later, each member beats; the heartbeats sent."""
        self.clock.advance(EVERY_MS)
        for m in members:
            m.beat()
        return self.registry.take()


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.listener.subscribed = False


def settle(world: World, *members: Membership) -> None:
    """Each member joins, then each sends a full heartbeat: they know each other."""
    for m in members:
        m.beat()
    world.clock.advance(EVERY_MS)
    for m in members:
        m.beat(full=True)
    world.registry.take()


def test_a_heartbeat_is_light_while_nothing_calls_for_a_full_one(world: World) -> None:
    a = world.member("a")
    hb, members_changed, entries_changed = a.beat()
    assert world.registry.take() == ["full"] and members_changed and entries_changed
    kinds = []
    for _ in range(6):
        world.clock.advance(EVERY_MS)
        light, members_changed, entries_changed = a.beat()
        assert not members_changed and not entries_changed
        assert light.server_ms == world.clock.now_ms()
        assert (light.members_version, light.epoch) == (hb.members_version, hb.epoch)
        assert dict(world.registry._data.alive) == {"a": world.clock.now_ms() + TTL_MS}
        kinds += world.registry.take()
    # alone, it reads the expiries now and then anyway: a join it missed shows there
    assert kinds == ["touch", "touch", "read"] * 2


def test_without_a_subscribed_listener_every_heartbeat_is_full(world: World) -> None:
    a = world.member("a")
    world.listener.subscribed = False
    assert heard_on(world.registry) is None  # type: ignore[arg-type]
    for _ in range(3):
        a.beat()
        world.clock.advance(EVERY_MS)
    assert world.registry.take() == ["full"] * 3


def test_it_is_full_when_this_node_is_no_longer_registered(world: World) -> None:
    a = world.member("a")
    settle(world, a)
    epoch = world.registry._data.epoch
    world.registry.lose_data()  # a Redis restart without its data
    world.clock.advance(EVERY_MS)
    hb, *_ = a.beat()
    light, full = world.registry.take()
    assert light in ("touch", "read") and full == "full"  # the light one found nothing
    assert hb.epoch != epoch  # what the recovery needs to see
    assert [n.id for n in world.registry.nodes()[0]] == ["a"]


def test_it_is_full_when_a_peers_expiry_passed(world: World) -> None:
    a, b = world.member("a"), world.member("b")
    settle(world, a, b)
    b_expiry = world.registry._data.alive["b"]
    calls = []
    while True:  # b died: only a heartbeats
        # what the engine does: the next heartbeat at the interval or at b's expiry
        world.clock.set(min(world.clock.now_ms() + EVERY_MS, b_expiry + 20))
        if world.clock.now_ms() > b_expiry:
            break
        hb, members_changed, _ = a.beat()
        assert not members_changed and hb.peer_expiry_ms is not None
        assert hb.peer_expiry_ms <= b_expiry  # what it knows: b's, or an older one
        calls += world.registry.take()
    assert "full" not in calls and "read" in calls
    hb, members_changed, _ = a.beat()
    assert world.registry.take() == ["read", "full"]
    assert members_changed and hb.peer_expiry_ms is None  # the full one forgot b
    assert [n.id for n in world.registry.nodes()[0]] == ["a"]


def test_a_live_peers_expiry_is_read_before_it_passes(world: World) -> None:
    a, b, c = world.member("a"), world.member("b"), world.member("c")
    settle(world, a, b, c)
    calls = []
    for _ in range(11):  # all alive: no heartbeat comes early, and none is full
        world.round(b, c)
        hb, *_ = a.beat()
        calls += world.registry.take()
        assert hb.peer_expiry_ms is not None
        assert hb.peer_expiry_ms > world.clock.now_ms() + EVERY_MS
    assert "full" not in calls
    assert calls.count("read") <= calls.count("touch") + 3  # about every other one


def test_it_is_full_when_the_set_of_nodes_changed(world: World) -> None:
    a, b = world.member("a"), world.member("b")
    settle(world, a, b)
    c = world.member("c")
    c.beat()  # joins; the event it publishes is lost
    world.registry.take()
    for _ in range(3):
        world.round(b, c)
        _, members_changed, _ = a.beat()
        calls = world.registry.take()
        if members_changed:
            break
    assert members_changed and calls == ["read", "full"]  # at its next read
    c.leave()  # the same, when a node leaves
    for _ in range(3):
        world.round(b)
        _, members_changed, _ = a.beat()
        calls = world.registry.take()
        if members_changed:
            break
    assert members_changed and calls == ["read", "full"]


def test_it_is_full_after_an_event(world: World) -> None:
    a = world.member("a")
    settle(world, a)
    world.registry.set_paused(True)  # publishes "entries": the listener hears it
    world.event()
    world.clock.advance(EVERY_MS)
    hb, _, entries_changed = a.beat()
    assert world.registry.take() == ["full"] and hb.paused and entries_changed
    world.clock.advance(EVERY_MS)
    assert a.beat()[0].paused and world.registry.take() == ["touch"]
    # a new subscription counts as an event: some may have been lost before it
    world.listener.subscribed = False
    other = EventListener(world.registry, threading.Event())  # type: ignore[arg-type]
    other.hear()
    other.subscribed = True
    world.clock.advance(EVERY_MS)
    a.beat()
    assert world.registry.take() == ["full"]


def test_it_is_full_every_so_often(world: World) -> None:
    a = world.member("a")
    a.beat()
    full_at = [world.clock.now_ms()]
    for _ in range(40):
        world.clock.advance(EVERY_MS)
        a.beat()
        if world.registry.take()[-1] == "full":
            full_at.append(world.clock.now_ms())
    gaps = [later - earlier for earlier, later in pairwise(full_at)]
    assert gaps and all(
        FULL_HEARTBEAT_EVERY_MS <= g < FULL_HEARTBEAT_EVERY_MS + EVERY_MS for g in gaps
    )


def test_it_is_full_after_a_stall_or_a_failure(world: World) -> None:
    a = world.member("a")
    settle(world, a)
    world.clock.advance(TTL_MS // 2 + 1)  # the loop stalled
    a.beat()
    assert world.registry.take() == ["full"]
    world.clock.advance(EVERY_MS)
    world.registry.touch_takes_ms = TTL_MS // 2 + 1  # it stalls during a light one
    a.beat()
    assert world.registry.take() == ["touch", "full"]
    world.clock.advance(EVERY_MS)
    world.registry.available = False
    with pytest.raises(RegistryUnavailableError):
        a.beat()
    world.registry.available = True
    world.registry.take()
    world.clock.advance(100)
    a.beat()
    assert world.registry.take() == ["full"]


def test_a_status_change_is_a_full_heartbeat(world: World) -> None:
    a = world.member("a")
    settle(world, a)
    a.set_status(NodeStatus.WORKING)
    world.clock.advance(EVERY_MS)
    _, members_changed, _ = a.beat()
    assert world.registry.take() == ["full"] and members_changed
    assert [n.status for n in world.registry.nodes()[0]] == [NodeStatus.WORKING]
    world.clock.advance(EVERY_MS)
    a.beat()
    assert world.registry.take() == ["touch"]


def test_a_stalled_incarnation_finds_out_it_was_superseded_at_its_next_heartbeat(
    world: World,
) -> None:
    old = world.member("a")
    settle(world, old)
    world.clock.advance(TTL_MS + 1)  # frozen past its TTL: the id expires
    new = world.member("a")
    new.beat()  # a new incarnation takes the expired id over
    assert new.joined and new.node.token != old.node.token
    old.beat()  # it wakes up: this heartbeat is full, and refused
    assert old.superseded and old.status is NodeStatus.LEAVING
    ((node,),) = [world.registry.nodes()[0]]
    assert node.token == new.node.token


def test_a_live_incarnation_taken_for_dead_finds_out_from_the_event(world: World) -> None:
    old = world.member("a")
    settle(world, old)
    # its pid looked dead from where the new one runs (another pid namespace, say)
    new = world.member("a", pid_alive=lambda node: False)
    new.beat()
    world.event()  # the JOIN's "members"
    world.clock.advance(EVERY_MS)
    old.beat()
    assert old.superseded
    assert world.registry.take()[-1] == "full"
