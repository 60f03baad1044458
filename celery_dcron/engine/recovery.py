"""Recovery from a Redis data loss: everything the engine does about one, in one place.

Redis restarted without its data (or the registry was otherwise emptied): the heartbeat
shows a new epoch, or versions lower than those seen. Then :class:`Recovery` rebuilds what
this instance knew (:class:`Rebuild`):

1. it puts the anchors back before anything writes the entries again (anchors never
   change, so every instance's copy is exact, and the interval grids hold): those of its
   static entries (``beat_schedule``) at once, in the heartbeat that saw the loss and
   before the static sync re-registers them (that heartbeat also records the reset time
   in the registry); then those of the entries it owns, :data:`ANCHOR_PAGE` per round
   trip. Once they are all back it sends the ``reconcile`` signal (reason ``reset``), so
   that the external sources of entries write theirs again onto the old anchors;
2. it puts back the last ticks of the entries this instance owned (only those: its copy
   of the others' state may be stale, and replaying from a stale tick would publish a
   tick twice: G1 before G2), :data:`TICK_PAGE` per claim call (``fire=False``: nothing
   is published, and a last tick never goes down: a restore that comes after a newer
   claim is refused);
3. it settles: an entry whose last tick this instance does not know is put off, from the
   heartbeat that saw the loss until one node TTL after the rebuild's last page, for its
   previous owner to come back and restore it;
4. after that, an entry whose last tick is still unknown skips its ticks up to the loss
   (whether they were sent is unknown) instead of replaying them.

Steps 1 (after the static entries) and 2 are paged (G8): :meth:`Recovery.run` does pages
for at most :data:`~.loading.BUDGET_S` per pass of the scheduling loop, and heartbeats and
due ticks go out between passes. Meanwhile the loop runs no other job (:mod:`.loop`): the
full reload that a loss starts, and the change feed, wait for the rebuild's end. So the
instance keeps the view it had at the loss, and fires its entries from the last ticks it
knows, as it would have without the loss (the claim in Redis still decides); an entry
without a known last tick is put off (step 3) from the start; and the reload that follows
reads the restored last ticks, so the owned entries fire on time after it, not one TTL
later. The pages restore a copy of the states taken when the loss was seen (the claims go
on updating the view's meanwhile). A page that fails (Redis unreachable) is done again at
the next pass; a second loss during a rebuild starts a new one, from the view (which only
the claims, never lowering a last tick, have changed since the first).

An instance that first meets a registry that others rebuilt (:meth:`Recovery.observe` sees
the epoch's reset time) follows the same rule from 3 on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from .. import planning, signals
from .. import ticks as tickmath
from ..entries import EntrySpec, EntryState, Tick
from ..logfields import log_event
from ..registry import Heartbeat
from . import loading
from .context import Context, Part

__all__ = ["ANCHOR_PAGE", "TICK_PAGE", "Rebuild", "Recovery"]

logger = logging.getLogger(__name__)

#: Anchors put back per round trip (one pipeline of HSETNX).
ANCHOR_PAGE = 2_500
#: Last ticks put back per page (one claim call: two scripts, none of them long). With
#: these, 333,000 entries are rebuilt in ~9 s on a local Redis, in passes of at most
#: ~80 ms (one blocking step of ~9 s before).
TICK_PAGE = 1_000


class Rebuild:
    """One rebuild under way: what this instance knew when it saw the loss, and how far
    the pages got (the cursors move only once a page is in Redis)."""

    def __init__(self, states: Mapping[str, EntryState], *, reset_ms: int) -> None:
        #: when the loss was seen: recorded in the registry, and the limit of step 4
        self.reset_ms = reset_ms
        #: a copy: the claims go on updating the view's states while the pages go
        self.states = dict(states)
        self.names = list(self.states)
        #: entries whose anchor is back / whose last tick is back (the two cursors)
        self.anchored = 0
        self.restored = 0
        #: the reconcile signal was sent (once every anchor was back)
        self.announced = False
        #: last ticks put back, and pages done
        self.seeds = 0
        self.pages = 0
        self.started = time.monotonic()


class Recovery(Part):
    """Notices a data loss in the heartbeats and restores what this instance knew."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        #: when the data was lost (ms), once this instance knows of a loss
        self.reset_at_ms: int | None = None
        #: until when entries without a known last tick are put off (while a rebuild is
        #: under way, at least one node TTL after its latest page)
        self.settle_until_ms: int | None = None
        #: the rebuild under way, if any
        self.rebuild: Rebuild | None = None
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

    # -- the rebuild -----------------------------------------------------------------

    def start_rebuild(self, states: Mapping[str, EntryState]) -> None:
        """The loss was just seen: from now on, settle (step 3), and rebuild from
        ``states`` (the owned entries' run states) in pages. No I/O: the static entries'
        anchors go with the static sync (:meth:`restore_static_anchors`). A rebuild under
        way is dropped: this one covers it."""
        now = self.clock.now_ms()
        self.reset_at_ms = now
        self.rebuild = Rebuild(states, reset_ms=now)
        self._extend_settle(now)

    def restore_static_anchors(self, anchors: Mapping[str, int]) -> None:
        """Step 1 for the static entries, right before the static sync would anchor them
        anew (the loop does both again if either fails), and the reset time recorded in
        the registry; nothing when no rebuild is under way (a start)."""
        if self.rebuild is not None:
            self.registry.restore_anchors(anchors, reset_ms=self.rebuild.reset_ms)

    @property
    def rebuilding(self) -> bool:
        return self.rebuild is not None

    def run(self, budget_s: float | None = None) -> bool:
        """Do pages of the rebuild under way for up to ``budget_s`` (default
        :data:`~.loading.BUDGET_S`; 0: one page); True when none is left."""
        deadline = time.monotonic() + (loading.BUDGET_S if budget_s is None else budget_s)
        while (rb := self.rebuild) is not None:
            if rb.anchored < len(rb.names):
                self._restore_anchors(rb)
            elif not rb.announced:  # every anchor is back: the entries may be written again
                rb.announced = True
                self.notify(signals.reconcile, reason="reset")
                continue
            elif rb.restored < len(rb.names):
                self._restore_last_ticks(rb)
            if rb.announced and rb.restored >= len(rb.names):
                self._finish(rb)
                return True
            self._extend_settle(self.clock.now_ms())
            if time.monotonic() >= deadline:
                return False
        return True

    def _restore_anchors(self, rb: Rebuild) -> None:
        """One page of step 1: the anchors of owned entries."""
        names = rb.names[rb.anchored : rb.anchored + ANCHOR_PAGE]
        anchors = {n: a for n in names if (a := rb.states[n].anchor_ms) is not None}
        if anchors:
            self.registry.restore_anchors(anchors, reset_ms=rb.reset_ms)
        rb.anchored += len(names)
        rb.pages += 1

    def _restore_last_ticks(self, rb: Rebuild) -> None:
        """One page of step 2: the last ticks of owned entries, claimed unfired."""
        names = rb.names[rb.restored : rb.restored + TICK_PAGE]
        seeds = [
            Tick(name=n, tick_ms=last, fire=False)
            for n in names
            if (last := rb.states[n].last_tick_ms) is not None
        ]
        if seeds:
            self.registry.claim(seeds, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms)
        rb.restored += len(names)
        rb.seeds += len(seeds)
        rb.pages += 1

    def _finish(self, rb: Rebuild) -> None:
        """The last page is in: the settling goes on for one node TTL (step 3)."""
        self.rebuild = None
        self._extend_settle(self.clock.now_ms())
        logger.info("dcron: restored the last tick of %d entries", rb.seeds)
        logger.debug(
            "dcron: rebuilt after the data loss in %d pages, %.1f s",
            rb.pages, time.monotonic() - rb.started,
        )  # fmt: skip

    def _extend_settle(self, now_ms: int) -> None:
        until = now_ms + self.settings.node_ttl_ms
        self.settle_until_ms = max(self.settle_until_ms or until, until)

    # -- settling and lost ticks -------------------------------------------------------

    @property
    def settling(self) -> bool:
        return self.settle_until_ms is not None

    def settled(self, now_ms: int) -> bool:
        """Whether the settling ended at ``now_ms`` (reload the states the returning
        owners restored, then); never while a rebuild is under way."""
        settle = self.settle_until_ms
        if settle is None or now_ms < settle or self.rebuild is not None:
            return False
        self.settle_until_ms = None
        return True

    def put_off_ms(self, state: EntryState, now_ms: int) -> int | None:
        """Until when an entry due at ``now_ms`` is put off (step 3), or None. While a
        rebuild is under way the settling lasts, however long it stalls (each page moves
        its end to one node TTL later)."""
        settle = self.settle_until_ms
        if settle is None or state.last_tick_ms is not None:
            return None
        if self.rebuild is not None:
            return max(settle, now_ms + self.settings.node_ttl_ms)
        return settle if now_ms < settle else None

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
