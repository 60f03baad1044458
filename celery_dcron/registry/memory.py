"""An in-memory registry: the semantics of the Redis registry's scripts, without Redis.

:class:`MemoryRegistry` satisfies :class:`celery_dcron.interfaces.Registry`; the contract
suite (``tests/integration/test_registry_contract.py``) runs against it and against the
Redis registry, and every difference it finds is a bug in this module. Its time is an
injected clock (a :class:`~celery_dcron.clock.ManualClock` in tests): heartbeats, fire
locks and request times follow it, where Redis follows its server time.

Each public method is one atomic step (one lock), as each script is in Redis.
Test helpers beyond the protocol: :attr:`MemoryRegistry.available` (False: every call
raises RegistryUnavailableError, as with Redis down) and :meth:`MemoryRegistry.lose_data`
(what a Redis restart without persistence does).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..entries import (
    ClaimResult,
    EntrySpec,
    EntryState,
    Node,
    NodeStatus,
    PendingClaim,
    PublishRejection,
    Tick,
)
from ..exceptions import (
    ConflictError,
    DcronError,
    EntryNotFoundError,
    InvalidEntryError,
    RegistryUnavailableError,
    VersionConflictError,
)
from ..schedules import IntervalSchedule
from ..ticks import interval_phase_ms, phased_anchor

# The registry's record types: pure frozen dataclasses (the module that holds them
# imports redis; the memory registry uses nothing else of it).
from .codec import (
    Heartbeat,
    Joined,
    RunRequest,
    Snapshot,
    StaticSyncResult,
    decode_entries,
    decode_errors,
    dumps,
)

if TYPE_CHECKING:
    from ..config import Settings
    from ..interfaces import Clock
    from ..interfaces import Registry as RegistryProtocol

__all__ = ["MemoryRegistry", "MemorySubscription"]

_MEMBERS = "members"
_ENTRIES = "entries"
#: Expired fire locks are swept once there are more than this many.
_LOCK_SWEEP_AT = 1024


class MemorySubscription:
    """Events of one :class:`MemoryRegistry`, shaped like redis-py's pub/sub messages."""

    def __init__(self, owner: MemoryRegistry) -> None:
        self._owner = owner
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()

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


class MemoryRegistry:
    """The registry of one namespace, held in this process."""

    def __init__(self, clock: Clock, *, namespace: str = "default") -> None:
        self.clock = clock
        self.namespace = namespace
        #: False: every call raises RegistryUnavailableError and changes nothing
        self.available = True
        self._data = _Data()
        self._losses = 0
        self._lock = threading.RLock()
        self._subscribers: list[MemorySubscription] = []

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> MemoryRegistry:
        return cls(clock, namespace=settings.namespace)

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

    def _notify(self, kind: str) -> None:
        d = self._data
        if kind == _MEMBERS:
            d.members_version += 1
        else:
            d.entries_version += 1
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

    # -- membership ----------------------------------------------------------------

    def load_scripts(self) -> None:
        with self._op():
            pass

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        with self._op() as now:
            d = self._data
            changed = False
            for node_id, expiry in list(d.alive.items()):
                if expiry <= now:
                    changed = True
                    if node_id != node.id:
                        del d.alive[node_id]
                        d.nodes.pop(node_id, None)
                        d.status.pop(node_id, None)
            held = d.nodes.get(node.id)
            superseded = bool(node.token and held and held.token and held.token != node.token)
            if not superseded:
                if d.status.get(node.id) != node.status.value or node.id not in d.alive:
                    changed = True
                d.nodes[node.id] = node
                d.status[node.id] = node.status.value
                d.alive[node.id] = now + ttl_ms
            if changed:
                self._notify(_MEMBERS)
            if d.epoch is None:  # Redis: TIME as "<s>.<us>"; a loss count stands in for µs
                d.epoch = f"{now // 1000}.{now % 1000 * 1000 + self._losses % 1000}"
            peers = [exp for node_id, exp in d.alive.items() if node_id != node.id]
            return Heartbeat(
                server_ms=now,
                members_version=d.members_version,
                entries_version=d.entries_version,
                paused=d.paused,
                epoch=d.epoch,
                reset_ms=d.reset_ms,
                peer_expiry_ms=min(peers) if peers else None,
                superseded=superseded,
            )

    def join(self, node: Node, ttl_ms: int, *, dead_token: str = "") -> Joined:
        with self._op() as now:
            d = self._data
            held = d.nodes.get(node.id)
            if (
                held is not None
                and self._is_alive(node.id, now)
                and held.token != node.token
                and (not dead_token or held.token != dead_token)
            ):
                return Joined(won=False, holder=held)
            d.nodes[node.id] = node
            d.status[node.id] = node.status.value
            d.alive[node.id] = now + ttl_ms
            self._notify(_MEMBERS)
            return Joined(won=True, holder=held)

    def leave(self, node_id: str) -> None:
        with self._op():
            d = self._data
            d.alive.pop(node_id, None)
            d.nodes.pop(node_id, None)
            d.status.pop(node_id, None)
            self._notify(_MEMBERS)

    def nodes(self) -> tuple[list[Node], int]:
        with self._op() as now:
            return self._live_nodes(now), now

    def _live_nodes(self, now: int) -> list[Node]:
        d = self._data
        return [
            replace(node, status=NodeStatus(d.status.get(node_id, node.status.value)))
            for node_id, node in sorted(d.nodes.items())
            if self._is_alive(node_id, now)
        ]

    def pubsub(self) -> MemorySubscription:
        with self._op():
            sub = MemorySubscription(self)
            self._subscribers.append(sub)
            return sub

    def follow_master(self) -> bool:
        return False

    def server_ms(self) -> int:
        with self._op() as now:
            return now

    # -- entries -------------------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec]) -> StaticSyncResult:
        texts = [(spec, spec.dumps()) for spec in specs]
        with self._op() as now:
            d = self._data
            changed = 0
            skipped: dict[str, str] = {}
            keep = set()
            for spec, text in texts:
                name = spec.name
                keep.add(name)
                if name in d.tombstones:
                    skipped[name] = "tombstoned"
                elif name not in d.static and name in d.entries:
                    skipped[name] = "dynamic"
                else:
                    if d.entries.get(name) != text:
                        d.entries[name] = text
                        d.static.add(name)
                        changed += 1
                    d.anchor.setdefault(name, self._anchor_at(spec, now))
            for name in sorted(d.static - keep):
                d.static.discard(name)
                d.entries.pop(name, None)
                changed += 1
            if changed:
                self._notify(_ENTRIES)
            return StaticSyncResult(changed=changed, skipped=skipped)

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        with self._op():
            d = self._data
            if d.reset_ms is None:
                d.reset_ms = reset_ms
            for name, anchor_ms in anchors.items():
                d.anchor.setdefault(name, anchor_ms)

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        with self._op():
            return decode_entries(self._data.entries)

    def get_entry(self, name: str) -> EntrySpec | None:
        with self._op():
            return self._get(name)

    def _get(self, name: str) -> EntrySpec | None:
        text = self._data.entries.get(name)
        if text is None:
            return None
        try:
            return EntrySpec.loads(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidEntryError(f"entry {name!r}: malformed in the registry: {exc}") from None

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        with self._op() as now:
            d = self._data
            name = spec.name
            current = _version_of(d.entries.get(name))
            expected = expected_version
            if force and expected is None:
                stored = self._get(name)  # InvalidEntryError when malformed, as in Redis
                expected = None if stored is None else stored.version
            new = spec.with_changes(version=(expected or 0) + 1)
            text = new.dumps()
            if not force and name in d.tombstones:
                raise _refused(name, "the name is deleted (tombstoned); use force_add()")
            if expected is None:
                if not force and name in d.static:
                    raise _refused(name, "a static entry (beat_schedule) has that name")
                if current >= 0:
                    raise _refused(name, f"already exists (version {current})")
            elif current < 0:
                raise EntryNotFoundError(f"entry {name!r}: not found; add it first")
            elif expected != current:
                raise _conflict(name, current, expected)
            if force:
                d.tombstones.pop(name, None)
                d.static.discard(name)
            d.entries[name] = text
            d.anchor.setdefault(name, self._anchor_at(spec, now))
            self._notify(_ENTRIES)
            return new

    def put_entries(
        self, specs: Sequence[EntrySpec], *, replace: bool = False
    ) -> list[EntrySpec | DcronError]:
        results: list[EntrySpec | DcronError] = []
        with self._op():
            d = self._data
            for spec in specs:
                current = _version_of(d.entries.get(spec.name))
                try:
                    if replace and spec.name in d.static:
                        raise _refused(spec.name, "a static entry (beat_schedule) has that name")
                    expected = current if replace and current >= 0 else None
                    results.append(self.put_entry(spec, expected_version=expected))
                except (ConflictError, InvalidEntryError) as exc:
                    results.append(exc)
        return results

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        with self._op() as now:
            d = self._data
            current = _version_of(d.entries.get(name))
            if expected_version is not None and expected_version != current:
                raise _conflict(name, current, expected_version)
            if tombstone:
                d.tombstones[name] = now
            if current < 0:
                return False
            for table in (d.entries, d.anchor, d.last, d.runs, d.lastnode, d.errors):
                table.pop(name, None)
            d.static.discard(name)
            self._notify(_ENTRIES)
            return True

    def cleanup(self, name: str) -> int:
        with self._op():
            d = self._data
            removed = 0
            tables = (d.entries, d.tombstones, d.anchor, d.last, d.runs, d.lastnode, d.errors)
            for table in tables:
                removed += table.pop(name, None) is not None
            if name in d.static:
                d.static.discard(name)
                removed += 1
            for fields in (d.pending, d.requests):
                for key in [k for k in fields if k[0] == name]:
                    del fields[key]
                    removed += 1
            self._notify(_ENTRIES)
            return removed

    def reuse_deleted(self, name: str) -> bool:
        with self._op():
            return self._data.tombstones.pop(name, None) is not None

    def tombstones(self) -> dict[str, int]:
        with self._op():
            return dict(self._data.tombstones)

    def static_names(self) -> set[str]:
        with self._op():
            return set(self._data.static)

    def reset(self, name: str) -> bool:
        with self._op() as now:
            d = self._data
            if name not in d.entries:
                return False
            try:
                spec = self._get(name)
            except InvalidEntryError:
                spec = None  # anchored at now, as the Redis registry does
            d.anchor[name] = self._anchor_at(spec, now)
            for table in (d.last, d.runs, d.lastnode, d.errors):
                table.pop(name, None)
            self._notify(_ENTRIES)
            return True

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        with self._op():  # one step: no concurrent write can come in between
            spec = self._get(name)
            if spec is None:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            if spec.enabled is enabled:
                return spec
            return self.put_entry(spec.with_changes(enabled=enabled), expected_version=spec.version)

    def set_paused(self, paused: bool) -> None:
        with self._op():
            self._data.paused = paused
            self._notify(_ENTRIES)

    def is_paused(self) -> bool:
        with self._op():
            return self._data.paused

    # -- run state and claims ----------------------------------------------------------

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        with self._op():
            return self._states(names)

    def _states(self, names: Iterable[str] | None) -> dict[str, EntryState]:
        d = self._data
        known = set(d.anchor) | set(d.last) | set(d.runs)
        wanted = known if names is None else known.intersection(names)
        return {
            name: EntryState(
                anchor_ms=d.anchor.get(name),
                last_tick_ms=d.last.get(name),
                run_count=d.runs.get(name, 0),
                last_node=d.lastnode.get(name),
            )
            for name in wanted
        }

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        with self._op() as now:
            d = self._data
            if len(d.locks) > _LOCK_SWEEP_AT:
                d.locks = {k: exp for k, exp in d.locks.items() if exp >= now}
            results = []
            for tick in ticks:
                name, at = tick.name, tick.tick_ms
                last = d.last.get(name, -1)  # -1: none, as the script has it
                runs = d.runs.get(name, 0)
                limit = (max_runs or {}).get(name) or 0  # 0 or None: no limit
                won = False
                if at > last:
                    if not tick.fire:
                        d.last[name] = last = at
                        won = True
                    elif (limit == 0 or runs < limit) and d.locks.get((name, at), -1) < now:
                        # a lock is held up to its expiry instant, as Redis's PX keys are
                        d.locks[(name, at)] = now + lock_ttl_ms
                        d.last[name] = last = at
                        d.runs[name] = runs = runs + 1
                        d.lastnode[name] = node_id
                        d.pending[(name, at)] = node_id
                        won = True
                elif at == last and tick.fire and d.pending.get((name, at)) == node_id:
                    won = True  # our own retry: the first reply was lost
                results.append(
                    ClaimResult(
                        tick=tick, won=won, last_tick_ms=None if last < 0 else last, run_count=runs
                    )
                )
            return results

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        with self._op():
            d = self._data
            for tick in ticks:
                d.pending.pop((tick.name, tick.tick_ms), None)
                text = d.errors.get(tick.name)
                if text is not None:
                    at = _error_tick_ms(text)
                    if at is None or at <= tick.tick_ms:
                        del d.errors[tick.name]

    def reject(self, rejections: Sequence[PublishRejection]) -> None:
        texts = [(r, dumps(r.to_json())) for r in rejections]
        with self._op():
            d = self._data
            for r, text in texts:
                if not r.run_now:
                    d.pending.pop((r.name, r.tick_ms), None)
                d.errors[r.name] = text

    def errors(self, names: Iterable[str] | None = None) -> dict[str, PublishRejection]:
        with self._op():
            return self._errors(names)

    def _errors(self, names: Iterable[str] | None) -> dict[str, PublishRejection]:
        errors = self._data.errors
        wanted = errors if names is None else {n: errors[n] for n in names if n in errors}
        return decode_errors(wanted)

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        self.mark_sent(ticks)

    def pending(self) -> list[PendingClaim]:
        with self._op():
            return [
                PendingClaim(name=name, tick_ms=at, node=node, task_id="", claimed_ms=0)
                for (name, at), node in self._data.pending.items()
            ]

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        with self._op() as now:
            keys = [(tick.name, tick.tick_ms) for tick in ticks]
            won = self._take(self._data.pending, keys, node_id, now)
            for key, ok in zip(keys, won, strict=True):
                if ok:
                    self._data.locks[key] = now + lock_ttl_ms
            return won

    def _take(
        self,
        held: dict[tuple[str, int], str],
        keys: Sequence[tuple[str, int]],
        node_id: str,
        now: int,
    ) -> list[bool]:
        """Give ``node_id`` the fields of ``held`` that are waiting (""), already its own,
        or held by a node no longer alive; absent fields are not taken."""
        out = []
        for key in keys:
            holder = held.get(key)
            ok = holder is not None and (holder in ("", node_id) or not self._is_alive(holder, now))
            if ok:
                held[key] = node_id
            out.append(ok)
        return out

    # -- run-now requests --------------------------------------------------------------

    def run_now(self, name: str) -> int:
        with self._op() as now:
            d = self._data
            if name not in d.entries:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            d.requests.setdefault((name, now), "")
            self._notify(_ENTRIES)
            return now

    def requests(self) -> list[RunRequest]:
        with self._op():
            return [
                RunRequest(name=name, request_ms=at, holder=holder)
                for (name, at), holder in self._data.requests.items()
            ]

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        with self._op() as now:
            keys = [(r.name, r.request_ms) for r in requests]
            return self._take(self._data.requests, keys, node_id, now)

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        with self._op():
            for request in requests:
                self._data.requests.pop((request.name, request.request_ms), None)

    # -- views -------------------------------------------------------------------------

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        with self._op() as now:
            d = self._data
            wanted = None if names is None else set(names)
            texts = {n: t for n, t in d.entries.items() if wanted is None or n in wanted}
            entries, bad = decode_entries(texts)
            return Snapshot(
                nodes=self._live_nodes(now),
                server_ms=now,
                names=sorted(d.entries),
                entries=entries,
                bad=bad,
                states=self._states(wanted),
                paused=d.paused,
                tombstones=dict(d.tombstones),
                static=set(d.static),
                reset_ms=d.reset_ms,
                errors=self._errors(wanted),
            )


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


if TYPE_CHECKING:

    def _conforms(registry: MemoryRegistry) -> RegistryProtocol:
        return registry
