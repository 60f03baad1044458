"""Cluster-wide signals in Redis: the events channel and the pause flag."""

from __future__ import annotations

from typing import Any

from .. import clients
from . import scripts
from .transport import Store

__all__ = ["EventStore"]


class EventStore(Store):
    """The ``events`` channel (``"members"`` | ``"entries"`` wake-ups) and ``meta``'s
    ``paused`` flag."""

    def pubsub(self) -> Any:
        """A subscription to the namespace's events (called again after each failure).

        On Redis Cluster the subscription goes to the node of the channel's slot; the
        slot map is read afresh first, or after a failover it could still name the dead
        node (only commands, not subscriptions, refresh it).
        """
        client = self.transport.client
        clients.refresh_cluster_map(client)
        ps = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
        ps.subscribe(self.keys.events)
        return ps

    def watch(self, subscription: Any, node_id: str) -> None:
        """Subscribe ``subscription`` (from :meth:`pubsub`) to the channel of ``node_id``
        too: held while this process runs, dropped by Redis when it dies."""
        subscription.subscribe(self.keys.node_channel(node_id))

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) the whole namespace: no instance claims anything while set."""
        self.transport.call(scripts.SET_PAUSED, [self.keys.events, "1" if paused else "0"])

    def is_paused(self) -> bool:
        t = self.transport
        return bool(t.run(lambda: t.client.hget(self.keys.meta, "paused")) == "1")
