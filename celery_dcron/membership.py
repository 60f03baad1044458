"""Membership: this instance's heartbeat and status, the live-node view, events.

The heartbeat is sent by the scheduling loop itself (never by a background
thread), so an instance whose loop hangs stops heartbeating and loses its share
after ``dcron_node_ttl``. A background thread only listens to pub/sub and wakes
the loop early; polling through the heartbeat's versions is the fallback.

Node ids survive restarts: an instance joins under ``dcron_node_id``, or by default
``<host>:<slot>`` with the lowest slot no live process of this host holds. Each process
is one *incarnation* of its id (a token: pid, process start time, random). A new
incarnation takes over an id held by a dead one at once (same host, pid gone or
reused: no wait for the node TTL), and with it the entries (ownership hashes the id)
and the unsent claims of its predecessor. Two live processes never share an id: an
explicit id held by a live one is refused, and an incarnation whose id was taken over
learns it from its next heartbeat and stops (``node_superseded``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace

from .clock import ManualClock, RedisClock
from .entries import Node, NodeStatus
from .exceptions import ConfigurationError, RegistryUnavailableError
from .logfields import log_event
from .registry import Heartbeat, Registry

__all__ = [
    "EventListener",
    "Membership",
    "PidAlive",
    "incarnation_token",
    "janitor_id",
    "process_alive",
]

logger = logging.getLogger(__name__)


#: ``pid_alive(node)``: whether the process of ``node``, a record of this host, runs.
PidAlive = Callable[[Node], bool]


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot: field 22 of
    ``/proc/<pid>/stat``), "" where unknown (no such process, no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else ""


def incarnation_token(pid: int | None = None) -> str:
    """``"<pid>:<start>:<random>"``: this process, told apart from a later process
    that reuses its pid (or its container's pid 1), and from another engine in it."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start(pid)}:{uuid.uuid4().hex[:8]}"


def process_alive(node: Node) -> bool:
    """Whether the process of ``node`` (a record of this host) still runs: its pid
    exists and, when both start times are known, started when its token says (else the
    pid was reused). When in doubt, alive."""
    pid_text, _, rest = node.token.partition(":")
    start = rest.partition(":")[0]
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    except OSError:
        return True
    now_start = process_start(pid)
    return not (start and now_start and now_start != start)


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
        node_id: str | None,
        ttl_ms: int,
        weight: float = 1.0,
        version: str = "",
        pid_alive: PidAlive = process_alive,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.ttl_ms = ttl_ms
        #: ``dcron_node_id``; None: ``<host>:<slot>``, the slot chosen by :meth:`join`
        self.explicit_id = node_id
        self.pid_alive = pid_alive
        host = socket.gethostname()
        self.node = Node(
            id=node_id if node_id is not None else f"{host}:0",
            host=host,
            pid=os.getpid(),
            version=version,
            status=NodeStatus.STARTING,
            weight=weight,
            token=incarnation_token(),
        )
        #: whether :meth:`join` won the id (once per incarnation)
        self.joined = False
        #: another incarnation took this id over: this one claims and publishes nothing
        self.superseded = False
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

    def join(self) -> None:
        """Take this incarnation's id: ``dcron_node_id``, or the lowest free slot of this
        host. An id held by a dead incarnation of this host is taken over at once.

        Raises :class:`ConfigurationError` when ``dcron_node_id`` is held by a live
        process (on this host, or on another with an unexpired heartbeat)."""
        if not self.node.started_ms:
            self.node = replace(self.node, started_ms=self.clock.now_ms())
        slot = 0
        while not self._take(
            self.explicit_id if self.explicit_id is not None else f"{self.node.host}:{slot}"
        ):
            slot += 1
        self.joined = True

    def _take(self, node_id: str) -> bool:
        node = replace(self.node, id=node_id, heartbeat_ms=self.clock.now_ms())
        joined = self.registry.join(node, self.ttl_ms)
        holder = joined.holder
        if not joined.won and holder is not None and self._dead(holder):
            joined = self.registry.join(node, self.ttl_ms, dead_token=holder.token)
            holder = joined.holder
        if not joined.won:
            if self.explicit_id is None:
                return False
            where = f"{holder.host}:{holder.pid}" if holder is not None else "unknown"
            raise ConfigurationError(
                f"dcron_node_id: {node_id!r} is held by a running instance ({where}); "
                "two live instances cannot share a node id: give each instance its own "
                "dcron_node_id, or leave it unset (None) for a per-host default"
            )
        self.node = node
        if holder is not None and holder.token != node.token:
            log_event(
                logger, logging.INFO, "node_reclaimed",
                "dcron: node %(node)s taken over from its previous incarnation "
                "%(previous)s (%(previous_host)s pid %(previous_pid)s)",
                node=node_id, previous=holder.token, previous_host=holder.host,
                previous_pid=holder.pid,
            )  # fmt: skip
        return True

    def _dead(self, holder: Node) -> bool:
        """Whether ``holder`` is a dead incarnation this host can prove dead."""
        return bool(holder.token) and holder.host == self.node.host and not self.pid_alive(holder)

    def beat(self) -> tuple[Heartbeat, bool, bool]:
        """Send a heartbeat. Returns it and whether members / entries changed since.
        The first one joins (:meth:`join`). A heartbeat refused because another
        incarnation took this id sets :attr:`superseded`."""
        if not self.joined:
            self.join()
        now = self.clock.now_ms()
        if not self.node.started_ms:
            self.node = replace(self.node, started_ms=now)
        self.node = replace(self.node, heartbeat_ms=now)
        sent = self.clock.begin()
        hb = self.registry.heartbeat(self.node, self.ttl_ms)
        self.clock.observe(hb.server_ms, sent, self.clock.begin())
        if hb.superseded:
            self.mark_superseded()
        members_changed = hb.members_version != self.members_version
        entries_changed = hb.entries_version != self.entries_version
        self.members_version = hb.members_version
        self.entries_version = hb.entries_version
        return hb, members_changed, entries_changed

    def mark_superseded(self) -> None:
        """Another incarnation holds this id: stop for good (claim, publish, heartbeat
        and deregister nothing more: the id is no longer ours)."""
        if not self.superseded:
            self.superseded = True
            log_event(
                logger, logging.ERROR, "node_superseded",
                "dcron: node %(node)s was taken over by another process (this one was "
                "thought dead); it stops scheduling: restart it",
                node=self.node.id,
            )  # fmt: skip
        self.set_status(NodeStatus.LEAVING)

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
        if self.superseded or not self.joined:
            return  # the id is not ours (any more, or yet): deregister nothing
        self.set_status(NodeStatus.LEAVING)
        try:
            if self.registry.heartbeat(self.node, self.ttl_ms).superseded:
                self.mark_superseded()
                return
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
