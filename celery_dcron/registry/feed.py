"""The change feed, and the paged reads an instance needs when it must reload.

Every write to an entry (the scripts of :mod:`~celery_dcron.registry.scripts.entries`,
and a run-now request) appends one record to the ``feed`` stream in the same script that
bumps the entries version: ``n`` (entry name), ``k`` (kind), ``s`` (the version the
write set). Versions are gap-free, so an instance that read up to version ``s`` knows
the next record must carry ``s + 1``: when it does not (the stream was trimmed past the
instance, or the registry lost its data), :meth:`FeedStore.read_feed` says so and the
instance reloads in full, once, in pages (:meth:`FeedStore.scan_entries`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from ..entries import EntrySpec, EntryState
from ..entrytext import due_fields
from . import scripts
from .codec import FeedPage, FeedPosition, FeedRecord, decode_entries
from .transport import Store

__all__ = ["DueHint", "FeedStore", "Loaded", "decode_loaded", "due_hint"]


class Loaded(NamedTuple):
    """What :meth:`FeedStore.load` read of some entries."""

    #: the definitions that exist and parse
    specs: dict[str, EntrySpec]
    #: ``name -> error`` of the definitions that do not parse
    bad: dict[str, str]
    #: the run states (anchor, last tick, run count; ``last_node`` is not read) of the
    #: entries that have one
    states: dict[str, EntryState]
    #: each one's time in the due index (registry/keys.py), if it has one
    due: Mapping[str, int] = MappingProxyType({})


class DueHint(NamedTuple):
    """What tells when an entry is due, read without reading the entry whole
    (:meth:`FeedStore.due_hints`)."""

    #: the JSON text of its schedule; '' when not found so
    schedule: str
    start_ms: int | None
    #: its last tick, else its anchor; None when it has neither
    base_ms: int | None


class FeedStore(Store):
    """The ``feed`` stream, and the entries hash read by pages or by names."""

    def feed_position(self) -> FeedPosition:
        """Where the feed stands now: the entries version and the id of its last record,
        read in one transaction (no write falls between the two)."""
        t = self.transport
        pipe = t.client.pipeline(transaction=True)
        pipe.hget(self.keys.meta, "entries")
        pipe.xrevrange(self.keys.feed, "+", "-", count=1)
        version, last = t.execute(pipe)
        return FeedPosition(seq=int(version or 0), record_id=str(last[0][0]) if last else "0-0")

    def read_feed(self, after: FeedPosition, count: int) -> FeedPage:
        """Up to ``count`` records after ``after``, with the version now; ``gap`` when a
        record between ``after`` and them is gone (read again from
        :meth:`feed_position` after a full reload)."""
        t = self.transport
        pipe = t.pipeline()
        pipe.xrange(self.keys.feed, _next_id(after.record_id), "+", count=count)
        pipe.hget(self.keys.meta, "entries")
        raw, version = t.execute(pipe)
        head = int(version or 0)
        records: list[FeedRecord] = []
        expected = after.seq + 1
        for record_id, fields in raw:
            seq = int(fields.get("s", -1))
            if seq != expected:
                return FeedPage(records=[], position=after, head=head, gap=True)
            records.append(FeedRecord(name=fields.get("n", ""), kind=fields.get("k", ""), seq=seq))
            after = FeedPosition(seq=seq, record_id=str(record_id))
            expected += 1
        # Nothing after us, yet the version moved on (the records were trimmed), or went
        # back (a registry that lost its data): either way the feed cannot tell what changed.
        gap = (not records and head != after.seq) or head < after.seq
        return FeedPage(records=[] if gap else records, position=after, head=head, gap=gap)

    def scan_entries(
        self, cursor: int, count: int, want: Callable[[str], bool]
    ) -> tuple[int, list[str], dict[str, EntrySpec], dict[str, str]]:
        """One page of the entries hash (``HSCAN``; cursor 0 starts, and 0 back means
        done; a name may come twice): every name in it, and the definitions of the names
        ``want`` accepts (decoded), and ``name -> error`` for those that do not parse."""
        t = self.transport
        cursor, page = t.run(lambda: t.client.hscan(self.keys.entries, cursor, count=count))
        names = list(page)
        good, bad = decode_entries({n: text for n, text in page.items() if want(n)})
        return int(cursor), names, good, bad

    def get_entries(self, names: Iterable[str]) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """The definitions of ``names`` that exist and parse, and ``name -> error`` for
        those that do not parse (one round trip; absent names are in neither)."""
        wanted = list(names)
        if not wanted:
            return {}, {}
        t = self.transport
        texts: list[Any] = t.run(lambda: t.client.hmget(self.keys.entries, wanted))
        return decode_entries({n: text for n, text in zip(wanted, texts, strict=True) if text})

    def load(self, names: Sequence[str]) -> Loaded:
        """The definitions and run states of ``names``, in one round trip and one reply
        string (:data:`~.scripts.LOAD`): what an instance reads of the entries it comes
        to own."""
        if not names:
            return Loaded({}, {}, {})
        return decode_loaded(names, str(self.transport.call(scripts.LOAD, ["1", *names])))

    def due_hints(self, names: Sequence[str]) -> dict[str, DueHint]:
        """When each of ``names`` is due, as its schedule's text, start and last tick (or
        anchor) tell, read without its definition whole (one round trip, one reply
        string). A name without a definition has an empty hint (due at once)."""
        if not names:
            return {}
        raw = str(self.transport.call(scripts.LOAD, ["s", *names]))
        fields = raw.split(scripts.LOAD_SEP)
        if len(fields) != 4 * len(names):
            raise ValueError(f"due_hints: {len(fields)} fields for {len(names)} names")
        rows = zip(names, fields[0::4], fields[1::4], fields[2::4], fields[3::4], strict=True)
        return {
            name: DueHint(schedule, int(start) if start else None, _base(anchor, last))
            for name, schedule, start, anchor, last in rows
        }

    def last_runs(self, names: Sequence[str]) -> dict[str, int]:
        """The last tick of each of ``names`` that ran (one round trip, one reply
        string): how recently each ran."""
        if not names:
            return {}
        fields = str(self.transport.call(scripts.LOAD, ["r", *names])).split(scripts.LOAD_SEP)
        if len(fields) != len(names):
            raise ValueError(f"last_runs: {len(fields)} fields for {len(names)} names")
        return {name: int(ms) for name, ms in zip(names, fields, strict=True) if ms}

    # -- the due index (keys.py) ------------------------------------------------------

    def set_due(self, due: Mapping[str, int]) -> None:
        """Record the next tick computed for each entry of ``due`` that still exists
        (:data:`~.scripts.SET_DUE_MAX` a call, pipelined: one round trip)."""
        if not due:
            return
        flat = [x for pair in due.items() for x in pair]
        size = 2 * scripts.SET_DUE_MAX
        self.transport.call_many(
            scripts.SET_DUE, [flat[i : i + size] for i in range(0, len(flat), size)]
        )

    def due_range(
        self, after_ms: int | None, until_ms: int, *, offset: int = 0, count: int = 10_000
    ) -> list[tuple[str, int]]:
        """Up to ``count`` entries of the due index whose due time is after ``after_ms``
        (None: any) and at or before ``until_ms``, earliest first, skipping the first
        ``offset`` of them; with their due times."""
        t = self.transport
        low = "-inf" if after_ms is None else f"({after_ms}"
        raw = t.run(
            lambda: t.client.zrangebyscore(
                self.keys.due, low, until_ms, start=offset, num=count, withscores=True
            )
        )
        return [(str(name), int(score)) for name, score in raw]

    def due_index_complete(self) -> bool:
        """Whether the due index holds a time for every entry (not so for entries written
        before it existed, until their owners have read them once)."""
        t = self.transport
        pipe = t.pipeline()
        pipe.zcard(self.keys.due)
        pipe.hlen(self.keys.entries)
        indexed, entries = t.execute(pipe)
        return int(indexed) >= int(entries)


def decode_loaded(names: Sequence[str], raw: str) -> Loaded:
    """:data:`~.scripts.LOAD`'s reply for ``names``."""
    fields = raw.split(scripts.LOAD_SEP)
    if len(fields) != 5 * len(names):
        raise ValueError(f"load: {len(fields)} fields for {len(names)} names")
    states: dict[str, EntryState] = {}
    texts: dict[str, str] = {}
    due: dict[str, int] = {}
    rows = zip(
        names, fields[0::5], fields[1::5], fields[2::5], fields[3::5], fields[4::5], strict=True
    )
    for name, text, anchor, last, runs, score in rows:
        if text:
            texts[name] = text
        if score:
            due[name] = int(float(score))
        if anchor or last or runs:
            states[name] = EntryState(
                anchor_ms=int(anchor) if anchor else None,
                last_tick_ms=int(last) if last else None,
                run_count=int(runs) if runs else 0,
            )
    specs, bad = decode_entries(texts) if texts else ({}, {})
    return Loaded(specs, bad, states, due)


def due_hint(text: str, state: EntryState | None) -> DueHint:
    """The :class:`DueHint` of a stored definition and its state, found as the ``LOAD``
    script's mode ``s`` finds it (the memory registry's, and the tests')."""
    base = None
    if state is not None:
        base = state.last_tick_ms if state.last_tick_ms is not None else state.anchor_ms
    found = due_fields(text)
    if found is None:
        return DueHint("", None, base)
    schedule, start = found
    return DueHint(schedule, int(start) if start else None, base)


def _base(anchor: str, last: str) -> int | None:
    return int(last) if last else int(anchor) if anchor else None


def _next_id(record_id: str) -> str:
    """The smallest stream id after ``record_id`` (an exclusive start for ``XRANGE``
    that works on every Redis version)."""
    ms, _, seq = record_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
