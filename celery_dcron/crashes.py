"""Crash detection: a crashed instance's entries move in about one heartbeat, not one TTL.

A process that dies (SIGKILL, OOM kill, a segfault) closes its Redis connections at
once, and Redis drops their subscriptions. So each running instance holds a
subscription to a channel of its own node (its
:class:`~celery_dcron.membership.EventListener` subscribes once the node id is known,
:meth:`~celery_dcron.interfaces.Registry.watch`), and says so in its node record
(``watch_ms``: its heartbeat interval). A survivor counts the subscribers of the others'
channels (``PUBSUB NUMSUB``, one command) and takes a node for dead when BOTH its
channel has none AND its heartbeat is overdue: older than its heartbeat interval plus
:data:`GRACE_MS` on the server clock (one script decides and sets the node's expiry to
now, :meth:`~celery_dcron.interfaces.Registry.expire_crashed`). The overdue rule keeps a
live process whose listener is only reconnecting; a frozen (SIGSTOP, VM pause) or
partitioned process keeps its connections, so the node TTL still decides for it.

The check is staggered: with N live nodes, each one checks on its turn, one heartbeat
interval in N (the turns follow the cluster clock and the rank of its id), so the cluster
as a whole checks about once per interval, whichever node dies. On its turn, the node's
light heartbeat also reads the others' expiries (the ``ZRANGE`` it makes anyway when a
peer's expiry nears, :meth:`~celery_dcron.membership.Membership.beat`), and only the
nodes whose last heartbeat is older than half their interval are counted: a node that
beat since is alive, and its channel is not asked about. So a turn costs one command
while every peer beats on time (the read, which then also stands in for the next
near-expiry read), two when one is late. A check that finds a channel without a
subscriber whose node is not overdue yet checks again when it will be
(:attr:`CrashWatch.recheck_ms`, the engine heartbeats then): a crash is taken at its
node's overdue time, or at the first survivor's turn after it is half an interval
late (the dead node's own turn goes unused), whichever comes last.

A Redis outage stops every node's heartbeats and drops every subscription at once, so an
instance that lost Redis takes no node for crashed until one node TTL after it reconnects
(:meth:`CrashWatch.outage`): the others reconnect and subscribe again meanwhile, and one
that does not is taken by its TTL, as without crash detection.

Off (the TTL alone decides) with ``dcron_crash_detection = False``, on Redis Cluster
(subscribers are counted per shard) and where ``PUBSUB NUMSUB`` is refused (an ACL, a
proxy): logged once (``crash_detection_off``). An instance without an event listener
holds no node channel (``watch_ms`` 0): the others wait for its TTL.
"""

from __future__ import annotations

import logging

from .entries import Node
from .exceptions import UnsupportedError
from .logfields import log_event
from .membership import Membership
from .registry import Registry

__all__ = ["GRACE_MS", "CrashWatch"]

logger = logging.getLogger(__name__)

#: A node without a subscriber is taken for dead once its last heartbeat is older than
#: its heartbeat interval plus this (ms): room for a heartbeat's round trip and the loop.
GRACE_MS = 100


class CrashWatch:
    """Takes crashed peers for dead, on this node's turn (see the module's docstring)."""

    def __init__(
        self, registry: Registry, membership: Membership, *, interval_ms: int, enabled: bool
    ) -> None:
        self.registry = registry
        self.membership = membership
        self.interval_ms = max(interval_ms, 1)
        #: False: never checks (the setting, or Redis cannot count subscribers)
        self.enabled = enabled
        #: the last turn checked (see :meth:`due`)
        self._turn: int | None = None
        #: check again at this cluster time (ms), turn or not: a node without a
        #: subscriber becomes overdue then; None: no such node
        self.recheck_ms: int | None = None
        #: :meth:`turn` said this heartbeat is a turn: :meth:`check` counts after it
        self._checking = False
        #: the first check counts every channel, late or not (a Redis that refuses
        #: ``PUBSUB NUMSUB`` is found out at start, not at the first crash)
        self._probed = False
        #: this node lost Redis (see :meth:`outage`); no check before this cluster time
        self._outage = False
        self._quiet_until_ms = 0

    def due(self, now_ms: int) -> bool:
        """Whether this node checks at ``now_ms``: once per turn of N intervals (N live
        nodes), from the interval whose number is its rank among their ids modulo N."""
        ids = sorted(n.id for n in self.membership.nodes)
        me = self.membership.node.id
        if len(ids) < 2 or me not in ids:
            self.recheck_ms = None
            return False
        turn = (now_ms // self.interval_ms - ids.index(me)) // len(ids)
        recheck = self.recheck_ms is not None and now_ms >= self.recheck_ms
        if turn == self._turn and not recheck:
            return False
        self._turn = turn
        self.recheck_ms = None
        return True

    def turn(self, now_ms: int) -> bool:
        """Before a heartbeat at ``now_ms`` (cluster time): whether it is this node's
        turn to check (:meth:`check` after it); its heartbeat then reads the others'
        expiries."""
        if self._outage:  # the first heartbeat since: quiet for one node TTL from now
            self._outage, self._quiet_until_ms = False, now_ms + self.membership.ttl_ms
        quiet = now_ms < self._quiet_until_ms
        self._checking = self.enabled and not quiet and self.due(now_ms)
        return self._checking

    def outage(self) -> None:
        """This node could not reach Redis. The others' heartbeats and subscriptions may
        have stopped with the same outage (a failover, a restart), so no node is taken
        for crashed until one node TTL after this node's next heartbeat: the TTL decides
        meanwhile, and a node that reconnects within it is not taken."""
        self._outage = True

    def check(self, now_ms: int) -> list[str]:
        """After the heartbeat of a :meth:`turn` at ``now_ms`` (cluster time): count the
        subscribers of the channels of the other nodes whose heartbeat is late, and take
        for dead those without one whose heartbeat is overdue. Returns their ids: a full
        heartbeat must follow (it forgets them and tells the others)."""
        if not self._checking:
            return []
        self._checking = False
        membership = self.membership
        me = membership.node.id
        fresh = membership.read_ms == now_ms and self._probed
        expiries = membership.expiries
        watched = [
            n.id
            for n in membership.nodes
            if n.id != me
            and n.watch_ms > 0
            and not (fresh and self._beat_since(n, expiries.get(n.id), now_ms))
        ]
        if not watched:
            return []
        self._probed = True
        try:
            counts = self.registry.subscribers(watched)
        except UnsupportedError as exc:
            self.enabled = False
            log_event(
                logger, logging.INFO, "crash_detection_off",
                "dcron: crash detection is off (%(reason)s): a crashed instance's entries "
                "move after dcron_node_ttl",
                node=me, reason=str(exc),
            )  # fmt: skip
            return []
        silent = [node_id for node_id in watched if counts.get(node_id, 0) == 0]
        if not silent:
            return []
        checked = self.registry.expire_crashed(silent, grace_ms=GRACE_MS)
        if checked.overdue_in_ms is not None:
            self.recheck_ms = now_ms + checked.overdue_in_ms + 1
        for node_id in checked.taken:
            log_event(
                logger, logging.WARNING, "node_crashed",
                "dcron: node %(crashed)s closed its Redis connections and missed its "
                "heartbeat: taking its entries over (seen by %(node)s)",
                node=me, crashed=node_id,
            )  # fmt: skip
        return list(checked.taken)

    def _beat_since(self, node: Node, expiry_ms: int | None, now_ms: int) -> bool:
        """Whether ``node`` beat within the last half of its interval, by its expiry as
        just read (its heartbeat time is its expiry less its TTL)."""
        if expiry_ms is None:
            return False
        ttl_ms = node.ttl_ms or self.membership.ttl_ms
        return now_ms - (expiry_ms - ttl_ms) <= node.watch_ms // 2
