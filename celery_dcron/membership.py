"""Membership: this instance's heartbeat and status, the live-node view, events.

The heartbeat is sent by the scheduling loop itself (never by a background
thread), so an instance whose loop hangs stops heartbeating and loses its share
after ``dcron_node_ttl``. A background thread only listens to pub/sub and wakes
the loop early; polling through the heartbeat's versions is the fallback.

Most heartbeats are *light* (:meth:`Registry.touch`: the node's expiry, and every other
heartbeat or so the others' expiries, 1-2 Redis commands); a *full* one (the HEARTBEAT
script: forget dead nodes, write a changed record, check the incarnation, read versions,
pause flag, epoch and server time, 6 commands) goes out whenever a light one could miss
something: see :meth:`Membership.beat`. Light heartbeats rely on the events: only while an
:class:`EventListener` of the registry is subscribed, else every heartbeat is full.

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
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from .clock import ManualClock, RedisClock
from .entries import Node, NodeStatus
from .exceptions import ConfigurationError, RegistryUnavailableError
from .logfields import log_event
from .registry import Heartbeat, Registry

__all__ = [
    "FULL_HEARTBEAT_EVERY_MS",
    "EventListener",
    "Membership",
    "PidAlive",
    "heard_on",
    "incarnation_token",
    "janitor_id",
    "process_alive",
]

logger = logging.getLogger(__name__)


#: ``pid_alive(node)``: whether the process of ``node``, a record of this host, runs.
PidAlive = Callable[[Node], bool]

#: A full heartbeat at least this often (cluster time, ms), light ones in between: it
#: refreshes the clock offset, reads the versions, the pause flag and the epoch (the
#: fallback for events lost on the way) and checks that this incarnation still holds its
#: id (the fallback for a "members" event lost on the way).
FULL_HEARTBEAT_EVERY_MS = 10_000
#: A light heartbeat reads the others' expiries when the earliest one falls before its
#: next heartbeat, at most a third of the TTL away, less this (ms): the engine times a
#: heartbeat that long after a peer's expiry (``_EXPIRY_MARGIN_S``), so a heartbeat that
#: does not read is followed by one on time, and one that reads just before a peer's own
#: heartbeat does not make the next one read again.
_READ_MARGIN_MS = 20


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
        watch_ms: int = 0,
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
            watch_ms=watch_ms,
        )
        #: whether :meth:`join` won the id (once per incarnation)
        self.joined = False
        #: another incarnation took this id over: this one claims and publishes nothing
        self.superseded = False
        self.members_version = -1
        self.entries_version = -1
        self.nodes: list[Node] = []
        # -- what light heartbeats go by (see beat) --
        #: the reply of the last full heartbeat
        self._last: Heartbeat | None = None
        #: the record it wrote: another one (a new status) needs a full heartbeat
        self._written: Node | None = None
        #: events heard by the registry's listeners before it (see heard_on)
        self._heard: int | None = None
        #: when it ran (server time, ms)
        self._full_ms = 0
        #: when the last heartbeat (full or light) set this node's expiry (cluster time,
        #: ms); None after a failed one
        self._beat_ms: int | None = None
        #: the heartbeat expiry of every live node (this one included), as last read
        self._expiry: dict[str, int] = {}
        #: when that was read (cluster time, ms)
        self._read_ms = 0

    @property
    def expiries(self) -> dict[str, int]:
        """The heartbeat expiry of every live node (this one included), as last read."""
        return self._expiry

    @property
    def read_ms(self) -> int:
        """When :attr:`expiries` was read (cluster time, ms)."""
        return self._read_ms

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

    def beat(self, *, full: bool = False, read: bool = False) -> tuple[Heartbeat, bool, bool]:
        """Send a heartbeat. Returns it and whether members / entries changed since.
        The first one joins (:meth:`join`). A heartbeat refused because another
        incarnation took this id sets :attr:`superseded`.

        It is light (:meth:`Registry.touch`: this node's expiry, and the others' when the
        earliest one is near) unless ``full`` or one of these, checked in order, calls for
        the full one (the HEARTBEAT script):

        - no full heartbeat yet, or the previous heartbeat failed;
        - the node record changed (its status);
        - the previous heartbeat set this node's expiry more than TTL/2 ago: this
          process stalled, and another incarnation may have taken its id over; it must
          find out before it claims anything;
        - :data:`FULL_HEARTBEAT_EVERY_MS` passed since the last full one;
        - no :class:`EventListener` of the registry is subscribed, or one heard an event
          (or subscribed anew) since the last full one;
        - then, from the light heartbeat's reply: this node is not registered (it
          expired and was forgotten, or Redis lost its data: the full one tells the
          recovery), or that heartbeat itself took more than TTL/2; and when it read the
          others' expiries: one has passed (the full one forgets that node), or the set
          of nodes is not the one last seen (a join or leave).

        A light heartbeat returns the last full one's reply with the server time and the
        earliest expiry of another node brought up to date; nothing changed then.
        ``read``: a light heartbeat reads the others' expiries whatever their times (the
        crash check's turn: :attr:`expiries` is then fresh).
        """
        if not self.joined:
            self.join()
        now = self.clock.now_ms()
        if not self.node.started_ms:
            self.node = replace(self.node, started_ms=now)
        previous, self._beat_ms = self._beat_ms, None  # stays None if this one fails
        if not full and self._light_allowed(now, previous):
            hb = self._light(now, read=read)
            if hb is not None:
                return hb, False, False
        return self._full()

    def _light_allowed(self, now: int, previous: int | None) -> bool:
        if self._last is None or previous is None or self._written != self.node:
            return False
        if now - previous > self.ttl_ms // 2 or now - self._full_ms >= FULL_HEARTBEAT_EVERY_MS:
            return False
        heard = heard_on(self.registry)
        return heard is not None and heard == self._heard

    def _light(self, now: int, *, read: bool = False) -> Heartbeat | None:
        """A light heartbeat at ``now``; None when a full one must follow."""
        assert self._last is not None
        me = self.node.id
        watch = min(
            (exp for node_id, exp in self._expiry.items() if node_id != me),
            default=self._read_ms + self.ttl_ms,  # alone: look now and then anyway
        )
        # Read them when the earliest passes before the next heartbeat: a live node's
        # expiry is read again before it passes (about every other heartbeat), a dead
        # node's when it passes (the engine times a heartbeat on it: peer_expiry_ms).
        read = read or now + self.ttl_ms // 3 - _READ_MARGIN_MS >= watch
        expiry = now + self.ttl_ms
        alive = self.registry.touch(me, expiry, read_alive=read)
        done = self.clock.now_ms()
        if alive is None or done - now > self.ttl_ms // 2:
            return None
        if read:
            if alive.keys() != self._expiry.keys() or min(alive.values()) <= done:
                return None
            self._expiry = alive
            self._read_ms = now
        else:
            self._expiry[me] = expiry
        self._beat_ms = now
        peer = min((exp for node_id, exp in self._expiry.items() if node_id != me), default=None)
        return replace(self._last, server_ms=now, peer_expiry_ms=peer)

    def _full(self) -> tuple[Heartbeat, bool, bool]:
        heard = heard_on(self.registry)  # before: an event during the call brings another
        sent = self.clock.begin()
        hb = self.registry.heartbeat(self.node, self.ttl_ms)
        self.clock.observe(hb.server_ms, sent, self.clock.begin())
        if hb.superseded:
            self.mark_superseded()
        members_changed = hb.members_version != self.members_version
        entries_changed = hb.entries_version != self.entries_version
        self.members_version = hb.members_version
        self.entries_version = hb.entries_version
        self._last, self._written, self._heard = hb, self.node, heard
        self._full_ms = self._beat_ms = self._read_ms = hb.server_ms
        self._expiry = dict(hb.alive)
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


#: The event listeners of each registry object, so that a :class:`Membership` on the same
#: registry learns from them whether events arrive, and when one did (:func:`heard_on`).
_LISTENERS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[EventListener]] = (
    weakref.WeakKeyDictionary()
)


#: Stamps of what listeners hear, increasing across all of them.
_STAMPS = itertools.count(1)


def heard_on(registry: Registry) -> int | None:
    """The stamp of the latest event heard by a subscribed listener of ``registry`` (a new
    subscription counts as one: events may have been lost without one): a new value means
    something happened; None when no listener is subscribed (events do not arrive)."""
    try:
        listeners = list(_LISTENERS.get(registry, ()))
    except TypeError:  # a registry that cannot be weakly referenced has no listener
        return None
    return max((lis.heard for lis in listeners if lis.subscribed), default=None)


class EventListener(threading.Thread):
    """Listens to the registry's pub/sub channel and wakes the scheduling loop.

    On Redis Sentinel it also asks the sentinels where the master is, every
    ``master_check_s``: when it moved, the registry's connections to the old master are
    dropped, the loop is told to reload everything, and the subscription moves too.

    It also counts what it heard (:attr:`heard`, :func:`heard_on`): the registry's
    :class:`Membership` sends light heartbeats only while a listener is subscribed, and a
    full one after each event.
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
        #: the stamp of the last event heard, or subscription made (see :func:`heard_on`)
        self.heard = 0
        #: whether a subscription is open: events arrive
        self.subscribed = False
        #: the node whose channel to hold (crash detection, :mod:`celery_dcron.crashes`)
        self.node_id: str | None = None
        #: since when (``time.monotonic()``) that channel is held without a break; None:
        #: not held (the others may take this node for dead once its heartbeat is late)
        self.watching_since: float | None = None
        self._stopping = threading.Event()
        with contextlib.suppress(TypeError):  # see heard_on
            _LISTENERS.setdefault(registry, weakref.WeakSet()).add(self)

    def stop(self) -> None:
        self._stopping.set()

    def hear(self) -> None:
        """Stamp an event (or a new subscription): the next heartbeat is full."""
        self.heard = next(_STAMPS)

    def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            pubsub = None
            try:
                pubsub = self.registry.pubsub()
                self.hear()
                self.subscribed = True
                backoff = 0.1
                check_at = time.monotonic() + self.master_check_s
                while not self._stopping.is_set():
                    if self.watching_since is None and self.node_id is not None:
                        self.registry.watch(pubsub, self.node_id)
                        self.watching_since = time.monotonic()
                    if time.monotonic() >= check_at:
                        check_at = time.monotonic() + self.master_check_s
                        if self.registry.follow_master():
                            logger.warning("dcron: the Redis master moved (Sentinel): reconnecting")
                            self.hear()
                            self.members_dirty.set()
                            self.entries_dirty.set()
                            self.wake.set()
                            break  # subscribe again, on the new master
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    self.hear()  # before the flags: the loop they wake reads it
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
                self.subscribed = False
                self.watching_since = None
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        logger.debug("dcron: event listener stopped at %s", time.monotonic())
