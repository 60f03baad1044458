"""Membership: this instance's heartbeat and status, the live-node view, events.

The heartbeat is sent by the scheduling loop itself (never by a background
thread), so an instance whose loop hangs stops heartbeating and loses its share
after ``dcron_node_ttl``. A background thread only listens to pub/sub and wakes
the loop early; polling through the heartbeat's versions is the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import replace

from .clock import ManualClock, RedisClock
from .entries import Node, NodeStatus
from .exceptions import RegistryUnavailableError
from .logfields import log_event
from .registry import Heartbeat, Registry

__all__ = ["EventListener", "Membership", "janitor_id"]

logger = logging.getLogger(__name__)


def janitor_id(nodes: Iterable[Node]) -> str | None:
    """The node that does the namespace's chores (drop the unsent claims and the run-now
    requests of entries that no longer exist): the working node with the lowest id, so
    that exactly one node does them in a settled cluster."""
    return min((n.id for n in nodes if n.status is NodeStatus.WORKING), default=None)


class Membership:
    """This node's registration, and what it knows of the others."""

    def __init__(
        self,
        registry: Registry,
        clock: RedisClock | ManualClock,
        *,
        node_id: str,
        ttl_ms: int,
        weight: float = 1.0,
        version: str = "",
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.ttl_ms = ttl_ms
        self.node = Node(
            id=node_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=version,
            status=NodeStatus.STARTING,
            weight=weight,
        )
        self.members_version = -1
        self.entries_version = -1
        self.nodes: list[Node] = []

    @property
    def status(self) -> NodeStatus:
        return self.node.status

    def set_status(self, status: NodeStatus) -> None:
        if status is not self.node.status:
            logger.info(
                "dcron: node %s status %s -> %s", self.node.id, self.node.status.value, status.value
            )
            self.node = replace(self.node, status=status)

    def beat(self) -> tuple[Heartbeat, bool, bool]:
        """Send a heartbeat. Returns it and whether members / entries changed since."""
        now = self.clock.now_ms()
        if not self.node.started_ms:
            self.node = replace(self.node, started_ms=now)
        self.node = replace(self.node, heartbeat_ms=now)
        sent = self.clock.begin()
        hb = self.registry.heartbeat(self.node, self.ttl_ms)
        self.clock.observe(hb.server_ms, sent, self.clock.begin())
        members_changed = hb.members_version != self.members_version
        entries_changed = hb.entries_version != self.entries_version
        self.members_version = hb.members_version
        self.entries_version = hb.entries_version
        return hb, members_changed, entries_changed

    def refresh_nodes(self) -> list[Node]:
        nodes, _ = self.registry.nodes()
        if [n.id for n in nodes] != [n.id for n in self.nodes] or [n.status for n in nodes] != [
            n.status for n in self.nodes
        ]:
            log_event(
                logger, logging.INFO, "nodes", "dcron: nodes %(listing)s",
                text={"listing": ", ".join(f"{n.id}({n.status.value})" for n in nodes) or "none"},
                node=self.node.id, nodes={n.id: n.status.value for n in nodes},
            )  # fmt: skip
        self.nodes = nodes
        return nodes

    def working_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.status is NodeStatus.WORKING]

    def is_janitor(self) -> bool:
        """Whether this node does the namespace's chores (see :func:`janitor_id`)."""
        return janitor_id(self.nodes) == self.node.id

    def leave(self) -> None:
        """Hand over at once: status ``leaving``, then deregister (both notify the others)."""
        self.set_status(NodeStatus.LEAVING)
        try:
            self.registry.heartbeat(self.node, self.ttl_ms)
            self.registry.leave(self.node.id)
            logger.info("dcron: node %s left the cluster", self.node.id)
        except RegistryUnavailableError as exc:
            logger.warning(
                "dcron: node %s could not deregister (%s); it expires after the node TTL",
                self.node.id,
                exc,
            )


class EventListener(threading.Thread):
    """Listens to the registry's pub/sub channel and wakes the scheduling loop.

    On Redis Sentinel it also asks the sentinels where the master is, every
    ``master_check_s``: when it moved, the registry's connections to the old master are
    dropped, the loop is told to reload everything, and the subscription moves too.
    """

    def __init__(
        self, registry: Registry, wake: threading.Event, *, master_check_s: float = 1.0
    ) -> None:
        super().__init__(name="dcron-events", daemon=True)
        self.registry = registry
        self.wake = wake
        self.master_check_s = master_check_s
        self.members_dirty = threading.Event()
        self.entries_dirty = threading.Event()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            pubsub = None
            try:
                pubsub = self.registry.pubsub()
                backoff = 0.1
                check_at = time.monotonic() + self.master_check_s
                while not self._stopping.is_set():
                    if time.monotonic() >= check_at:
                        check_at = time.monotonic() + self.master_check_s
                        if self.registry.follow_master():
                            logger.warning("dcron: the Redis master moved (Sentinel): reconnecting")
                            self.members_dirty.set()
                            self.entries_dirty.set()
                            self.wake.set()
                            break  # subscribe again, on the new master
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    data = message.get("data")
                    if data == "members":
                        self.members_dirty.set()
                    elif data == "entries":
                        self.entries_dirty.set()
                    self.wake.set()
            except Exception as exc:
                logger.debug("dcron: event listener reconnecting after %r", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        logger.debug("dcron: event listener stopped at %s", time.monotonic())
