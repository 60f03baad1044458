"""Recovery from a Redis data loss: everything the engine does about one, in one place.

Redis restarted without its data (or the registry was otherwise emptied): the heartbeat
shows a new epoch, or versions lower than those seen. Then :class:`Recovery`

1. puts the anchors back before the static sync re-registers the entries (anchors never
   change, so every instance's copy is exact, and the interval grids hold): each instance
   knows those of its static entries (``beat_schedule``) and of the entries it owns;
2. puts back the last ticks of the entries this instance owned (only those: its copy of
   the others' state may be stale, and replaying from a stale tick would publish a tick
   twice: G1 before G2);
3. settles for one node TTL: an entry whose last tick nobody restored is put off until
   then, for its previous owner to come back and restore it;
4. after that, an entry whose last tick is still unknown skips its ticks up to the loss
   (whether they were sent is unknown) instead of replaying them.

An instance that first meets a registry that others rebuilt (:meth:`Recovery.observe` sees
the epoch's reset time) follows the same rule from 3 on.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from .. import planning
from .. import ticks as tickmath
from ..entries import EntrySpec, EntryState, Tick
from ..logfields import log_event
from ..registry import Heartbeat
from .context import Context, Part

__all__ = ["Recovery"]

logger = logging.getLogger(__name__)


class Recovery(Part):
    """Notices a data loss in the heartbeats and restores what this instance knew."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        #: when the data was lost (ms), once this instance knows of a loss
        self.reset_at_ms: int | None = None
        #: until when entries without a restored last tick are put off
        self.settle_until_ms: int | None = None
        self._seen_epoch = ""
        self._seen_versions = (-1, -1)

    def observe(self, hb: Heartbeat) -> bool:
        """Whether the data was lost since the last heartbeat (rebuild it then)."""
        versions = (hb.members_version, hb.entries_version)
        # A new epoch means the data is gone, even if the versions climbed back meanwhile
        # (the others reconnected first); lower versions, a registry of an older release.
        reset = (bool(self._seen_epoch) and bool(hb.epoch) and hb.epoch != self._seen_epoch) or (
            versions[0] < self._seen_versions[0] or versions[1] < self._seen_versions[1]
        )
        if not reset and hb.epoch and hb.epoch != self._seen_epoch and hb.reset_ms is not None:
            self._join_rebuilt(hb.reset_ms)
        self._seen_epoch = hb.epoch or self._seen_epoch
        self._seen_versions = versions
        if reset:
            log_event(
                logger, logging.WARNING, "registry_reset",
                "dcron: the registry was reset (Redis lost its data); rebuilding",
                node=self.node_id,
            )  # fmt: skip
        return reset

    def _join_rebuilt(self, reset_ms: int) -> None:
        """This instance first meets a registry that others rebuilt after a data loss at
        ``reset_ms``. It knows no last tick, but the rule of the instances that saw the
        loss holds for it too: an entry whose last tick nobody restored skips its ticks up
        to the reset (their previous owner may have sent them), and waits one node TTL
        after the reset for that owner to come back and restore it."""
        self.reset_at_ms = reset_ms
        settle = reset_ms + self.settings.node_ttl_ms
        if settle > self.clock.now_ms():
            self.settle_until_ms = settle
        log_event(
            logger, logging.INFO, "registry_rebuilt",
            "dcron: the registry was rebuilt after a data loss at %(reset)s; entries without "
            "a restored last tick skip their ticks up to then",
            node=self.node_id, reset_ms=reset_ms,
        )  # fmt: skip

    def restore_anchors(self, anchors: Mapping[str, int]) -> None:
        """Step 1, before the static sync would anchor the entries anew: the anchors of
        this instance's static entries and of the entries it owns."""
        self.registry.restore_anchors(anchors, reset_ms=self.clock.now_ms())

    def restore_last_ticks(self, states: Mapping[str, EntryState], owned: Collection[str]) -> None:
        """Step 2, after the static sync; then the settling starts (step 3)."""
        seeds = [
            Tick(name=name, tick_ms=state.last_tick_ms, fire=False)
            for name, state in states.items()
            if state.last_tick_ms is not None and name in owned
        ]
        if seeds:
            self.registry.claim(seeds, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms)
            logger.info("dcron: restored the last tick of %d entries", len(seeds))
        self.reset_at_ms = self.clock.now_ms()
        self.settle_until_ms = self.reset_at_ms + self.settings.node_ttl_ms

    @property
    def settling(self) -> bool:
        return self.settle_until_ms is not None

    def settled(self, now_ms: int) -> bool:
        """Whether the settling ended at ``now_ms`` (reload the states the returning
        owners restored, then)."""
        if self.settle_until_ms is None or now_ms < self.settle_until_ms:
            return False
        self.settle_until_ms = None
        return True

    def put_off_ms(self, state: EntryState, now_ms: int) -> int | None:
        """Until when an entry due at ``now_ms`` is put off (step 3), or None."""
        settle = self.settle_until_ms
        if settle is not None and now_ms < settle and state.last_tick_ms is None:
            return settle
        return None

    def lost_tick_ms(self, spec: EntrySpec, state: EntryState) -> int | None:
        """Step 4: the latest tick before the loss, for an entry whose last tick nobody
        restored (claim it unfired, so none of those ticks is replayed), or None."""
        reset = self.reset_at_ms
        if reset is None or state.last_tick_ms is not None:
            return None
        base = planning.base_tick_ms(spec, state)
        if base is None or base >= reset:
            return None
        lost = tickmath.latest_tick(spec.schedule, base, reset)
        if lost is not None:
            log_event(
                logger, logging.WARNING, "state_lost",
                "dcron: %(entry)s lost its state with the Redis data; ticks up to %(tick)s "
                "are not replayed",
                entry=spec.name, tick_ms=lost, node=self.node_id,
            )  # fmt: skip
        return lost
