"""Protocols between the layers: a clock, an ownership strategy, the registry.

Pure module: no I/O, and no import of Redis. The Redis registry
(:class:`celery_dcron.registry.Registry`) and the in-memory one used by tests both
satisfy :class:`Registry`; one contract suite (``tests/integration/test_registry_contract.py``)
runs against both. The engine depends on these narrow protocols, so unit tests can
inject a :class:`~celery_dcron.clock.ManualClock` and an in-memory registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .entries import (
        ClaimResult,
        EntrySpec,
        EntryState,
        Node,
        PendingClaim,
        PublishRejection,
        Tick,
    )
    from .exceptions import DcronError
    from .registry import (
        BrokerCommand,
        CrashCheck,
        DueHint,
        Enqueued,
        FeedPage,
        FeedPosition,
        Heartbeat,
        Joined,
        Loaded,
        RunRequest,
        Snapshot,
        StaticSyncResult,
    )

__all__ = ["Clock", "NodeRef", "Registry", "Strategy", "Subscription"]


@runtime_checkable
class Clock(Protocol):
    """The cluster clock: milliseconds since the epoch, UTC, shared by all nodes."""

    def now_ms(self) -> int: ...


class NodeRef(Protocol):
    """What a strategy needs of a node: its id and its weight."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


class Strategy(Protocol):
    """Decides which node owns which entry. Pure and deterministic.

    Every instance computes the assignment on its own from the same inputs
    (entry names and working nodes), so equal views give equal answers.
    The claim in Redis, not this answer, prevents a double fire when views differ.
    """

    @property
    def name(self) -> str:
        """The strategy's name (a built-in's :class:`~celery_dcron.enums.StrategyName`)."""
        ...

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        """The id of the node that owns ``entry``; ``None`` when ``nodes`` is empty."""
        ...

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> Mapping[str, str]:
        """Owner id of every entry; empty when ``nodes`` is empty."""
        ...


class Subscription(Protocol):
    """A subscription to a namespace's events (what :meth:`Registry.pubsub` returns)."""

    def get_message(self, timeout: float = 0.0) -> Mapping[str, Any] | None:
        """The next event within ``timeout`` seconds, or None: ``{"data": "members"}``
        (a node joined, left or changed status) or ``{"data": "entries"}``."""
        ...

    def close(self) -> None: ...


class Registry(Protocol):
    """The shared state of one namespace: nodes, entries, run state, claims, requests.

    Every method is one atomic step against the cluster clock (the registry's time,
    not the caller's). Every method may raise
    :class:`~celery_dcron.exceptions.RegistryUnavailableError`: nothing was changed
    then, or the call is safe to retry (claims and retakes are idempotent for their node).
    Writes to entries, the pause flag and run-now requests bump the entries version
    and notify ``"entries"``; membership changes bump the members version and notify
    ``"members"``.
    """

    # -- membership ---------------------------------------------------------------

    def load_scripts(self) -> None:
        """Prepare the connection (the Redis registry loads its scripts); idempotent."""
        ...

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        """Register ``node`` with its status, alive for ``ttl_ms`` from now; forget nodes
        whose heartbeat expired. Returns the clock, the versions, the pause flag, the
        data's epoch and reset time, the earliest heartbeat expiry of another node, and
        whether another incarnation (another ``node.token``) holds ``node.id``: then
        nothing is written."""
        ...

    def touch(
        self, node_id: str, expiry_ms: int, *, read_alive: bool = True
    ) -> dict[str, int] | None:
        """The light heartbeat: set the heartbeat expiry of ``node_id``, a registered
        node, to ``expiry_ms`` (cluster time), and nothing else: no node is forgotten,
        no record, status or version written, no token checked. Returns None when
        ``node_id`` is not registered (forgotten, or the data was lost) or already had
        that expiry: nothing changed then. Else, with ``read_alive``, every registered
        node's heartbeat expiry (expired ones not yet forgotten included); ``{}``
        without."""
        ...

    def join(self, node: Node, ttl_ms: int, *, dead_token: str = "") -> Joined:
        """Register a new incarnation (``node.token``) under ``node.id`` iff the id is
        free, expired, already this incarnation's, or held by the incarnation whose
        token is ``dead_token`` (the caller proved it dead); atomic, so two processes
        starting at once cannot both win one id. Returns whether it won and the record
        found (the live holder, or the predecessor replaced)."""
        ...

    def leave(self, node_id: str) -> None:
        """Deregister ``node_id`` at once (the others take over without waiting)."""
        ...

    def nodes(self) -> tuple[list[Node], int]:
        """Live nodes (heartbeat not expired) by id, with their status; and the clock."""
        ...

    def subscribers(self, node_ids: Sequence[str]) -> dict[str, int]:
        """How many subscriptions hold each node's channel (:meth:`watch`): 0 once the
        node's process died (Redis drops a dead process's connections; a frozen or
        partitioned one keeps them). One command. Raises
        :class:`~celery_dcron.exceptions.UnsupportedError` where it cannot tell (Redis
        Cluster, the command refused by an ACL or a proxy)."""
        ...

    def expire_crashed(self, node_ids: Sequence[str], *, grace_ms: int) -> CrashCheck:
        """Take for dead each of ``node_ids`` (nodes the caller found without a
        subscriber) whose record has a ``watch_ms`` and whose last heartbeat (its
        expiry less its TTL) is older than that plus ``grace_ms``: its expiry becomes
        now, so the next :meth:`heartbeat` forgets it (and notifies ``"members"``).
        Decided and written in one step on the cluster clock. Returns the ids taken,
        and in how long the first of the others given becomes overdue."""
        ...

    def pubsub(self) -> Subscription:
        """A new subscription to this namespace's events."""
        ...

    def watch(self, subscription: Subscription, node_id: str) -> None:
        """Subscribe ``subscription`` to ``node_id``'s channel too, for as long as it is
        open (see :meth:`subscribers`)."""
        ...

    def follow_master(self) -> bool:
        """Reconnect if the primary moved (Sentinel); True when it did. Never raises."""
        ...

    def server_ms(self) -> int:
        """The cluster clock, in milliseconds."""
        ...

    # -- entries ------------------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec], *, final: bool = True) -> StaticSyncResult:
        """Write static entries of one ``beat_schedule`` (all of it, or a page); anchor
        new ones; leave tombstoned and dynamic names alone. ``final`` (the whole
        schedule): then remove the static entries ``specs`` does not list (a schedule
        written in pages: :meth:`scan_static` and :meth:`drop_static`)."""
        ...

    def scan_static(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page of about ``count`` static entries' names (cursor 0 starts; 0 back:
        done; a name may come twice)."""
        ...

    def drop_static(self, names: Sequence[str]) -> int:
        """Remove each of ``names`` that is still a static entry (its definition, not its
        run state, as :meth:`sync_static` does); how many were."""
        ...

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        """After a data loss: put back anchors (set once) and record ``reset_ms``
        (the first call wins)."""
        ...

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """Every entry that parses, and ``name -> error`` for those that do not."""
        ...

    def get_entry(self, name: str) -> EntrySpec | None:
        """The entry ``name`` or None; InvalidEntryError when it is malformed."""
        ...

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        """Compare-and-set one definition; returns it as stored (version bumped).

        ``expected_version=None`` creates: ConflictError if the name exists, is
        tombstoned or static. An int updates: EntryNotFoundError if absent,
        ConflictError if the stored version differs or the name is tombstoned.
        ``force`` writes over a tombstone or a static entry (and, creating, anything).
        """
        ...

    def put_entries(
        self, specs: Sequence[EntrySpec], *, replace: bool = False, since_ms: int | None = None
    ) -> list[EntrySpec | DcronError]:
        """Many :meth:`put_entry` creations at once, each atomic on its own (not the
        batch). ``replace`` overwrites an existing entry (its version + 1) instead of
        refusing it; tombstoned and static names are refused either way. Returns, in
        order, each entry as stored or the error (ConflictError, InvalidEntryError) that
        refused it; raises only what every method may raise.

        A new cron or one-off entry gets its first tick after ``since_ms`` in the due
        index: a server time (:meth:`server_ms`) read before this call; None: read here
        if one needs it.
        """
        ...

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        """Remove the definition and run state; False if there was none. ``tombstone``
        keeps the name deleted. ConflictError when ``expected_version`` differs."""
        ...

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name`` (also its tombstone, unsent claims and run-now
        requests); how many fields were removed."""
        ...

    def reuse_deleted(self, name: str) -> bool:
        """Remove the tombstone of ``name``; False if it had none."""
        ...

    def tombstones(self) -> dict[str, int]:
        """Deleted names and when they were deleted (ms)."""
        ...

    def reset(self, name: str) -> bool:
        """Start ``name`` afresh (anchored now, no last tick, no runs); False if absent."""
        ...

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        """Enable or disable ``name``; EntryNotFoundError if absent."""
        ...

    def set_paused(self, paused: bool) -> None:
        """Pause or resume the whole namespace (heartbeats carry the flag)."""
        ...

    def is_paused(self) -> bool: ...

    # -- the change feed and paged reads ------------------------------------------

    def feed_position(self) -> FeedPosition:
        """Where the change feed stands now: the entries version and its last record."""
        ...

    def read_feed(self, after: FeedPosition, count: int) -> FeedPage:
        """Up to ``count`` records after ``after`` (each write to an entry is one, in
        order, versions without gaps); ``gap`` when some were lost (trimmed, or the data
        was reset): the caller reloads in full."""
        ...

    def scan_entries(
        self, cursor: int, count: int, want: Callable[[str], bool]
    ) -> tuple[int, list[str], dict[str, EntrySpec], dict[str, str]]:
        """One page of about ``count`` entries (cursor 0 starts; 0 back: done; a name
        may come twice): every name, and the definitions and parse errors of those
        ``want`` accepts."""
        ...

    def get_entries(self, names: Iterable[str]) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """The definitions of ``names`` that exist and parse, and ``name -> error`` of
        those that do not parse."""
        ...

    def load(self, names: Sequence[str]) -> Loaded:
        """The definitions and run states of ``names`` (``last_node`` not read), in one
        round trip."""
        ...

    def due_hints(self, names: Sequence[str]) -> dict[str, DueHint]:
        """When each of ``names`` is due, as its schedule's text, start and last tick (or
        anchor) tell, read without its definition whole (one round trip). A name without
        a definition has an empty hint (due at once)."""
        ...

    def last_runs(self, names: Sequence[str]) -> dict[str, int]:
        """The last tick of each of ``names`` that ran."""
        ...

    def set_due(self, due: Mapping[str, int]) -> None:
        """Record in the due index the next tick computed for each entry of ``due`` that
        still exists."""
        ...

    def due_range(
        self, after_ms: int | None, until_ms: int, *, offset: int = 0, count: int = 10_000
    ) -> list[tuple[str, int]]:
        """Up to ``count`` entries of the due index due after ``after_ms`` (None: any) and
        at or before ``until_ms``, earliest first, after the first ``offset``; with their
        due times."""
        ...

    def due_index_complete(self) -> bool:
        """Whether the due index holds a time for every entry."""
        ...

    # -- run state and claims -----------------------------------------------------

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        """Run state of the given entries (all when None); entries without any absent."""
        ...

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        """Claim ticks, in order (an entry's ticks oldest first). A tick wins iff it is
        newer than the entry's last tick and (to fire) runs are under ``max_runs`` and
        its per-tick lock is free; a firing win stays pending until :meth:`mark_sent`.
        The same node claiming its own pending tick again wins again (a retry)."""
        ...

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        """The claims of ``ticks`` were published: no longer pending. Each entry's last
        publish error is cleared, unless it is of a later tick than the one sent."""
        ...

    def enqueue(
        self, sends: Sequence[tuple[Tick, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """Send claimed ticks when the broker is the registry's Redis: for each tick
        whose pending claim is ``node_id``'s, run its message's broker commands and
        forget the claim, atomically (sent once, or still pending). A tick whose claim
        is not ``node_id``'s pending one is not sent."""
        ...

    def reject(self, rejections: Sequence[PublishRejection]) -> None:
        """Finish ticks whose publish can never succeed: their pending claims are
        forgotten (a run-now has none) and each becomes its entry's last error (a later
        call replaces it). :meth:`remove_entry`, :meth:`reset` and :meth:`cleanup` clear it."""
        ...

    def errors(self, names: Iterable[str] | None = None) -> dict[str, PublishRejection]:
        """The last publish error of the given entries (all when None); entries without
        one are absent."""
        ...

    def pending(self) -> list[PendingClaim]:
        """Claims made and not yet marked sent, with their holder (in no set order)."""
        ...

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        """Take over pending claims that are ours or whose holder is not alive."""
        ...

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        """Forget unsent claims (their entry was removed, or they are past their grace)."""
        ...

    # -- run-now requests ---------------------------------------------------------

    def run_now(self, name: str) -> int:
        """Ask the owner of ``name`` for an extra dispatch; returns the request time (ms).
        EntryNotFoundError if absent."""
        ...

    def requests(self) -> list[RunRequest]:
        """Run-now requests not yet done (waiting or taken), in no set order."""
        ...

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        """Take requests that are waiting, ours, or held by a node no longer alive."""
        ...

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        """Forget requests that were sent (or whose entry is gone)."""
        ...

    def enqueue_requests(
        self, sends: Sequence[tuple[RunRequest, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """Send run-now requests when the broker is the registry's Redis, as
        :meth:`enqueue` sends ticks: for each request ``node_id`` holds (taken), run its
        message's broker commands and forget the request, atomically (sent once, or
        still held). A request not held by ``node_id`` is not sent. Each result's tick
        is ``(name, request_ms)``."""
        ...

    # -- views --------------------------------------------------------------------

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        """Nodes, entries, states, last publish errors, flags and tombstones at once; with
        ``names``, only those entries' definitions, states and errors (``Snapshot.names``
        lists every entry)."""
        ...
