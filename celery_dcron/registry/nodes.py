"""Membership in Redis: heartbeats (full and light), leaving, the live nodes and their
status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .. import clients
from ..entries import Node
from ..exceptions import UnsupportedError
from . import scripts
from .codec import (
    CrashCheck,
    Heartbeat,
    Joined,
    decode_crash_check,
    decode_heartbeat,
    decode_joined,
    decode_nodes,
    dumps,
)
from .transport import Store

__all__ = ["NodeStore"]


class NodeStore(Store):
    """The ``nodes``, ``status`` and ``alive`` keys, and the members version."""

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        """Refresh ``node`` for ``ttl_ms`` and expire dead nodes; returns the server
        time, versions and cluster flags."""
        args = [
            node.id, _record(node, ttl_ms), node.status.value, ttl_ms, self.keys.events,
            node.token,
        ]  # fmt: skip
        return decode_heartbeat(self.transport.call(scripts.HEARTBEAT, args))

    def touch(
        self, node_id: str, expiry_ms: int, *, read_alive: bool = True
    ) -> dict[str, int] | None:
        """The light heartbeat: ``ZADD alive XX CH`` (and, with ``read_alive``, ``ZRANGE
        alive WITHSCORES``) in one round trip, 1 or 2 commands. None when ``node_id`` is
        not in ``alive`` (or already had that expiry): nothing was written."""
        k = self.keys
        pipe = self.transport.pipeline()
        pipe.zadd(k.alive, {node_id: expiry_ms}, xx=True, ch=True)
        if read_alive:
            pipe.zrange(k.alive, 0, -1, withscores=True)
        changed, *alive = self.transport.execute(pipe)
        if not changed:
            return None
        return {member: int(score) for member, score in alive[0]} if alive else {}

    def join(self, node: Node, ttl_ms: int, *, dead_token: str = "") -> Joined:
        """Register a new incarnation under ``node.id`` if the id is free, expired, its
        own, or held by the incarnation ``dead_token`` (proved dead by the caller)."""
        args = [
            node.id, _record(node, ttl_ms), node.status.value, ttl_ms, self.keys.events,
            node.token, dead_token,
        ]  # fmt: skip
        return decode_joined(self.transport.call(scripts.JOIN, args))

    def leave(self, node_id: str) -> None:
        """Remove ``node_id`` at once (a graceful stop hands its entries over)."""
        self.transport.call(scripts.LEAVE, [node_id, self.keys.events])

    def subscribers(self, node_ids: Sequence[str]) -> dict[str, int]:
        """How many subscribers each node's channel has (``PUBSUB NUMSUB``, one command):
        0 once its process died. Raises :class:`UnsupportedError` on Redis Cluster (the
        count is per shard) or when Redis refuses the command (an ACL, a proxy)."""
        if not node_ids:
            return {}
        t = self.transport
        if clients.is_cluster(t.client):
            raise UnsupportedError(
                "PUBSUB NUMSUB counts the subscribers of one shard on Redis Cluster",
                command="PUBSUB NUMSUB",
            )
        channels = [self.keys.node_channel(node_id) for node_id in node_ids]

        def numsub() -> Any:
            try:
                return t.client.pubsub_numsub(*channels)
            except redis.exceptions.ResponseError as exc:  # refused: not an outage
                return exc

        reply = t.run(numsub)
        if isinstance(reply, Exception):
            raise UnsupportedError(
                f"Redis refused PUBSUB NUMSUB: {reply}", command="PUBSUB NUMSUB"
            ) from reply
        return {node_id: int(count) for node_id, (_, count) in zip(node_ids, reply, strict=True)}

    def expire_crashed(self, node_ids: Sequence[str], *, grace_ms: int) -> CrashCheck:
        """Of ``node_ids`` (nodes whose channel has no subscriber), take for dead those
        whose heartbeat is also overdue: older than their heartbeat interval plus
        ``grace_ms`` (server clock); their expiry becomes now, and the next full
        heartbeat forgets them."""
        if not node_ids:
            return CrashCheck()
        reply = self.transport.call(scripts.EXPIRE_CRASHED, [grace_ms, *node_ids])
        return decode_crash_check(reply)

    def nodes(self) -> tuple[list[Node], int]:
        """Live nodes (heartbeat not expired) with their status, and the server time."""
        pipe = self.transport.pipeline()
        self.queue_nodes(pipe)
        return decode_nodes(*self.transport.execute(pipe))

    def queue_nodes(self, pipe: Any) -> None:
        """Add what :func:`~celery_dcron.registry.codec.decode_nodes` takes to a
        pipeline: nodes, statuses, heartbeat expiries and the server time."""
        k = self.keys
        pipe.hgetall(k.nodes)
        pipe.hgetall(k.status)
        pipe.zrange(k.alive, 0, -1, withscores=True)
        self.transport.queue_time(pipe)


def _record(node: Node, ttl_ms: int) -> str:
    """The stored node record: the node's JSON and its TTL (readers take its heartbeat
    time from its expiry, so a heartbeat rewrites the record only when it changed)."""
    return dumps({**node.to_json(), "ttl_ms": ttl_ms})
