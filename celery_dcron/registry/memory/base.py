"""The memory registry's state, lock and notifications, shared by its parts."""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...entries import (
    EntrySpec,
    Node,
)
from ...exceptions import (
    ConflictError,
    RegistryUnavailableError,
    VersionConflictError,
)
from ...schedules import IntervalSchedule
from ...ticks import interval_phase_ms, phased_anchor
from ..scripts.base import FEED_MAXLEN

# The registry's record types: pure frozen dataclasses (the module that holds them
# imports redis; the memory registry uses nothing else of it).

if TYPE_CHECKING:
    from ...interfaces import Clock

__all__ = ["MemorySubscription"]


_MEMBERS = "members"
_ENTRIES = "entries"
#: Expired fire locks are swept once there are more than this many.
_LOCK_SWEEP_AT = 1024


class MemorySubscription:
    """Events of one :class:`~celery_dcron.registry.memory.MemoryRegistry`, shaped like
    redis-py's pub/sub messages."""

    def __init__(self, owner: _Base) -> None:
        self._owner = owner
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        #: the node channels it is subscribed to (``Registry.watch``)
        self.watching: set[str] = set()

    def put(self, kind: str) -> None:
        self._queue.put(kind)

    def get_message(self, timeout: float = 0.0) -> Mapping[str, Any] | None:
        try:
            kind = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        return {"type": "message", "data": kind}

    def close(self) -> None:
        self._owner._unsubscribe(self)


@dataclass
class _Data:
    """Everything Redis would hold for one namespace (lost together by lose_data)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)  # node id -> heartbeat expiry (ms)
    ttl: dict[str, int] = field(default_factory=dict)  # node id -> its TTL (ms), as recorded
    members_version: int = 0
    entries_version: int = 0
    epoch: str | None = None
    paused: bool = False
    reset_ms: int | None = None
    entries: dict[str, str] = field(default_factory=dict)  # name -> entry JSON
    static: set[str] = field(default_factory=set)
    tombstones: dict[str, int] = field(default_factory=dict)
    anchor: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    lastnode: dict[str, str] = field(default_factory=dict)
    pending: dict[tuple[str, int], str] = field(default_factory=dict)  # (name, tick) -> node
    requests: dict[tuple[str, int], str] = field(default_factory=dict)  # (name, ms) -> holder
    locks: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, tick) -> expiry
    errors: dict[str, str] = field(default_factory=dict)  # name -> last publish error JSON
    due: dict[str, int] = field(default_factory=dict)  # name -> earliest next tick (ms)
    feed: deque[tuple[int, str, str]] = field(
        default_factory=lambda: deque(maxlen=FEED_MAXLEN)
    )  # (version, name, kind): the change feed


class _Base:
    """What every part of :class:`~celery_dcron.registry.memory.MemoryRegistry` shares: the
    data, the clock, one lock (each public method is one atomic step), subscribers."""

    def __init__(self, clock: Clock, *, namespace: str = "default") -> None:
        self.clock = clock
        self.namespace = namespace
        #: False: every call raises RegistryUnavailableError and changes nothing
        self.available = True
        self._data = _Data()
        self._losses = 0
        self._lock = threading.RLock()
        self._subscribers: list[MemorySubscription] = []
        #: test helper: node ids whose process counts as connected (a subscriber on its
        #: node channel) besides the subscriptions' own (``watch``); discard one to
        #: simulate its process dying
        self.connected: set[str] = set()
        #: test helper: True, ``subscribers`` is refused (an ACL or a proxy)
        self.numsub_refused = False

    def lose_data(self) -> None:
        """Forget everything (versions and epoch too), as a Redis restarted without
        persistence does. The next heartbeat starts a new epoch."""
        with self._lock:
            self._data = _Data()
            self._losses += 1

    @contextmanager
    def _op(self) -> Iterator[int]:
        """One atomic step at the clock's current time; refused while unavailable."""
        if not self.available:
            raise RegistryUnavailableError("dcron: memory registry marked unavailable")
        with self._lock:
            yield self.clock.now_ms()

    def _feed(self, name: str, kind: str) -> None:
        """Record a write to entry ``name`` in the change feed (bumps the entries version)."""
        d = self._data
        d.entries_version += 1
        d.feed.append((d.entries_version, name, kind))
        if kind == "del":  # the due index, as the scripts' ``feed`` keeps it
            d.due.pop(name, None)
        elif kind in ("put", "state"):
            d.due[name] = 0

    def _notify(self, kind: str) -> None:
        """Publish ``kind`` to the subscribers; "members" bumps the members version
        (entry writes bump theirs in :meth:`_feed`)."""
        d = self._data
        if kind == _MEMBERS:
            d.members_version += 1
        for sub in list(self._subscribers):
            sub.put(kind)

    def _unsubscribe(self, sub: MemorySubscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _is_alive(self, node_id: str, now: int) -> bool:
        return self._data.alive.get(node_id, now) > now

    def _anchor_at(self, spec: EntrySpec | None, now: int) -> int:
        """Now, on the entry's interval grid (now itself for other schedules)."""
        if spec is not None and isinstance(spec.schedule, IntervalSchedule):
            every = spec.schedule.every_ms
            return phased_anchor(now, every, interval_phase_ms(self.namespace, spec.name, every))
        return now


def _version_of(text: str | None) -> int:
    """The version in a stored entry JSON: -1 without an entry, 0 without a version."""
    if text is None:
        return -1
    try:
        return int(json.loads(text)["version"])
    except (ValueError, KeyError, TypeError):
        return 0


def _error_tick_ms(text: str) -> int | None:
    """The tick of a stored publish error; None when it does not parse."""
    try:
        return int(json.loads(text)["tick_ms"])
    except (ValueError, KeyError, TypeError):
        return None


def _refused(name: str, why: str) -> ConflictError:
    return ConflictError(f"entry {name!r}: {why}; see Registry.put_entry for the ways out")


def _conflict(name: str, current: int, expected: int | None) -> VersionConflictError:
    return VersionConflictError(
        f"entry {name!r}: version: changed by someone else (now version {current}, you "
        f"had {expected}); read it again and re-apply your change"
    )
