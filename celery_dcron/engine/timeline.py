"""The timeline: when each owned entry is due next, as a heap of (due time, entry name).

:class:`Timeline` schedules an entry at its next tick (:func:`celery_dcron.planning.next_run_ms`),
pops the entries due by a horizon, puts entries back (a claim that could not be made, an
entry put off), and says when the next one is due. An entry rescheduled leaves its old
heap item behind; such stale items are skipped when met.

It also remembers which entries it scheduled since :meth:`Timeline.take_dirty` last asked:
the engine writes their next ticks to the registry's due index (registry/keys.py), which
tells a node that takes a dead node's entries which of them to read first.
"""

from __future__ import annotations

import functools
import heapq
import json
from collections import deque
from collections.abc import Callable

from .. import planning
from .. import ticks as tickmath
from ..entries import EntrySpec, EntryState
from ..registry import DueHint
from ..schedules import CronSchedule, IntervalSchedule, Schedule, schedule_from_json

__all__ = ["NEVER_MS", "Timeline", "earliest_due_ms"]

#: The due time written to the due index for an entry that never runs again (finished):
#: after every other (a Redis score is a double: exact up to 2**53).
NEVER_MS = 2**53 - 1


class Timeline:
    """The due heap of the owned entries."""

    def __init__(self, *, on_finished: Callable[[EntrySpec, EntryState], None]) -> None:
        #: told of each entry found to have run for the last time
        self.on_finished = on_finished
        self._heap: list[tuple[int, str]] = []
        self._next: dict[str, int] = {}
        # Scheduled since take_dirty last asked (a name may be there twice; 8 bytes each),
        # and of those off the timeline, the time to write: NEVER_MS for one found
        # finished, 0 for one that cannot run here and has no time in the index yet.
        self._dirty: deque[str] = deque()
        self._off: dict[str, int] = {}

    def adopt(self, other: Timeline) -> None:
        """Take ``other``'s entries and due times in place of these, at once."""
        self._heap, self._next = other._heap, other._next
        self._dirty += other._dirty  # the names of this one left in it are skipped
        self._off = other._off

    def schedule(self, spec: EntrySpec, state: EntryState, *, known: int | None = None) -> None:
        """Put ``spec`` at its next tick (at 0, due at once, when it has no anchor yet: the
        next pass anchors it); a finished entry leaves the timeline. ``known``: its time in
        the registry's due index, as read with it (None: unknown); unless the next tick is
        that, :meth:`take_dirty` tells of it."""
        name = spec.name
        self._off.pop(name, None)
        if planning.base_tick_ms(spec, state) is None:
            due: int | None = 0
        else:
            due = planning.next_run_ms(spec, state, step=_next_tick)
        if due is None:
            self._next.pop(name, None)
            if known != NEVER_MS:
                self._off[name] = NEVER_MS
                self._dirty.append(name)
            self.on_finished(spec, state)
            return
        if due != known:
            self._dirty.append(name)
        self.put(name, due)

    @property
    def dirty(self) -> int:
        """How many entries :meth:`take_dirty` has to tell of (about: a name may count
        twice)."""
        return len(self._dirty)

    def take_dirty(self, limit: int) -> dict[str, int]:
        """Up to ``limit`` of the entries scheduled since the last call, oldest first,
        with their next tick as it is now (:data:`NEVER_MS` for a finished one, 0 for one
        taken off without a time in the index); an entry no longer on the timeline
        otherwise (taken off, dropped) is left out."""
        out: dict[str, int] = {}
        dirty, current, off = self._dirty, self._next, self._off
        for _ in range(min(limit, len(dirty))):
            name = dirty.popleft()
            due = current.get(name)
            if due is None:
                due = off.pop(name, None)
            if due is not None:
                out[name] = due
        return out

    def discard(self, name: str, *, unindexed: bool = False) -> None:
        """Take ``name`` off the timeline (its heap item is skipped when met). With
        ``unindexed`` (it has no time in the due index: an entry written before it that
        cannot run here), :meth:`take_dirty` writes 0 for it, so that the index holds every
        entry."""
        self._next.pop(name, None)
        if unindexed:
            self._off[name] = 0
            self._dirty.append(name)
        else:
            self._off.pop(name, None)

    def __len__(self) -> int:
        return len(self._next)

    def put(self, name: str, due_ms: int) -> None:
        self._next[name] = due_ms
        heapq.heappush(self._heap, (due_ms, name))
        if len(self._heap) > 2 * len(self._next) + 4096:  # mostly stale items: rebuild
            self._heap = [(due, n) for n, due in self._next.items()]
            heapq.heapify(self._heap)

    def next_due_ms(self) -> int | None:
        while self._heap:
            due, name = self._heap[0]
            if self._next.get(name) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def upcoming(self, horizon_ms: int, limit: int) -> list[str]:
        """Up to ``limit`` entries due at or before ``horizon_ms`` (not in order), left on
        the timeline: a walk of the heap's top, O(the entries returned)."""
        heap, current = self._heap, self._next
        out: list[str] = []
        todo = [0]
        while todo and len(out) < limit:
            i = todo.pop()
            if i >= len(heap) or heap[i][0] > horizon_ms:
                continue  # a heap: nothing below an item is due before it
            due, name = heap[i]
            if current.get(name) == due:
                out.append(name)
            todo += (2 * i + 1, 2 * i + 2)
        return out

    def pop_due(self, horizon_ms: int) -> list[tuple[str, int]]:
        """The entries due at or before ``horizon_ms``, with their due time; they leave
        the timeline until scheduled or put back."""
        due: list[tuple[str, int]] = []
        while self._heap and self._heap[0][0] <= horizon_ms:
            when, name = heapq.heappop(self._heap)
            if self._next.get(name) != when:
                continue
            del self._next[name]
            due.append((name, when))
        return due


#: A cron, solar or one-off entry's estimate counts from the start of the hour of its base.
ESTIMATE_ROUND_MS = 3_600_000


def earliest_due_ms(hint: DueHint) -> int:
    """The earliest an entry can be due, from its :class:`~celery_dcron.registry.DueHint`
    (read without decoding the entry): its schedule's next tick after its last tick, or
    anchor (for a cron, solar or one-off schedule: after the start of that hour). Its
    ``end_at`` and ``max_runs`` are not read: they can only cancel the tick. 0
    (due at once) when it has no anchor yet, is finished, has a ``start_at`` that moves its
    base (:func:`~celery_dcron.planning.base_tick_ms`), or its schedule cannot be read so.
    """
    base = hint.base_ms
    if (
        base is None
        or not hint.schedule
        or (hint.start_ms is not None and hint.start_ms - 1 > base)
    ):
        return 0
    schedule = _schedule_of(hint.schedule)
    if schedule is None:
        return 0
    if not isinstance(schedule, IntervalSchedule):
        # A cron, solar or one-off tick is a croniter/ephem step (~30 µs), remembered by
        # (schedule, base): from the hour the base falls in, entries share it, and the
        # next tick after an earlier instant is never later (still a lower bound).
        base -= base % ESTIMATE_ROUND_MS
    try:
        due = _next_tick(schedule, base)
    except Exception:  # only an estimate: decoding the entry reports what is wrong
        return 0
    return due or 0


@functools.lru_cache(maxsize=4096)
def _schedule_of(text: str) -> Schedule | None:
    """A schedule's JSON text, decoded (None: it does not decode): entries share a few
    distinct schedules, so a large reassignment decodes each one once."""
    try:
        return schedule_from_json(json.loads(text), entry="?")
    except Exception:  # only an estimate: decoding the entry reports what is wrong
        return None


def _next_tick(schedule: Schedule, after_ms: int) -> int | None:
    """``ticks.next_tick``, remembered for the schedules where it is not plain arithmetic.

    A cron step costs ~30 µs, and entries that share an expression share their ticks: the
    10,000 entries of a burst, or 100,000 entries rescheduled after a membership change,
    then cost one croniter step per distinct (schedule, previous tick). Entries that
    have not fired yet count from their anchors, each its own instant (the write's
    time): for a cron schedule the first tick after any instant in ``[a, T)`` is ``T``
    when it is the first after ``a``, so each schedule remembers the widest such span it
    met, and 1,000,000 cron entries added in bulk cost a few steps per expression, not
    one each.
    """
    if isinstance(schedule, IntervalSchedule):
        return tickmath.next_tick(schedule, after_ms)
    if not isinstance(schedule, CronSchedule):
        return _cached_next_tick(schedule, after_ms)
    span = _cron_spans.get(schedule)
    if span is not None and span[0] <= after_ms < span[1]:
        return span[1]
    tick = _cached_next_tick(schedule, after_ms)
    # a span across a change of the zone's UTC offset, or starting within 3 h of one (the
    # longest fall-back's repeated wall time is 2 h: Antarctica/Troll), is not kept:
    # there croniter's next tick after a later instant can be earlier (Lord_Howe's
    # fall-back; Europe/London's for a cron of Sundays in October at 01:30)
    fold_end = after_ms + tickmath.FOLD_MS
    if tick is not None and tickmath.same_offset(schedule, after_ms, fold_end, tick):
        lo = min(span[0], after_ms) if span is not None and span[1] == tick else after_ms
        if span is None and len(_cron_spans) >= _CRON_SPANS:
            _cron_spans.clear()
        _cron_spans[schedule] = (lo, tick)
    return tick


_cached_next_tick = functools.lru_cache(maxsize=8192)(tickmath.next_tick)

#: The most cron schedules whose span ``_next_tick`` remembers (~200 bytes each).
_CRON_SPANS = 8192
#: schedule -> (lo, tick): its first tick after any instant in [lo, tick) is tick
_cron_spans: dict[Schedule, tuple[int, int]] = {}
