"""Every Redis key and channel name of one namespace: the registry's schema.

Schema (every key of one namespace shares the hash tag ``{prefix:namespace}``, so
all scripts touch one Redis Cluster slot; ``B`` below stands for that tag)::

    B:nodes       hash    node id -> node JSON (host, pid, version, weight, ...)
    B:status      hash    node id -> "starting" | "working" | "leaving"
    B:alive       zset    node id -> heartbeat expiry (Redis server time, ms)
    B:meta        hash    "members" -> membership version, "entries" -> entries version,
                          "epoch" -> server time when the data began (new after a loss),
                          "paused" -> "1" while the whole cluster is paused (pause_all),
                          "reset" -> cluster time (ms) at which the first instance that
                          noticed a data loss rebuilt the registry (absent on new data)
    B:entries     hash    entry name -> entry JSON (static and dynamic)
    B:static      hash    entry name -> "1" for entries written from beat_schedule
    B:tombstones  hash    entry name -> deletion time (ms); re-adding is refused
    B:anchor      hash    entry name -> registration time (ms); no earlier tick fires
    B:last        hash    entry name -> last claimed tick (ms); only ever grows
    B:runs        hash    entry name -> number of ticks claimed for dispatch
    B:lastnode    hash    entry name -> node id of the last claim
    B:due         zset    entry name -> the earliest its next tick can be (cluster time,
                          ms): what its owner last computed, 0 when unknown (every write
                          to the entry sets 0; its owner then writes the tick it computed).
                          Never later than the entry's next tick, but for a narrow race
                          (see engine/loading.py); it tells a node that takes a dead
                          node's entries which to read first (the due index)
    B:pending     hash    "<tick_ms>:<name>" -> node id: claimed, not yet marked sent
    B:errors      hash    entry name -> its last publish that can never succeed (JSON:
                          tick_ms, task_id, reason, error, at_ms, node, version, run_now);
                          the tick was finished, not retried. Cleared when a tick of the
                          entry at or after it is marked sent, and by remove, reset and
                          cleanup (see :class:`~celery_dcron.entries.PublishRejection`)
    B:requests    hash    "<request_ms>:<name>" -> "" (a run-now request waiting for the
                          entry's owner) or the node id that took it and has not yet sent it
    B:feed        stream  the change feed: one record per write to an entry, fields
                          n (entry name), k (kind: put | del | state | run | pause) and
                          s (the entries version the write set); capped near
                          FEED_MAXLEN records (XADD MAXLEN ~). An instance applies the
                          records after its position; a gap in s (trimmed past it) means
                          one full, paged reload
    B:lock:<name>:<tick_ms>   string  per-tick fire lock (SET NX PX), value node id
    B:lease:<job>       string  holder id of a namespace-wide job (SET NX PX; the Django
                                reconcile's job is "django"), see registry/leases.py
    B:watermark:<job>   hash    mark -> how far that job got, pass_ms / full_ms -> when its
                                last run / last full run started, full_wanted_ms -> when a
                                full run was last asked for
    B:events      channel "members" | "entries" (pub/sub wake-ups; polling is the fallback)
    B:node:<id>   channel nothing is published: the running process of node <id> stays
                  subscribed (its event listener), and Redis drops the subscription when
                  the process dies (PUBSUB NUMSUB 0: crash detection, see crashes.py)

Nothing read back is unpickled: values are JSON or plain integers
(see :mod:`celery_dcron.registry.codec`).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["KeyName", "Keys"]

#: The name of a fixed key of the namespace: an attribute of :class:`Keys`. Scripts
#: declare the keys they take by these names (:mod:`celery_dcron.registry.scripts`).
KeyName = Literal[
    "nodes", "status", "alive", "meta", "entries", "static", "tombstones", "anchor", "last",
    "runs", "lastnode", "pending", "requests", "errors", "feed", "due",
]  # fmt: skip


class Keys:
    """Every key and channel name of one namespace. Nothing else builds key names."""

    def __init__(self, prefix: str, namespace: str) -> None:
        self.prefix = prefix
        self.namespace = namespace
        base = "{" + f"{prefix}:{namespace}" + "}"
        self.base = base
        self.nodes = f"{base}:nodes"
        self.status = f"{base}:status"
        self.alive = f"{base}:alive"
        self.meta = f"{base}:meta"
        self.entries = f"{base}:entries"
        self.static = f"{base}:static"
        self.tombstones = f"{base}:tombstones"
        self.anchor = f"{base}:anchor"
        self.last = f"{base}:last"
        self.runs = f"{base}:runs"
        self.lastnode = f"{base}:lastnode"
        self.pending = f"{base}:pending"
        self.requests = f"{base}:requests"
        self.errors = f"{base}:errors"
        self.feed = f"{base}:feed"
        self.due = f"{base}:due"
        self.events = f"{base}:events"

    def named(self, name: KeyName) -> str:
        """The fixed key called ``name`` (``keys.named("last") == keys.last``)."""
        return str(getattr(self, name))

    def node_channel(self, node_id: str) -> str:
        """The channel the running process of ``node_id`` stays subscribed to."""
        return f"{self.base}:node:{node_id}"

    def lock(self, name: str, tick_ms: int) -> str:
        return f"{self.base}:lock:{name}:{tick_ms}"

    def lease(self, job: str) -> str:
        """The lease of the namespace-wide job ``job`` (one holder at a time)."""
        return f"{self.base}:lease:{job}"

    def watermark(self, job: str) -> str:
        """How far the namespace-wide job ``job`` got (a hash)."""
        return f"{self.base}:watermark:{job}"

    @staticmethod
    def pending_field(name: str, tick_ms: int) -> str:
        return f"{tick_ms}:{name}"

    @staticmethod
    def parse_pending_field(field: str) -> tuple[str, int]:
        tick, _, name = field.partition(":")
        return name, int(tick)

    def all_fixed(self) -> tuple[str, ...]:
        """Every fixed key of the namespace (not the per-tick locks)."""
        return tuple(self.named(name) for name in get_args(KeyName))
