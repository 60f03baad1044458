"""Membership: join, heartbeat, leave, nodes, the clock, pub/sub."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ...entries import (
    Node,
    NodeStatus,
)
from ...exceptions import UnsupportedError

# The registry's record types: pure frozen dataclasses (the module that holds them
# imports redis; the memory registry uses nothing else of it).
from ..codec import (
    CrashCheck,
    Heartbeat,
    Joined,
)

if TYPE_CHECKING:
    pass
from .base import _MEMBERS, MemorySubscription, _Base


class _Nodes(_Base):
    # -- membership ----------------------------------------------------------------

    def load_scripts(self) -> None:
        with self._op():
            pass

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        with self._op() as now:
            d = self._data
            changed = False
            for node_id, expiry in list(d.alive.items()):
                if expiry <= now:
                    changed = True
                    if node_id != node.id:
                        del d.alive[node_id]
                        d.nodes.pop(node_id, None)
                        d.status.pop(node_id, None)
                        d.ttl.pop(node_id, None)
            held = d.nodes.get(node.id)
            superseded = bool(node.token and held and held.token and held.token != node.token)
            if not superseded:
                if d.status.get(node.id) != node.status.value or node.id not in d.alive:
                    changed = True
                # the heartbeat time is the registry's, as Redis derives it from the expiry
                d.nodes[node.id] = replace(node, heartbeat_ms=now)
                d.status[node.id] = node.status.value
                d.alive[node.id] = now + ttl_ms
                d.ttl[node.id] = ttl_ms
            if changed:
                self._notify(_MEMBERS)
            if d.epoch is None:  # Redis: TIME as "<s>.<us>"; a loss count stands in for µs
                d.epoch = f"{now // 1000}.{now % 1000 * 1000 + self._losses % 1000}"
            peers = [exp for node_id, exp in d.alive.items() if node_id != node.id]
            return Heartbeat(
                server_ms=now,
                members_version=d.members_version,
                entries_version=d.entries_version,
                paused=d.paused,
                epoch=d.epoch,
                reset_ms=d.reset_ms,
                peer_expiry_ms=min(peers) if peers else None,
                superseded=superseded,
                alive=tuple(
                    (i, exp) for i, exp in sorted(d.alive.items()) if i != node.id or not superseded
                ),
            )

    def touch(
        self, node_id: str, expiry_ms: int, *, read_alive: bool = True
    ) -> dict[str, int] | None:
        with self._op() as now:
            d = self._data
            if d.alive.get(node_id, expiry_ms) == expiry_ms:
                return None  # not registered (or no change): Redis' ZADD XX CH says 0
            d.alive[node_id] = expiry_ms
            held = d.nodes.get(node_id)
            if held is not None:
                d.nodes[node_id] = replace(held, heartbeat_ms=now)
            return dict(d.alive) if read_alive else {}

    def join(self, node: Node, ttl_ms: int, *, dead_token: str = "") -> Joined:
        with self._op() as now:
            d = self._data
            held = d.nodes.get(node.id)
            if (
                held is not None
                and self._is_alive(node.id, now)
                and held.token != node.token
                and (not dead_token or held.token != dead_token)
            ):
                return Joined(won=False, holder=held)
            d.nodes[node.id] = node
            d.status[node.id] = node.status.value
            d.alive[node.id] = now + ttl_ms
            d.ttl[node.id] = ttl_ms
            self._notify(_MEMBERS)
            return Joined(won=True, holder=held)

    def leave(self, node_id: str) -> None:
        with self._op():
            d = self._data
            d.alive.pop(node_id, None)
            d.nodes.pop(node_id, None)
            d.status.pop(node_id, None)
            d.ttl.pop(node_id, None)
            self._notify(_MEMBERS)

    def nodes(self) -> tuple[list[Node], int]:
        with self._op() as now:
            return self._live_nodes(now), now

    def _live_nodes(self, now: int) -> list[Node]:
        d = self._data
        return [
            replace(node, status=NodeStatus(d.status.get(node_id, node.status.value)))
            for node_id, node in sorted(d.nodes.items())
            if self._is_alive(node_id, now)
        ]

    def subscribers(self, node_ids: Sequence[str]) -> dict[str, int]:
        with self._op():
            if not node_ids:
                return {}
            if self.numsub_refused:
                raise UnsupportedError(
                    "memory registry: PUBSUB NUMSUB refused", command="PUBSUB NUMSUB"
                )
            return {
                node_id: int(node_id in self.connected)
                + sum(node_id in sub.watching for sub in self._subscribers)
                for node_id in node_ids
            }

    def expire_crashed(self, node_ids: Sequence[str], *, grace_ms: int) -> CrashCheck:
        with self._op() as now:
            d = self._data
            taken: list[str] = []
            soonest: int | None = None
            for node_id in node_ids:
                expiry = d.alive.get(node_id)
                node = d.nodes.get(node_id)
                ttl = d.ttl.get(node_id)
                if expiry is None or node is None or ttl is None or expiry <= now:
                    continue
                if not node.watch_ms:
                    continue
                wait = (expiry - ttl) + node.watch_ms + grace_ms - now
                if wait < 0:
                    d.alive[node_id] = now
                    taken.append(node_id)
                elif soonest is None or wait < soonest:
                    soonest = wait
            return CrashCheck(taken=tuple(taken), overdue_in_ms=soonest)

    def watch(self, subscription: object, node_id: str) -> None:
        with self._op():
            if isinstance(subscription, MemorySubscription):
                subscription.watching.add(node_id)

    def pubsub(self) -> MemorySubscription:
        with self._op():
            sub = MemorySubscription(self)
            self._subscribers.append(sub)
            return sub

    def follow_master(self) -> bool:
        return False

    def server_ms(self) -> int:
        with self._op() as now:
            return now
