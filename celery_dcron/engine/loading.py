"""Paged bookkeeping: the full reload, and the reassignment after a membership change.

Each job is a generator that does one page of work per step (a round trip of a few
thousand entries, or a few thousand ownership decisions) and then yields. :class:`Jobs`
runs the current job for at most :data:`BUDGET_S` per pass of the scheduling loop, so that
heartbeats and due ticks go out between pages: no bookkeeping step holds the loop for more
than about 100 ms, whatever the number of entries (G8).

- The **full reload** (at start, after a reconnect or a data loss, or when the change feed
  has a gap) notes the feed's position, scans every entry name in pages (nothing decoded),
  places the names on the nodes known by then, reads the definitions and states of the
  entries this instance owns, computes their next ticks on a timeline of its own, and
  swaps all of it in at once (a reload dropped for another one leaves the view and the
  timeline as they were); the feed is then applied from the noted position, so nothing
  written meanwhile is lost.
- The **reassignment** places every known name on the new set of nodes, forgets the
  entries that moved away and reads only those that moved here (about 1/N of them).

In a beat process (:attr:`Jobs.freeze_gc`), when a job ends what the process holds is
moved out of the cyclic garbage collector's full scans (``gc.freeze()``): a full
collection visits every tracked object (170 ms for 355,000 of them on the benchmark
machine, and a process holding a third of a million entries tracks several times that),
and it runs inside the loop. Entries hold no reference cycles, and are still freed by
their reference counts when dropped.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TypeVar

from .. import signals
from ..entries import EntrySpec, EntryState, Node
from ..logfields import log_event
from .names import Names
from .timeline import Timeline, earliest_due_ms
from .view import NO_STATE, View

__all__ = ["BUDGET_S", "Jobs"]

logger = logging.getLogger(__name__)

#: Entries per page of the full reload's scan (one HSCAN round trip).
SCAN_PAGE = 2_000
#: Definitions and states read per round trip.
LOAD_PAGE = 2_000
#: Last runs read per round trip to order a large reassignment (see ``Jobs._reassign``).
STATE_PAGE = 10_000
#: An entry that ran within this many ms is read as soon as a large reassignment finds it.
HOT_MS = 60_000
#: Entries of the due index read per round trip in a large reassignment (``_by_index``).
INDEX_PAGE = 10_000
#: Without a complete due index (entries written before it), due hints instead: read per
#: round trip (see ``_by_due``) ...
HINT_PAGE = 2_000
#: ... and estimated between two yields.
ESTIMATE_PAGE = 500
#: A large reassignment reads at once the entries due within this many ms (the others
#: once it has read all the hints, earliest due first) ...
SOON_MS = 10_000
#: ... in buckets of this many ms of their estimated next tick.
DUE_BUCKET_MS = 10_000
#: Ownership decisions, or timeline placements, between two yields.
PLACE_PAGE = 10_000
#: The longest a job runs in one pass of the loop (seconds); a page may end a bit later.
BUDGET_S = 0.05

T = TypeVar("T")


class Jobs:
    """The paged job in progress, if any: a full reload or a reassignment."""

    def __init__(self, view: View, *, on_loaded: Callable[[], None]) -> None:
        self.view = view
        #: called when a full reload has swapped in (the node may say it works then)
        self.on_loaded = on_loaded
        self.kind = ""
        #: full reloads started (the first one at start included)
        self.reloads = 0
        self._job: Iterator[None] | None = None
        self._reassign_after = False
        #: at the end of each job, move what the process holds out of the cyclic garbage
        #: collector's full scans (``gc.freeze()``): the beat process sets it (see the
        #: module's docstring); off for an engine in someone else's process
        self.freeze_gc = False

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def loading(self) -> bool:
        """A full reload is under way (the feed waits for it)."""
        return self.kind == "reload"

    def reload(self, reason: str) -> None:
        """Start a full reload (any job under way is dropped: this one covers it)."""
        self.reloads += 1
        log_event(
            logger, logging.INFO if reason != "start" else logging.DEBUG, "reload",
            "dcron: reloading every entry (%(reason)s)",
            node=self.view.node_id, reason=reason,
        )  # fmt: skip
        self._job = self._reload()
        self.kind = "reload"
        self._reassign_after = False

    def reassign(self) -> None:
        """Place the entries on the nodes anew (after the full reload under way, if any;
        not again while one under way places them on the same nodes: a node that takes a
        crashed one's entries hears of its own membership change once more)."""
        if self.kind == "reload":
            self._reassign_after = True
            return
        if self.kind == "reassign" and _placing(self.view.placement_nodes()) == _placing(
            self.view.nodes
        ):
            return
        self._job = self._reassign()
        self.kind = "reassign"

    def run(self, budget_s: float | None = None) -> bool:
        """Run the job under way for up to ``budget_s`` (default :data:`BUDGET_S`; 0: one
        page); True when none is left."""
        # In a beat process the cyclic collector waits for the end of the slice: a page
        # makes thousands of objects, and it would otherwise run every 700 of them, and
        # now and then scan everything read since the job began (about 1.5 µs an entry
        # read). What a slice leaves is collected once after it.
        paused = self.freeze_gc and gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._run(budget_s)
        finally:
            if paused:
                gc.enable()

    def _run(self, budget_s: float | None) -> bool:
        deadline = time.monotonic() + (BUDGET_S if budget_s is None else budget_s)
        while self._job is not None:
            try:
                next(self._job)
            except StopIteration:
                finished, self._job, self.kind = self.kind, None, ""
                if self.freeze_gc:
                    gc.collect(1)  # the young garbage first: frozen, it would stay
                    gc.freeze()
                if finished == "reload":
                    self.on_loaded()
                    if self._reassign_after:
                        self._reassign_after = False
                        self.reassign()
                continue
            except BaseException:
                # Redis went away mid-job: the reconnect reloads in full.
                self._job, self.kind = None, ""
                raise
            if time.monotonic() >= deadline:
                return False
        return True

    # -- the jobs ------------------------------------------------------------------

    def _reload(self) -> Iterator[None]:
        view = self.view
        registry = view.registry
        position = registry.feed_position()
        # Names first (nothing decoded): the nodes to place them on are read only after
        # the scan, so that instances starting together already see each other.
        names = Names(strategy=view.strategy)
        cursor = 0
        while True:
            cursor, page, _, _ = registry.scan_entries(cursor, SCAN_PAGE, _none)
            names.update(page)
            yield
            if cursor == 0:
                break
        nodes = view.placement_nodes()
        mine: list[str] = []
        assignment: dict[str, str] | None = None
        if any(n.id == view.node_id for n in nodes):
            assignment = yield from _place(view, names, nodes, mine)
        entries: dict[str, EntrySpec] = {}
        states: dict[str, EntryState] = {}
        bad: dict[str, str] = {}
        # Their next ticks, on a timeline of their own until the swap: a reload dropped
        # for another one (a reset, a second gap) leaves the current timeline whole. The
        # entries found to have run for the last time are told of after the swap, once
        # they are owned (their after-run action needs it).
        finished: list[tuple[EntrySpec, EntryState]] = []
        fresh = Timeline(on_finished=lambda spec, state: finished.append((spec, state)))
        for chunk in _chunks(mine, LOAD_PAGE):
            good, errors, read, due = registry.load(chunk)
            entries.update(good)
            bad.update(errors)
            states.update(read)
            yield
            for spec in good.values():  # scheduled as read: the due times are not kept
                known = due.get(spec.name)
                if view.runnable(spec):
                    fresh.schedule(spec, read.get(spec.name) or NO_STATE, known=known)
                else:
                    fresh.discard(spec.name, unindexed=known is None)
            yield
        static = [s.name for s in view.static_entries if s.name not in entries]
        static_states = {**registry.states(static), **states} if static else states
        view.static_anchors = {
            s.name: a
            for s in view.static_entries
            if (st := static_states.get(s.name)) is not None and (a := st.anchor_ms) is not None
        }
        view.skip_bad(bad)
        first = view.position is None
        old_names, old_entries = view.names, view.entries
        changed = entries.keys() != view.owned
        view.names, view.entries, view.states = names, entries, states
        view.owned = set(entries)
        view.nodes, view.assignment, view.position = nodes, assignment, position
        if not first:
            for name, spec in entries.items():
                old = old_entries.get(name)
                if name not in old_names:
                    view.notify(signals.entry_added, entry=spec)
                elif old is not None and old != spec:
                    view.notify(signals.entry_changed, entry=spec, old=old)
            for name in old_names - names:
                if name in old_entries:
                    view.notify(signals.entry_removed, entry=old_entries[name])
        view.timeline.adopt(fresh)
        for spec, state in finished:
            view.timeline.on_finished(spec, state)
        view.report_ownership(changed)

    def _reassign(self) -> Iterator[None]:
        view = self.view
        nodes = view.placement_nodes()
        me = view.node_id
        placing = any(n.id == me for n in nodes)
        before = set(view.owned)
        # From now on the feed places new names on these nodes too.
        view.nodes = nodes
        found: list[str] = []
        if placing:
            view.assignment = yield from _place(view, view.names, nodes, found)
        mine = set(found)
        yield
        for name in before - mine:
            view.drop(name, removed=False)
        yield
        owned, names = view.owned, view.names
        gained = [n for n in mine if n not in owned and n in names]
        yield
        if len(gained) > LOAD_PAGE:
            # Many entries (a node died). Reading and decoding them is most of the cost (a
            # third of a million take the survivors seconds), so those due soon first.
            started, count = time.monotonic(), len(gained)
            if view.registry.due_index_complete():
                by = "index"
                hot_count, first_s = yield from _by_index(view, gained)
                hot_s = hints_s = first_s - started
            else:  # entries written before the due index: the due hints (_by_due)
                by = "hints"
                hot_count, hot_s = yield from _hot_first(view, gained)
                gained = [n for n in gained if n not in owned]
                yield
                hints_s = (yield from _by_due(view, gained)) - started
            log_event(
                logger, logging.INFO, "moved_here",
                "dcron: read the %(count)d entries that moved here in %(seconds).2f s (the "
                "%(hot)d due soon after %(hot_s).2f s; order by the %(by)s)",
                node=view.node_id, count=count, hot=hot_count, hot_s=round(hot_s, 3),
                hints_s=round(hints_s, 3), by=by,
                seconds=round(time.monotonic() - started, 3),
            )  # fmt: skip
        else:
            for chunk in _chunks(gained, LOAD_PAGE):
                view.load(chunk, notify=False)
                yield
        view.report_ownership(view.owned != before)


def _place(
    view: View, names: Names, nodes: Sequence[Node], into: list[str]
) -> Generator[None, None, dict[str, str] | None]:
    """A paged job: append to ``into`` the names this node owns on ``nodes``; returns the
    whole assignment with a whole-list strategy (round-robin, range), else None."""
    me = view.node_id
    if view.whole_list:
        assignment = dict(view.strategy.assign(sorted(names), nodes))
        into.extend(n for n, owner in assignment.items() if owner == me)
        yield
        return assignment
    by_arcs = names.owned(nodes, me, into)
    if by_arcs is not None:  # the ring index: by arcs, not one hash per name
        yield from by_arcs
        return None
    for chunk in _chunks(list(names), PLACE_PAGE):
        placed = view.strategy.assign(chunk, nodes)
        into.extend(n for n, owner in placed.items() if owner == me)
        yield
    return None


def _by_index(view: View, gained: Sequence[str]) -> Generator[None, None, tuple[int, float]]:
    """A paged job: read ``gained`` (owned now), due ones first, by the due index.

    The registry's due index holds, for each entry, the earliest its next tick can be
    (what its last owner computed: registry/keys.py). The entries of ``gained`` it says are
    due within :data:`SOON_MS` are read first; then the others, :data:`LOAD_PAGE` a round
    trip, and before each page those that came within :data:`SOON_MS` meanwhile (one
    small read of the index). So each entry is read before it is due, however long
    reading them all takes. (The index can be later than the entry's next tick only in a
    narrow race: its last owner wrote a tick computed from the old definition after a
    change of the entry's schedule set 0 and before the owner heard of the change (no
    time is written while its change feed is behind: within about a pub/sub message), and
    died before writing the new one. Such an entry is read in its turn, and its catch-up
    follows its misfire policy. Entries the index moves meanwhile may also be read in
    their turn: its pages follow the times read, not an offset from the start.)
    Returns how many were read first, and when they were in (``time.monotonic()``).
    """
    waiting = dict.fromkeys(gained)
    horizon = view.clock.now_ms() + SOON_MS
    first = yield from _due_soon(view, None, horizon, waiting)
    for page in _chunks(first, LOAD_PAGE):
        view.load(page, notify=False)
        yield
    first_s = time.monotonic()
    rest = iter(gained)
    while waiting:
        page = []
        for name in rest:
            if name in waiting:
                del waiting[name]
                page.append(name)
                if len(page) >= LOAD_PAGE:
                    break
        if not page:
            break
        view.load(page, notify=False)
        yield
        until = view.clock.now_ms() + SOON_MS
        if until > horizon:
            soon = yield from _due_soon(view, horizon, until, waiting)
            horizon = until
            for chunk in _chunks(soon, LOAD_PAGE):
                view.load(chunk, notify=False)
                yield
    return len(first), first_s


def _due_soon(
    view: View, after_ms: int | None, until_ms: int, waiting: dict[str, None]
) -> Generator[None, None, list[str]]:
    """A paged job: the names of ``waiting`` that the due index says are due after
    ``after_ms`` (None: any time) and by ``until_ms``, earliest first, taken out of it."""
    out: list[str] = []
    offset = 0
    while True:
        page = view.registry.due_range(after_ms, until_ms, offset=offset, count=INDEX_PAGE)
        for name, _ in page:
            if name in waiting:
                del waiting[name]
                out.append(name)
        if len(page) < INDEX_PAGE:
            return out
        # On from the last time read (again: others may share it), not by an offset from
        # the start: other nodes' writes move entries out of the range meanwhile, and an
        # offset from the start would skip as many.
        last = page[-1][1]
        same = sum(1 for _, ms in page if ms == last)
        if same == len(page) and after_ms == last - 1:
            offset += same  # a page of one time, read from that time: further along it
        else:
            offset = same
        after_ms = last - 1  # times are whole ms: from ``last`` on
        yield


def _hot_first(view: View, gained: Sequence[str]) -> Generator[None, None, tuple[int, float]]:
    """A paged job: read those of ``gained`` that ran within the last :data:`HOT_MS`,
    found by one cheap read of last ticks: the frequent ones, due within the second.
    Returns how many, and how long it took."""
    started, count = time.monotonic(), 0
    names = view.names
    hot_since = view.clock.now_ms() - HOT_MS
    for chunk in _chunks(gained, STATE_PAGE):
        runs = view.registry.last_runs(chunk)
        hot = [n for n, ms in runs.items() if ms >= hot_since and n in names]
        count += len(hot)
        for page in _chunks(hot, LOAD_PAGE):
            view.load(page, notify=False)
            yield
        yield
    return count, time.monotonic() - started


def _by_due(view: View, gained: Sequence[str]) -> Generator[None, None, float]:
    """A paged job: read ``gained`` (owned now) in the order they are due.

    Reading and decoding the definitions is most of what a large reassignment costs (a
    third of a million entries take the survivors seconds). So first each entry's next
    tick is estimated from a hint alone (:meth:`~celery_dcron.registry.Registry.due_hints`:
    its schedule's text and its last tick; :func:`~.timeline.earliest_due_ms`, a lower
    bound), :data:`HINT_PAGE` a round trip; the entries due within :data:`SOON_MS` are read
    at once, the others after the last hint, by :data:`DUE_BUCKET_MS` buckets of their
    estimate, earliest first. Only their names are kept meanwhile. (No change is applied
    meanwhile: the feed waits for the job, and its records then override what was read.)
    Returns when the last hint was read (``time.monotonic()``).
    """
    later: dict[int, list[str]] = {}
    for chunk in _chunks(gained, HINT_PAGE):
        hints = view.registry.due_hints(chunk)
        yield
        soon_ms = view.clock.now_ms() + SOON_MS
        now: list[str] = []
        for i, (name, hint) in enumerate(hints.items(), 1):
            due = earliest_due_ms(hint)
            if due <= soon_ms:
                now.append(name)  # a removed name too: reading it finds it gone
            else:
                later.setdefault(due // DUE_BUCKET_MS, []).append(name)
            if i % ESTIMATE_PAGE == 0:
                yield  # a cron or solar estimate not cached is a croniter step, ~30 µs
        yield
        for page in _chunks(now, LOAD_PAGE):
            view.load(page, notify=False)
            yield
    hinted = time.monotonic()
    waiting: list[str] = []
    for bucket in sorted(later):
        waiting += later.pop(bucket)
        while len(waiting) >= LOAD_PAGE:
            view.load(waiting[:LOAD_PAGE], notify=False)
            del waiting[:LOAD_PAGE]
            yield
    if waiting:
        view.load(waiting, notify=False)
        yield
    return hinted


def _placing(nodes: Sequence[Node]) -> list[tuple[str, float]]:
    """What placing entries on ``nodes`` depends on: their ids and weights, in order."""
    return [(n.id, n.weight) for n in nodes]


def _none(name: str) -> bool:
    """Decode no definition while scanning names."""
    return False


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
