"""The instance's view of the namespace: entries, their run states, the entries it owns.

:class:`View` writes the static entries (``beat_schedule``), loads the entries and the
nodes from the registry, sends the change signals (``entry_added|changed|removed``,
``node_joined|left``), computes the owned set with the strategy, and says which owned
entries can run here (enabled, and accepted by the adapter's check).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from .. import signals
from ..entries import EntrySpec, EntryState
from ..interfaces import Strategy
from ..logfields import log_event
from .context import Context, Part

__all__ = ["EntryCheck", "View"]

logger = logging.getLogger(__name__)

#: ``check(spec)`` returns why an entry cannot run here, or None.
EntryCheck = Callable[[EntrySpec], str | None]

#: The state of an entry that has none yet.
NO_STATE = EntryState()


class View(Part):
    """Entries, states and the owned set of one instance, as last read from the registry."""

    def __init__(
        self,
        ctx: Context,
        *,
        strategy: Strategy,
        static_entries: Sequence[EntrySpec],
        check: EntryCheck | None,
    ) -> None:
        super().__init__(ctx)
        self.strategy = strategy
        self.static_entries = list(static_entries)
        self.check = check
        #: every entry in the registry, by name
        self.entries: dict[str, EntrySpec] = {}
        self.states: dict[str, EntryState] = {}
        self.owned: frozenset[str] = frozenset()
        self._skipped_reasons: dict[str, str] = {}
        self._entries_seen = False
        self._nodes_seen = False

    def state(self, name: str) -> EntryState:
        return self.states.get(name) or NO_STATE

    def load_states(self) -> None:
        self.states = self.registry.states()

    def load_entries(self) -> None:
        entries, bad = self.registry.entries()
        for name, error in bad.items():
            self._skip_once(name, f"malformed entry in the registry: {error}")
        old = self.entries
        static = {s.name: s for s in self.static_entries}
        for name, spec in entries.items():
            # One object per definition, the one already known or this instance's static
            # one: 100,000 entries hold ~30 MB less.
            for known in (old.get(name), static.get(name)):
                if known is not None and known == spec:
                    entries[name] = known
                    break
        self.entries = entries
        if not self._entries_seen:  # the first load is the starting point, not news
            self._entries_seen = True
            return
        for name, spec in entries.items():
            if name not in old:
                self.notify(signals.entry_added, entry=spec)
            elif old[name] != spec:
                self.notify(signals.entry_changed, entry=spec, old=old[name])
        for name in old.keys() - entries.keys():
            self.notify(signals.entry_removed, entry=old[name])

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

    def sync_static(self) -> None:
        """Write this instance's static entries (``beat_schedule``) to the registry."""
        result = self.registry.sync_static(self.static_entries)
        for name, reason in result.skipped.items():
            logger.warning(
                "dcron: static entry %r not written: a %s entry of that name exists",
                name,
                "deleted (tombstoned)" if reason == "tombstoned" else reason,
            )
        if result.changed:
            logger.info("dcron: static schedule synced, %d entries changed", result.changed)

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

    def reassign(self) -> None:
        """The entries this node owns now, among the working nodes."""
        working = self.membership.working_nodes()
        if not any(n.id == self.node_id for n in working):
            owned: frozenset[str] = frozenset()
        else:
            assignment = self.strategy.assign(sorted(self.entries), working)
            owned = frozenset(n for n, owner in assignment.items() if owner == self.node_id)
        if owned != self.owned:
            log_event(
                logger, logging.INFO, "ownership",
                "dcron: node %(node)s owns %(owned)d of %(entries)d entries "
                "(%(working)d working nodes)",
                node=self.node_id, owned=len(owned), entries=len(self.entries),
                working=len(working),
            )  # fmt: skip
        self.owned = owned
        self.metrics.membership(
            Counter(n.status.value for n in self.membership.nodes),
            entries=len(self.entries),
            owned=len(owned),
        )
