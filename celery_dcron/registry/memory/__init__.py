"""An in-memory registry: the semantics of the Redis registry's scripts, without Redis.

:class:`MemoryRegistry` satisfies :class:`celery_dcron.interfaces.Registry`; the contract
suite (``tests/integration/test_registry_contract.py``) runs against it and against the
Redis registry, and every difference it finds is a bug in this module. Its time is an
injected clock (a :class:`~celery_dcron.clock.ManualClock` in tests): heartbeats, fire
locks and request times follow it, where Redis follows its server time.

Each public method is one atomic step (one lock), as each script is in Redis. The
parts mirror the Redis registry's stores: ``nodes.py``, ``entries.py``, ``claims.py``
over the shared state and lock of ``base.py``.
Test helpers beyond the protocol: :attr:`MemoryRegistry.available` (False: every call
raises RegistryUnavailableError, as with Redis down) and :meth:`MemoryRegistry.lose_data`
(what a Redis restart without persistence does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ...entries import EntrySpec
from ..codec import FeedPage, FeedPosition, FeedRecord, Snapshot, decode_entries
from ..feed import DueHint, Loaded, due_hint
from .base import MemorySubscription
from .claims import _Claims
from .entries import _Entries
from .nodes import _Nodes

if TYPE_CHECKING:
    from ...config import Settings
    from ...interfaces import Clock
    from ...interfaces import Registry as RegistryProtocol

__all__ = ["MemoryRegistry", "MemorySubscription"]


class MemoryRegistry(_Nodes, _Entries, _Claims):
    """The registry of one namespace, held in this process."""

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> MemoryRegistry:
        return cls(clock, namespace=settings.namespace)

    # -- the change feed and paged reads ----------------------------------------------

    def feed_position(self) -> FeedPosition:
        with self._op():
            d = self._data
            last = d.feed[-1][0] if d.feed else 0
            return FeedPosition(seq=d.entries_version, record_id=f"{last}-0")

    def read_feed(self, after: FeedPosition, count: int) -> FeedPage:
        with self._op():
            d = self._data
            head = d.entries_version
            after_id = int(after.record_id.partition("-")[0])
            page = [r for r in d.feed if r[0] > after_id][:count]
            records: list[FeedRecord] = []
            position = after
            for seq, name, kind in page:
                if seq != position.seq + 1:
                    return FeedPage(records=[], position=after, head=head, gap=True)
                records.append(FeedRecord(name=name, kind=kind, seq=seq))
                position = FeedPosition(seq=seq, record_id=f"{seq}-0")
            gap = (not records and head != position.seq) or head < position.seq
            return FeedPage(records=[] if gap else records, position=position, head=head, gap=gap)

    def scan_entries(
        self, cursor: int, count: int, want: Callable[[str], bool]
    ) -> tuple[int, list[str], dict[str, EntrySpec], dict[str, str]]:
        with self._op():
            names = sorted(self._data.entries)[cursor : cursor + count]
            texts = {n: self._data.entries[n] for n in names if want(n)}
        good, bad = decode_entries(texts)
        end = cursor + len(names)
        return (0 if len(names) < count else end), names, good, bad

    def get_entries(self, names: Iterable[str]) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        with self._op():
            entries = self._data.entries
            texts = {n: entries[n] for n in names if n in entries}
        return decode_entries(texts)

    def load(self, names: Sequence[str]) -> Loaded:
        with self._op():
            entries = self._data.entries
            texts = {n: entries[n] for n in names if n in entries}
            states = {
                name: replace(state, last_node=None) for name, state in self._states(names).items()
            }
            indexed = self._data.due
            due = {n: indexed[n] for n in names if n in indexed}
        specs, bad = decode_entries(texts) if texts else ({}, {})
        return Loaded(specs, bad, states, due)

    def due_hints(self, names: Sequence[str]) -> dict[str, DueHint]:
        with self._op():
            entries = self._data.entries
            states = self._states(names)
            return {
                n: due_hint(entries[n], states.get(n)) if n in entries else DueHint("", None, None)
                for n in names
            }

    def last_runs(self, names: Sequence[str]) -> dict[str, int]:
        with self._op():
            states = self._states(names)
        return {n: st.last_tick_ms for n, st in states.items() if st.last_tick_ms is not None}

    def set_due(self, due: Mapping[str, int]) -> None:
        with self._op():
            d = self._data
            for name, ms in due.items():
                if name in d.entries:
                    d.due[name] = ms

    def due_range(
        self, after_ms: int | None, until_ms: int, *, offset: int = 0, count: int = 10_000
    ) -> list[tuple[str, int]]:
        with self._op():
            found = sorted(
                (ms, name)
                for name, ms in self._data.due.items()
                if (after_ms is None or ms > after_ms) and ms <= until_ms
            )
        return [(name, ms) for ms, name in found[offset : offset + count]]

    def due_index_complete(self) -> bool:
        with self._op():
            return len(self._data.due) >= len(self._data.entries)

    def trim_feed(self, keep: int = 0) -> None:
        """Test helper: drop all but the last ``keep`` feed records (as ``XTRIM`` does)."""
        with self._lock:
            feed = self._data.feed
            while len(feed) > keep:
                feed.popleft()

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


if TYPE_CHECKING:

    def _conforms(registry: MemoryRegistry) -> RegistryProtocol:
        return registry
