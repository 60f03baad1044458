"""The instance's view of the namespace: every entry's name, and the definitions and run
states of the entries it owns (G8: memory follows the owned share, not the namespace).

:class:`View` writes the static entries (``beat_schedule``), refreshes the nodes, and
applies the change feed: each record names one entry, so a change costs one read of that
entry on its owner and nothing elsewhere (:meth:`View.apply_feed`). The paged full reload
and the reassignment after a membership change live in :mod:`.loading`. It sends the
change signals (``entry_added|changed|removed`` on the entry's owner, ``node_joined|left``)
and says which owned entries can run here (enabled, and accepted by the adapter's check).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

from .. import signals
from ..entries import EntrySpec, EntryState, Node, NodeStatus
from ..interfaces import Strategy
from ..logfields import log_event
from ..registry import FeedPosition, Loaded
from .context import Context, Part
from .names import Names
from .timeline import Timeline

__all__ = ["EntryCheck", "FeedApplied", "View"]

logger = logging.getLogger(__name__)

#: ``check(spec)`` returns why an entry cannot run here, or None.
EntryCheck = Callable[[EntrySpec], str | None]

#: The state of an entry that has none yet.
NO_STATE = EntryState()
#: Static entries written (or removed) per call of the static sync (one script call,
#: ~10 µs an entry in Redis): a larger ``beat_schedule`` is written a page at a time,
#: the loop going on between them.
STATIC_PAGE = 1_000
#: Static names read per ``HSCAN`` call once a paged sync has written its pages.
STATIC_SCAN = 10_000


class _StaticSync:
    """Where a static sync is: entries written, the registry's static names scanned
    (cursor), those it holds that the schedule does not list (to remove)."""

    def __init__(self) -> None:
        self.written = 0
        self.changed = 0
        self.cursor = 0
        self.scanned = False
        self.listed: set[str] | None = None
        self.stale: set[str] = set()


#: Feed records read per round trip.
FEED_PAGE = 500


class FeedApplied(NamedTuple):
    """What :meth:`View.apply_feed` did."""

    #: the view is up to date with the feed
    done: bool
    #: records were lost: reload in full
    gap: bool = False
    #: a whole-list strategy saw an add or a removal: place the entries anew
    reassign: bool = False


class View(Part):
    """Entry names, and definitions and states of the owned entries, as last read."""

    def __init__(
        self,
        ctx: Context,
        *,
        strategy: Strategy,
        static_entries: Sequence[EntrySpec],
        check: EntryCheck | None,
        timeline: Timeline,
    ) -> None:
        super().__init__(ctx)
        self.strategy = strategy
        self.static_entries = list(static_entries)
        self.check = check
        self.timeline = timeline
        #: every entry name in the registry (ownership is decided from names)
        self.names = Names(strategy=strategy)
        #: definitions of the owned entries
        self.entries: dict[str, EntrySpec] = {}
        #: run states of the owned entries (absent: no state yet)
        self.states: dict[str, EntryState] = {}
        self.owned: set[str] = set()
        #: anchors of this instance's static entries (``beat_schedule``), owned or not:
        #: after a Redis data loss every instance puts them back before the static sync
        #: would anchor them anew (dynamic entries' anchors are put back by their owners)
        self.static_anchors: dict[str, int] = {}
        self._static = _StaticSync()  # the static sync under way
        #: definitions of entries owned elsewhere, read for one job (a claim of ours to
        #: publish again, a run-now request we took); replaced at each read
        self.borrowed: dict[str, EntrySpec] = {}
        #: where the feed was applied up to; None until the first full load is done
        self.position: FeedPosition | None = None
        #: the nodes ownership was last computed on (strategies with whole-list
        #: placement keep their whole assignment in :attr:`assignment`)
        self.nodes: list[Node] = []
        self.assignment: dict[str, str] | None = None
        #: the feed had a run-now request / a pause change since these were last cleared
        self.run_seen = False
        self.pause_seen = False
        self._skipped_reasons: dict[str, str] = {}
        self._nodes_seen = False

    # -- reading -------------------------------------------------------------------

    def state(self, name: str) -> EntryState:
        return self.states.get(name) or NO_STATE

    def spec(self, name: str) -> EntrySpec | None:
        """The definition of an owned entry, or one borrowed for the job at hand."""
        return self.entries.get(name) or self.borrowed.get(name)

    def borrow(self, names: Collection[str]) -> None:
        """Read the definitions of ``names`` this instance does not own (one round trip)."""
        missing = [n for n in names if n not in self.entries]
        self.borrowed = self.registry.get_entries(missing)[0] if missing else {}

    @property
    def whole_list(self) -> bool:
        """Whether the strategy places each entry by the whole list (round-robin, range):
        then adding or removing one entry can move others."""
        return bool(getattr(self.strategy, "needs_all_entries", False))

    def placement_nodes(self) -> list[Node]:
        """The nodes to place entries on: the working ones; while this one starts, also
        itself and the others that are starting (each loads its share before it says it
        works; instances started together then load a share each, not everything)."""
        nodes = list(self.membership.working_nodes())
        me = self.membership.node
        if me.status is NodeStatus.STARTING:
            ids = {n.id for n in nodes}
            for node in (*self.membership.nodes, me):
                if node.status is NodeStatus.STARTING and node.id not in ids:
                    nodes.append(node)
                    ids.add(node.id)
        return nodes

    def is_mine(self, name: str) -> bool:
        """Whether ``name`` is placed on this node, by the nodes of the last placement."""
        if self.assignment is not None:
            return self.assignment.get(name) == self.node_id
        return bool(self.nodes) and self.strategy.owner(name, self.nodes) == self.node_id

    # -- the change feed -----------------------------------------------------------

    def apply_feed(self) -> FeedApplied:
        """Apply one page of the change feed: whether the view is now up to date with
        it, whether records were lost (reload then), whether entries must be placed
        anew (a whole-list strategy saw an add or a removal). Run-now and pause records
        only raise :attr:`run_seen` / :attr:`pause_seen`."""
        if self.position is None:
            return FeedApplied(done=True)
        page = self.registry.read_feed(self.position, FEED_PAGE)
        if page.gap:
            log_event(
                logger, logging.WARNING, "feed_gap",
                "dcron: the change feed lost records after version %(seq)s (now %(head)s); "
                "reloading every entry",
                node=self.node_id, seq=self.position.seq, head=page.head,
            )  # fmt: skip
            return FeedApplied(done=False, gap=True)
        load: dict[str, None] = {}  # ordered set: names to read, owned after the change
        reassign = False
        for record in page.records:
            name, kind = record.name, record.kind
            if kind == "run":
                self.run_seen = True
                continue
            if kind == "pause" or not name:
                self.pause_seen = True
                continue
            if kind == "del":
                self.names.discard(name)
                load.pop(name, None)
                self.drop(name, removed=True)
                reassign = reassign or self.whole_list
                continue
            if name not in self.names:
                self.names.add(name)
                reassign = reassign or self.whole_list
            if self.is_mine(name):
                load[name] = None
        if load:
            self.load(list(load), notify=True)
        self.position = page.position
        return FeedApplied(done=page.position.seq >= page.head, reassign=reassign)

    def load(self, names: Sequence[str], *, notify: bool) -> None:
        """Read the definitions and states of ``names`` (owned now) in one round trip,
        and put them on the timeline (or off it, when they cannot run)."""
        self.adopt(names, self.registry.load(names), notify=notify)

    def adopt(self, names: Sequence[str], loaded: Loaded, *, notify: bool) -> None:
        """Take ``names`` (owned now) as ``loaded`` read them (a name it has no
        definition of was removed), and put them on the timeline (or off it)."""
        specs, bad, states = loaded.specs, loaded.bad, loaded.states
        for name in names:
            spec = specs.get(name)
            if spec is None:
                if name in bad:
                    self._skip_once(name, f"malformed entry in the registry: {bad[name]}")
                    self.drop(name, removed=False)
                else:  # removed since the record: its own record follows
                    self.names.discard(name)
                    self.drop(name, removed=True)
                continue
            old = self.entries.get(name)
            self.entries[name] = spec
            self.owned.add(name)
            state = states.get(name)
            if state is None:
                self.states.pop(name, None)
            else:
                self.states[name] = state
            if notify and old is None:
                self.notify(signals.entry_added, entry=spec)
            elif notify and old is not None and old != spec:
                self.notify(signals.entry_changed, entry=spec, old=old)
            self.place(spec, known=loaded.due.get(name))

    def place(self, spec: EntrySpec, *, known: int | None = None) -> None:
        """Put an owned entry on the timeline at its next tick, or take it off (``known``:
        its time in the due index, as read with it)."""
        if self.runnable(spec):
            self.timeline.schedule(spec, self.state(spec.name), known=known)
        else:
            self.timeline.discard(spec.name, unindexed=known is None)

    def drop(self, name: str, *, removed: bool) -> None:
        """Forget an entry's definition and state (owned elsewhere now, or removed)."""
        spec = self.entries.pop(name, None)
        self.states.pop(name, None)
        self.owned.discard(name)
        self.timeline.discard(name)
        if removed and spec is not None:
            self.notify(signals.entry_removed, entry=spec)

    # -- nodes and the static schedule ---------------------------------------------

    def refresh_nodes(self) -> None:
        before = {n.id: n for n in self.membership.working_nodes()}
        self.membership.refresh_nodes()
        after = {n.id: n for n in self.membership.working_nodes()}
        if not self._nodes_seen:
            self._nodes_seen = True
            return
        for node_id in after.keys() - before.keys():
            self.notify(signals.node_joined, node=after[node_id])
        for node_id in before.keys() - after.keys():
            self.notify(signals.node_left, node=before[node_id])

    def start_static_sync(self) -> None:
        """Write this instance's static entries (``beat_schedule``) to the registry from
        the first: :meth:`sync_static` does it, a page at a time."""
        self._static = _StaticSync()

    @property
    def static_paged(self) -> bool:
        """Whether the static sync takes more than one call (more than a page)."""
        return len(self.static_entries) > STATIC_PAGE

    def sync_static(self, budget_s: float) -> bool:
        """Steps of the static sync started, for up to ``budget_s`` (at least one); True
        once it is done. A schedule of up to ``STATIC_PAGE`` entries is one script call
        (which also removes the static entries it does not list). A larger one: pages of
        ``STATIC_PAGE`` entries (one script call each, ~10 µs an entry in Redis), then
        the static names in the registry (``HSCAN``, ``STATIC_SCAN`` a call), then the
        removal of those no longer listed, ``STATIC_PAGE`` a call. Each step can be done
        again (a step cut off by a Redis error is, on the next try)."""
        deadline = time.monotonic() + budget_s
        sync, specs = self._static, self.static_entries
        while not self._static_step(sync, specs):
            if time.monotonic() >= deadline:
                return False
        if sync.changed:
            logger.info("dcron: static schedule synced, %d entries changed", sync.changed)
        return True

    def _static_step(self, sync: _StaticSync, specs: Sequence[EntrySpec]) -> bool:
        """One step of the static sync; True when it is done."""
        if sync.written < len(specs) or (not specs and not sync.scanned):
            page = specs[sync.written : sync.written + STATIC_PAGE]
            whole = len(specs) <= STATIC_PAGE
            result = self.registry.sync_static(page, final=whole)
            for spec in page:  # the entries are kept (a sync again after a Redis data
                spec.forget_text()  # loss), their texts made again then
            for name, reason in result.skipped.items():
                logger.warning(
                    "dcron: static entry %r not written: a %s entry of that name exists",
                    name,
                    "deleted (tombstoned)" if reason == "tombstoned" else reason,
                )
            sync.changed += result.changed
            sync.written += len(page)
            if whole:
                sync.scanned = True
                return True
            return False
        if not sync.scanned:
            sync.cursor, names = self.registry.scan_static(sync.cursor, STATIC_SCAN)
            if sync.listed is None:
                sync.listed = {spec.name for spec in specs}
            sync.stale.update(n for n in names if n not in sync.listed)
            sync.scanned = sync.cursor == 0
            return sync.scanned and not sync.stale
        gone = list(itertools.islice(sync.stale, STATIC_PAGE))
        sync.changed += self.registry.drop_static(gone)
        sync.stale.difference_update(gone)  # (not before: a failed call is tried again)
        return not sync.stale

    # -- what can run --------------------------------------------------------------

    def why_not(self, spec: EntrySpec) -> str | None:
        """Why the adapter's check says ``spec`` cannot run here, or None."""
        return self.check(spec) if self.check is not None else None

    def runnable(self, spec: EntrySpec) -> bool:
        if not spec.enabled:
            return False
        reason = self.why_not(spec)
        if reason is not None:
            self._skip_once(spec.name, reason)
            return False
        self._skipped_reasons.pop(spec.name, None)
        return True

    def _skip_once(self, name: str, reason: str) -> None:
        if self._skipped_reasons.get(name) != reason:
            self._skipped_reasons[name] = reason
            log_event(
                logger, logging.ERROR, "entry_skipped",
                "dcron: skipping entry %(entry)r: %(reason)s",
                entry=name, node=self.node_id, reason=reason,
            )  # fmt: skip

    def skip_bad(self, bad: Mapping[str, str]) -> None:
        for name, error in bad.items():
            self._skip_once(name, f"malformed entry in the registry: {error}")

    def report_ownership(self, changed: bool) -> None:
        """Log the owned count when the owned set changed, and update the metrics."""
        working = self.nodes  # those the entries were placed on (this one while it starts)
        if changed:
            log_event(
                logger, logging.INFO, "ownership",
                "dcron: node %(node)s owns %(owned)d of %(entries)d entries "
                "(%(working)d working nodes)",
                node=self.node_id, owned=len(self.owned), entries=len(self.names),
                working=len(working),
            )  # fmt: skip
        self.metrics.membership(
            Counter(n.status.value for n in self.membership.nodes),
            entries=len(self.names),
            owned=len(self.owned),
        )
