"""Claims: one scheduling pass over the owned entries that are due.

:meth:`Claimer.run_pass` pops the due entries off the timeline, plans each one's ticks
(:func:`celery_dcron.planning.plan`; a catch-up is summed up in one warning), claims them
in Redis in chunks of one round trip each, has the dispatcher publish and mark sent the
ticks won, and puts the entries back on the timeline at their next tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from .. import planning
from ..entries import EntrySpec, Tick
from ..exceptions import RegistryUnavailableError
from ..logfields import Summary, log_event
from ..registry import MAX_TICKS_PER_SCRIPT
from .context import Context, Part
from .dispatch import Dispatcher
from .recovery import Recovery
from .timeline import Timeline
from .view import View

__all__ = ["CLAIM_CHUNK", "Claimer"]

logger = logging.getLogger(__name__)

#: Ticks per claim round trip: one claim script never blocks Redis long (a few ms).
CLAIM_CHUNK = MAX_TICKS_PER_SCRIPT

#: (entry, its due time, the ticks planned for it)
Planned = tuple[EntrySpec, int, tuple[Tick, ...]]


class Claimer(Part):
    """Claims the due ticks of the owned entries and hands the ticks won to dispatch."""

    def __init__(
        self,
        ctx: Context,
        *,
        rules: planning.Rules,
        view: View,
        timeline: Timeline,
        recovery: Recovery,
        dispatcher: Dispatcher,
        claim_ahead_ms: int = 0,
        chunk: int = CLAIM_CHUNK,
    ) -> None:
        super().__init__(ctx)
        self.rules = rules
        self.view = view
        self.timeline = timeline
        self.recovery = recovery
        self.dispatcher = dispatcher
        #: claim ticks due up to this long ahead (each is still published at its tick)
        self.claim_ahead_ms = claim_ahead_ms
        #: ticks per claim round trip
        self.chunk = chunk

    def run_pass(self, now_ms: int) -> int:
        """Claim and publish every owned tick due at ``now_ms``. Returns ticks published.

        With ``claim_ahead_ms``, ticks due by ``now_ms + claim_ahead_ms`` are claimed in
        the same round trip and each is published at its tick, never before. Claims go
        to Redis in chunks of at most ``chunk`` ticks, each chunk published and marked
        sent before the next is claimed.
        """
        due = self._pop_due(now_ms, now_ms + self.claim_ahead_ms)
        if not due:
            return 0
        catchup = Summary(
            logger, "catch_up", node=self.node_id, totals=("missed", "fired", "dropped")
        )
        planned = [(spec, when, self._plan(spec, when, now_ms, catchup)) for spec, when in due]
        catchup.log(
            "dcron: catch-up of %(entries)d entries: %(missed)d ticks missed, %(fired)d fired "
            "by their misfire policy, %(dropped)d entries dropped theirs"
        )
        chunks = _chunks(planned, self.chunk)
        claimed: list[Planned] = []
        sent = 0
        try:
            for i, chunk in enumerate(chunks):
                # Taken before the round trip: a pause while Redis runs the claim counts.
                claiming_at = time.monotonic()
                try:
                    won = self._claim(chunk)
                except RegistryUnavailableError:
                    for later in chunks[i:]:  # try again once Redis answers
                        for spec, when, _ in later:
                            self.timeline.put(spec.name, when)
                    raise
                claimed.extend(chunk)
                published = self.dispatcher.publish_all(won, claiming_at)
                self.dispatcher.mark_sent(published)
                sent += len(published)
        finally:
            # The next ticks, once the burst is out: a cron's next tick costs ~30 µs.
            for spec, _, _ in claimed:
                if spec.name in self.view.owned:
                    self.timeline.schedule(spec, self.view.state(spec.name))
        return sent

    def _pop_due(self, now_ms: int, horizon_ms: int) -> list[tuple[EntrySpec, int]]:
        """Owned entries whose next tick is at or before ``horizon_ms``, with that tick."""
        due: list[tuple[EntrySpec, int]] = []
        put_off: list[tuple[str, int]] = []
        for name, when in self.timeline.pop_due(horizon_ms):
            spec = self.view.entries.get(name)
            if spec is None or name not in self.view.owned:
                continue
            until = self.recovery.put_off_ms(self.view.state(name), now_ms)
            if until is not None:
                put_off.append((name, until))
                continue
            due.append((spec, when))
        for name, until in put_off:  # put back after popping: until may be <= horizon_ms
            self.timeline.put(name, until)
        return due

    def _plan(
        self, spec: EntrySpec, due_ms: int, now_ms: int, catchup: Summary
    ) -> tuple[Tick, ...]:
        """The ticks to claim for ``spec``, whose next tick ``due_ms`` is due at ``now_ms``
        (or is claimed ahead: ``due_ms > now_ms``)."""
        state = self.view.state(spec.name)
        lost = self.recovery.lost_tick_ms(spec, state)
        if lost is not None:
            return (Tick(name=spec.name, tick_ms=lost, fire=False),)
        plan = planning.plan(
            spec, state, due_ms=due_ms, now_ms=now_ms, rules=self.rules,
            due_is_tick=not self.recovery.settling,
        )  # fmt: skip
        if plan.anchored:
            logger.debug("dcron: anchoring %s at %s", spec.name, plan.ticks[0].tick_ms)
        elif plan.missed or self._late(plan, now_ms):
            # Every gap is logged: ticks skipped, and ticks fired later than "on time"
            # (policy all fires each missed tick, so it leaves none unfired).
            assert plan.policy is not None and plan.up_to_ms is not None
            fired = plan.fired
            # Every tick that came due while nobody fired it: the ones fired now (late)
            # and the ones the policy skips. ("missed 2" for two ticks, one run late.)
            missed = plan.missed + fired
            catchup.add(
                "catch_up_entry",
                "%(entry)s missed %(missed)d ticks; policy %(policy)s fires %(fired)d "
                "(up to tick=%(tick)s)"
                if fired
                else "%(entry)s dropped %(missed)d missed ticks (policy %(policy)s, grace "
                "%(grace)s), up to tick=%(tick)s",
                text={"grace": "none" if plan.grace_s is None else f"{plan.grace_s}s"},
                entry=spec.name, node=self.node_id, missed=missed, fired=fired,
                dropped=not fired, policy=plan.policy.value, grace_s=plan.grace_s,
                tick_ms=plan.up_to_ms,
            )  # fmt: skip
            self.metrics.skipped(plan.skip_reason, plan.missed)
        return plan.ticks

    def _late(self, plan: planning.Plan, now_ms: int) -> bool:
        """Whether a planned catch-up fires a tick later than the on-time window."""
        fired = [t.tick_ms for t in plan.ticks if t.fire]
        return (
            plan.policy is not None and bool(fired) and now_ms - min(fired) > self.rules.on_time_ms
        )

    def _claim(self, planned: Sequence[Planned]) -> list[Tick]:
        """Claim the planned ticks in one round trip; the ticks won, to publish."""
        claims = [tick for _, _, ticks in planned for tick in ticks]
        limits = {s.name: s.max_runs for s, _, _ in planned if s.max_runs is not None}
        results = self.registry.claim(
            claims, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms, max_runs=limits
        )
        states = self.view.states
        won: list[Tick] = []
        lost = 0
        for result in results:
            tick = result.tick
            old = self.view.state(tick.name)
            last = result.last_tick_ms
            if not result.won and (last is None or last < tick.tick_ms):
                last = tick.tick_ms  # blocked by a lock or max_runs: do not retry this tick
            states[tick.name] = replace(old, last_tick_ms=last, run_count=result.run_count)
            if result.won and tick.fire:
                won.append(tick)
            elif tick.fire:
                lost += 1
                log_event(
                    logger, logging.DEBUG, "claim_lost",
                    "dcron: %(entry)s tick=%(tick)s already claimed (last tick %(last_tick_ms)s)",
                    entry=tick.name, tick_ms=tick.tick_ms, node=self.node_id, last_tick_ms=last,
                )  # fmt: skip
        self.metrics.claims_lost(lost)
        return won


def _chunks(planned: Sequence[Planned], max_ticks: int) -> list[list[Planned]]:
    """Consecutive groups of planned entries of at most ``max_ticks`` ticks each (an
    entry's ticks are never split; an entry with more ticks makes a group of its own)."""
    chunks: list[list[Planned]] = []
    current: list[Planned] = []
    size = 0
    for item in planned:
        if current and size + len(item[2]) > max_ticks:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item[2])
    if current:
        chunks.append(current)
    return chunks
