"""The Redis registry: the only package that knows Redis keys, scripts and channels.

:class:`Registry` is the facade the rest of celery_dcron uses (it satisfies
:class:`celery_dcron.interfaces.Registry`); behind it, one module per concern:

- :mod:`~celery_dcron.registry.keys`: every key and channel name, and the schema;
- :mod:`~celery_dcron.registry.scripts`: the Lua scripts and their contracts;
- :mod:`~celery_dcron.registry.codec`: the records returned, JSON in and out;
- :mod:`~celery_dcron.registry.transport`: the client, script calls, error mapping;
- the stores: :mod:`~celery_dcron.registry.nodes` (membership),
  :mod:`~celery_dcron.registry.entries` (definitions), :mod:`~celery_dcron.registry.claims`
  (run state and claims), :mod:`~celery_dcron.registry.requests` (run-now),
  :mod:`~celery_dcron.registry.events` (channel, pause flag) and
  :mod:`~celery_dcron.registry.snapshot` (a whole namespace at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from ..config import Settings
from ..entries import (
    ClaimResult,
    EntrySpec,
    EntryState,
    Node,
    PendingClaim,
    PublishRejection,
    Tick,
)
from ..exceptions import DcronError
from ..topology import RedisTarget
from .claims import MAX_TICKS_PER_SCRIPT, BrokerCommand, ClaimStore, Enqueued
from .codec import (
    CrashCheck,
    FeedPage,
    FeedPosition,
    FeedRecord,
    Heartbeat,
    Joined,
    RunRequest,
    Snapshot,
    StaticSyncResult,
)
from .entries import EntryStore
from .events import EventStore
from .feed import DueHint, FeedStore, Loaded, due_hint
from .keys import Keys
from .nodes import NodeStore
from .requests import RequestStore
from .snapshot import SnapshotReader
from .transport import REDIS_ERRORS, Transport, connect

__all__ = [
    "MAX_TICKS_PER_SCRIPT",
    "REDIS_ERRORS",
    "BrokerCommand",
    "CrashCheck",
    "DueHint",
    "Enqueued",
    "FeedPage",
    "FeedPosition",
    "FeedRecord",
    "Heartbeat",
    "Joined",
    "Keys",
    "Loaded",
    "Registry",
    "RunRequest",
    "Snapshot",
    "StaticSyncResult",
    "connect",
    "due_hint",
]


class Registry:
    """Typed access to one namespace of the registry.

    Every method may raise :class:`~celery_dcron.exceptions.RegistryUnavailableError`
    (Redis unreachable: nothing changed, or the call is safe to retry).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        target: RedisTarget | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.transport = Transport(
            client, keys, target=target, wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
        )  # fmt: skip
        self.node_store = NodeStore(self.transport)
        self.entry_store = EntryStore(self.transport)
        self.claim_store = ClaimStore(self.transport)
        self.request_store = RequestStore(self.transport)
        self.event_store = EventStore(self.transport)
        self.feed_store = FeedStore(self.transport)
        self.snapshot_reader = SnapshotReader(self.transport, self.node_store, self.claim_store)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Registry:
        return cls(
            client or connect(settings),
            Keys(settings.key_prefix, settings.namespace),
            target=settings.redis_target,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=int(settings.redis_wait_timeout_s * 1000),
        )

    @property
    def client(self) -> redis.Redis:
        return self.transport.client

    @property
    def keys(self) -> Keys:
        return self.transport.keys

    @property
    def target(self) -> RedisTarget | None:
        """What dcron_redis_url points at (for error messages); None: not known."""
        return self.transport.target

    @property
    def wait_replicas(self) -> int:
        """Claims and "sent" marks count once this many replicas have them (WAIT)."""
        return self.transport.wait_replicas

    @property
    def wait_timeout_ms(self) -> int:
        return self.transport.wait_timeout_ms

    # -- connection ------------------------------------------------------------------

    def load_scripts(self) -> None:
        """Load every script in one round trip; refuse a Redis Cluster node on a
        single-server URL."""
        self.transport.load_scripts()

    def server_ms(self) -> int:
        """The Redis server's time in milliseconds (the cluster clock)."""
        return self.transport.server_ms()

    def ping(self) -> float:
        """Round trip to Redis in seconds; raises RegistryUnavailableError."""
        return self.transport.ping()

    def follow_master(self) -> bool:
        """On Redis Sentinel, ask the sentinels where the master is; if it moved, the
        connections to the old one are dropped. True when it moved. Never raises.

        A master replaced by ``SENTINEL FAILOVER`` or cut off by a partition still takes
        writes until it is demoted, which can take sentinels several seconds: clients
        must not wait for its ``READONLY`` errors to move.
        """
        return self.transport.follow_master()

    # -- membership (NodeStore) --------------------------------------------------------

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        return self.node_store.heartbeat(node, ttl_ms)

    def touch(
        self, node_id: str, expiry_ms: int, *, read_alive: bool = True
    ) -> dict[str, int] | None:
        return self.node_store.touch(node_id, expiry_ms, read_alive=read_alive)

    def join(self, node: Node, ttl_ms: int, *, dead_token: str = "") -> Joined:
        return self.node_store.join(node, ttl_ms, dead_token=dead_token)

    def leave(self, node_id: str) -> None:
        self.node_store.leave(node_id)

    def nodes(self) -> tuple[list[Node], int]:
        """Live nodes (heartbeat not expired) with their status, and the server time."""
        return self.node_store.nodes()

    def subscribers(self, node_ids: Sequence[str]) -> dict[str, int]:
        """Subscribers of each node's channel (0: its process died); raises
        UnsupportedError where Redis cannot tell (Cluster, a refused PUBSUB)."""
        return self.node_store.subscribers(node_ids)

    def expire_crashed(self, node_ids: Sequence[str], *, grace_ms: int) -> CrashCheck:
        """Take for dead those of ``node_ids`` whose heartbeat is overdue (see
        :meth:`NodeStore.expire_crashed <celery_dcron.registry.nodes.NodeStore.expire_crashed>`)."""
        return self.node_store.expire_crashed(node_ids, grace_ms=grace_ms)

    # -- entries (EntryStore) ----------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec], *, final: bool = True) -> StaticSyncResult:
        return self.entry_store.sync_static(specs, final=final)

    def scan_static(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of the static entries' names (cursor 0 starts; 0 back: done)."""
        return self.entry_store.scan_static(cursor, count)

    def drop_static(self, names: Sequence[str]) -> int:
        """Remove each of ``names`` that is still a static entry; how many were."""
        return self.entry_store.drop_static(names)

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        """After Redis lost its data: put back the anchors and record when the data was
        rebuilt (the first call wins)."""
        self.entry_store.restore_anchors(anchors, reset_ms=reset_ms)

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """Every entry that parses, and ``name -> error`` for those that do not."""
        return self.entry_store.entries()

    def get_entry(self, name: str) -> EntrySpec | None:
        """The entry ``name``, or None. A malformed stored entry raises InvalidEntryError."""
        return self.entry_store.get_entry(name)

    def get_entry_version(self, name: str) -> int:
        """The stored version of ``name``; -1 when there is no such entry."""
        return self.entry_store.get_entry_version(name)

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        """Write ``spec`` with compare-and-set on its version; returns it as stored.

        ``expected_version=None`` creates (refused when the name exists); an int updates
        the entry only if its stored version is still that (else VersionConflictError).
        ``force`` writes over a tombstone or a static entry, and with
        ``expected_version=None`` over anything.
        """
        return self.entry_store.put_entry(spec, expected_version=expected_version, force=force)

    def put_entries(
        self, specs: Sequence[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        """Create (``replace``: create or overwrite) each of ``specs``, pipelined: one
        round trip (without ``since_ms``, a cron or one-off entry adds a read of the
        server's time); tombstoned and static names are refused. Returns, in order, each
        entry as stored or the error that refused it."""
        return self.entry_store.put_entries(specs, replace=replace, since_ms=since_ms)

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        """Enable or disable ``name`` (compare-and-set, retried on a concurrent write)."""
        return self.entry_store.set_enabled(name, enabled)

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        """Remove the definition and run state; False if there was none.

        With ``tombstone`` the name stays deleted: re-adding it is refused until
        :meth:`reuse_deleted` or a forced write (the tombstone is set even if absent).
        """
        return self.entry_store.remove_entry(
            name, tombstone=tombstone, expected_version=expected_version
        )

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name``; returns how many fields were removed."""
        return self.entry_store.cleanup(name)

    def reuse_deleted(self, name: str) -> bool:
        """Remove the tombstone of ``name``; False if it had none."""
        return self.entry_store.reuse_deleted(name)

    def tombstones(self) -> dict[str, int]:
        """Deleted names and when they were deleted (ms)."""
        return self.entry_store.tombstones()

    def static_names(self) -> set[str]:
        return self.entry_store.static_names()

    def reset(self, name: str) -> bool:
        """Start ``name`` afresh (anchor now, no last tick, no runs); False if absent."""
        return self.entry_store.reset(name)

    # -- the change feed and paged reads (FeedStore) ------------------------------------

    def feed_position(self) -> FeedPosition:
        """Where the change feed stands now (read atomically)."""
        return self.feed_store.feed_position()

    def read_feed(self, after: FeedPosition, count: int) -> FeedPage:
        """Up to ``count`` feed records after ``after``; ``gap`` when some were lost."""
        return self.feed_store.read_feed(after, count)

    def scan_entries(
        self, cursor: int, count: int, want: Callable[[str], bool]
    ) -> tuple[int, list[str], dict[str, EntrySpec], dict[str, str]]:
        """One page of the entries (cursor 0 starts; 0 back: done): its names, and the
        definitions (and parse errors) of the names ``want`` accepts."""
        return self.feed_store.scan_entries(cursor, count, want)

    def get_entries(self, names: Iterable[str]) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """The definitions of ``names`` that exist and parse, and the errors of those
        that do not parse; one round trip."""
        return self.feed_store.get_entries(names)

    def load(self, names: Sequence[str]) -> Loaded:
        """The definitions and run states of ``names`` (``last_node`` not read), in one
        round trip."""
        return self.feed_store.load(names)

    def due_hints(self, names: Sequence[str]) -> dict[str, DueHint]:
        """When each of ``names`` is due, as its schedule's text, start and last tick (or
        anchor) tell, read without its definition whole; one round trip."""
        return self.feed_store.due_hints(names)

    def last_runs(self, names: Sequence[str]) -> dict[str, int]:
        """The last tick of each of ``names`` that ran."""
        return self.feed_store.last_runs(names)

    def set_due(self, due: Mapping[str, int]) -> None:
        """Record in the due index (keys.py) the next tick computed for each entry of
        ``due`` that still exists; one round trip."""
        self.feed_store.set_due(due)

    def due_range(
        self, after_ms: int | None, until_ms: int, *, offset: int = 0, count: int = 10_000
    ) -> list[tuple[str, int]]:
        """Up to ``count`` entries of the due index due after ``after_ms`` (None: any) and
        at or before ``until_ms``, earliest first, after the first ``offset``; with their
        due times."""
        return self.feed_store.due_range(after_ms, until_ms, offset=offset, count=count)

    def due_index_complete(self) -> bool:
        """Whether the due index holds a time for every entry."""
        return self.feed_store.due_index_complete()

    # -- run state and claims (ClaimStore) -----------------------------------------------

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        """Shared state of the given entries (all when ``names`` is None): one round trip."""
        return self.claim_store.states(names)

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        """Claim a batch of ticks (those of one entry oldest first), in round trips of
        :data:`MAX_TICKS_PER_SCRIPT` ticks; if one fails, the earlier claims stay made
        (and pending): they are published by :meth:`retake`."""
        return self.claim_store.claim(
            ticks, node_id=node_id, lock_ttl_ms=lock_ttl_ms, max_runs=max_runs
        )

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        """The claims of ``ticks`` were published: no longer pending; their entries' last
        publish errors are cleared (unless newer than the tick sent)."""
        self.claim_store.mark_sent(ticks)

    def enqueue(
        self, sends: Sequence[tuple[Tick, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """When the broker is this Redis: push each claimed tick's message and forget its
        claim in one atomic step, if the claim is ``node_id``'s and still pending."""
        return self.claim_store.enqueue(sends, node_id=node_id)

    def reject(self, rejections: Sequence[PublishRejection]) -> None:
        """Finish ticks whose publish can never succeed: forget their pending claims and
        keep each one as its entry's last error (a later one replaces it)."""
        self.claim_store.reject(rejections)

    def errors(self, names: Iterable[str] | None = None) -> dict[str, PublishRejection]:
        """The last publish error of the given entries (all when ``names`` is None)."""
        return self.claim_store.errors(names)

    def pending(self) -> list[PendingClaim]:
        return self.claim_store.pending()

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        """Take over unsent claims that are ours or whose claimer is dead."""
        return self.claim_store.retake(ticks, node_id=node_id, lock_ttl_ms=lock_ttl_ms)

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        """Forget unsent claims (their entry was removed)."""
        self.claim_store.drop_pending(ticks)

    # -- run-now requests (RequestStore) -------------------------------------------------

    def run_now(self, name: str) -> int:
        """Ask the owner of ``name`` for an extra dispatch; returns the request time (ms)."""
        return self.request_store.run_now(name)

    def requests(self) -> list[RunRequest]:
        return self.request_store.requests()

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        """Take run-now requests (waiting, ours, or a dead node's): one node wins each."""
        return self.request_store.take_requests(requests, node_id=node_id)

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        """Forget run-now requests that were sent (or whose entry is gone)."""
        self.request_store.done_requests(requests)

    def enqueue_requests(
        self, sends: Sequence[tuple[RunRequest, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """When the broker is this Redis: push each run-now request's message and forget
        the request in one atomic step, if ``node_id`` holds it."""
        return self.request_store.enqueue_requests(sends, node_id=node_id)

    # -- events and the pause flag (EventStore) ------------------------------------------

    def pubsub(self) -> Any:
        """A subscription to the namespace's events (called again after each failure)."""
        return self.event_store.pubsub()

    def watch(self, subscription: Any, node_id: str) -> None:
        """Subscribe ``subscription`` (from :meth:`pubsub`) to ``node_id``'s channel too."""
        self.event_store.watch(subscription, node_id)

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) the whole namespace: no instance claims anything while set."""
        self.event_store.set_paused(paused)

    def is_paused(self) -> bool:
        return self.event_store.is_paused()

    # -- read-only views -----------------------------------------------------------------

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        """Nodes, entries, states, flags and tombstones in one round trip (for status
        pages). With ``names``, only those entries' definitions and states are read;
        ``Snapshot.names`` still lists every entry (ownership needs the whole list)."""
        return self.snapshot_reader.snapshot(names)
