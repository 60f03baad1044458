"""The engine: decides what this instance fires, claims it, publishes it.

One :meth:`Engine.step` of the scheduling loop:

1. heartbeat (when due, or woken by an event) and refresh what changed: nodes,
   entries, shared state, ownership;
2. retake claims that were made but never marked sent (ours after a failed
   publish, or those of a dead node) and publish them again with the same task id;
3. for every owned entry whose next tick is due: plan the ticks under its misfire
   policy, claim them all in one round trip, publish the ones won, mark them sent
   in one more round trip.

With Redis unreachable nothing is claimed, so nothing is published (G5); the step
backs off and everything is reloaded once Redis answers again.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from . import signals
from . import ticks as tickmath
from .clock import ManualClock, RedisClock
from .config import Settings
from .entries import EntrySpec, EntryState, NodeStatus, Tick
from .exceptions import RegistryUnavailableError
from .interfaces import Strategy
from .logfields import fields
from .membership import EventListener, Membership
from .metrics import Metrics, NullMetrics
from .registry import MAX_TICKS_PER_SCRIPT, Registry
from .schedules import IntervalSchedule, Schedule

__all__ = ["Engine", "PublishBatch", "Publisher"]

logger = logging.getLogger(__name__)

#: ``publish(spec, tick, task_id)`` sends one message; raises on failure.
Publisher = Callable[[EntrySpec, Tick, str], None]
#: ``hook(spec, tick, exc)`` is told of every failed publish.
ErrorHook = Callable[[EntrySpec, Tick, BaseException], None]
#: ``check(spec)`` returns why an entry cannot run here, or None.
EntryCheck = Callable[[EntrySpec], str | None]
#: ``batch()`` opens a context in which publishes may be buffered; leaving it sends them
#: (one broker round trip) or raises, and then none of them counts as sent.
PublishBatch = Callable[[], AbstractContextManager[object]]

#: Ticks per claim round trip: one claim script never blocks Redis long (a few ms).
CLAIM_CHUNK = MAX_TICKS_PER_SCRIPT
#: Messages per publish batch (one broker round trip when the transport batches).
PUBLISH_BATCH = 100
#: Catch-up and recovery summaries show this many entries in full.
SUMMARY_DETAILS = 10

_MAX_BACKOFF_S = 5.0
#: Heartbeat this long after a peer's expiry (server time), so that Redis sees it expired.
_EXPIRY_MARGIN_S = 0.02


class Engine:
    """Runs one instance of the cluster: membership, ownership, claims, dispatch."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        clock: RedisClock | ManualClock,
        strategy: Strategy,
        publish: Publisher,
        static_entries: Sequence[EntrySpec] = (),
        check: EntryCheck | None = None,
        on_publish_error: ErrorHook | None = None,
        version: str = "",
        listen: bool = True,
        publish_batch: PublishBatch | None = None,
        claim_ahead_ms: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.strategy = strategy
        self.publish = publish
        self.static_entries = list(static_entries)
        self.check = check
        self.on_publish_error = on_publish_error
        self.publish_batch = publish_batch
        #: claim ticks due up to this long ahead (each is still published at its tick)
        self.claim_ahead_ms = claim_ahead_ms
        self.metrics = metrics or NullMetrics()
        self.membership = Membership(
            registry,
            clock,
            node_id=settings.node_id,
            ttl_ms=settings.node_ttl_ms,
            weight=settings.node_weight,
            version=version,
        )
        self.wake = threading.Event()
        self.listener = EventListener(registry, self.wake) if listen else None
        #: every entry in the registry, by name
        self.entries: dict[str, EntrySpec] = {}
        self.states: dict[str, EntryState] = {}
        self.owned: frozenset[str] = frozenset()
        self._heap: list[tuple[int, str]] = []
        self._next: dict[str, int] = {}
        self._unmarked: set[Tick] = set()
        self._failed: set[Tick] = set()
        self._skipped_reasons: dict[str, str] = {}
        self._synced = False
        self._reset_at_ms: int | None = None
        self._settle_until_ms: int | None = None
        self._entries_seen = False
        self._nodes_seen = False
        self._connected = False
        self._failures = 0
        self._up_reported = False
        self._next_beat = 0.0
        self._next_recover = 0.0
        self._next_reconcile = 0.0
        self._seen_once = False
        self._seen_versions = (-1, -1)
        self._seen_epoch = ""
        self._peer_expiry_ms: int | None = None
        self._on_time_ms = max(1000, settings.heartbeat_interval_ms)
        self._safe_publish_s = settings.node_ttl_s / 2
        #: the cluster-wide pause flag, learnt from each heartbeat: claim nothing while set
        self.paused = False
        self._requests_due = True
        #: finished entries whose after-run action (delete, tombstone, disable) is due
        self._after_run: dict[str, EntrySpec] = {}
        self.stopped = False

    @property
    def node_id(self) -> str:
        return self.settings.node_id

    # -- the loop ----------------------------------------------------------------

    def start(self) -> None:
        if self.listener is not None and not self.listener.is_alive():
            self.listener.start()

    def step(self) -> float:
        """One pass of the scheduling loop. Returns how long to wait before the next."""
        try:
            now_mono = time.monotonic()
            if now_mono >= self._next_beat or not self._connected or self._dirty(clear=False):
                self._beat()
                self._next_beat = now_mono + self._next_beat_in_s()
            interval = self.settings.reconcile_interval_s
            if interval and now_mono >= self._next_reconcile:
                self._next_reconcile = now_mono + interval
                _send(signals.reconcile, self, reason="periodic")
            settle = self._settle_until_ms
            if settle is not None and self.clock.now_ms() >= settle:
                self._settle_until_ms = None
                self.states = self.registry.states()  # what the returning owners restored
                self._reassign()
            if self.membership.status is NodeStatus.WORKING:
                if self._unmarked:
                    self._flush_unmarked()
                if not self.paused:
                    if now_mono >= self._next_recover:
                        self.recover()
                        self._requests_due = True
                    self.run_pass(self.clock.now_ms())
                    if self._requests_due:
                        self.run_requests()
                if self._after_run:
                    self._apply_after_run()
            if self._failures or not self._up_reported:
                self.metrics.registry_up(True)
                self._up_reported = True
            self._failures = 0
        except RegistryUnavailableError as exc:
            return self._unavailable(exc)
        return self._wait_s()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; returns early when an event arrives."""
        if seconds > 0:
            self.wake.wait(seconds)
        self.wake.clear()

    def stop(self) -> None:
        """Leave the cluster at once so the others take over without waiting for the TTL."""
        if self.stopped:
            return
        self.stopped = True
        if self.listener is not None:
            self.listener.stop()
        if self._unmarked:
            with contextlib.suppress(RegistryUnavailableError):
                self._flush_unmarked()
        if self._connected or self.membership.members_version >= 0:
            self.membership.leave()

    # -- membership and refresh --------------------------------------------------

    def _dirty(self, *, clear: bool) -> bool:
        if self.listener is None:
            return False
        members = self.listener.members_dirty.is_set()
        entries = self.listener.entries_dirty.is_set()
        if clear:
            self.listener.members_dirty.clear()
            self.listener.entries_dirty.clear()
        return members or entries

    def _beat(self) -> None:
        event_members = self.listener is not None and self.listener.members_dirty.is_set()
        event_entries = self.listener is not None and self.listener.entries_dirty.is_set()
        self._dirty(clear=True)
        if not self._connected:
            self.registry.load_scripts()
        hb, members_changed, entries_changed = self.membership.beat()
        versions = (hb.members_version, hb.entries_version)
        # A new epoch means the data is gone, even if the versions climbed back meanwhile
        # (the others reconnected first); lower versions, a registry of an older release.
        reset = (bool(self._seen_epoch) and bool(hb.epoch) and hb.epoch != self._seen_epoch) or (
            versions[0] < self._seen_versions[0] or versions[1] < self._seen_versions[1]
        )
        if not reset and hb.epoch and hb.epoch != self._seen_epoch and hb.reset_ms is not None:
            self._join_rebuilt(hb.reset_ms)
        self._seen_epoch = hb.epoch or self._seen_epoch
        self._peer_expiry_ms = hb.peer_expiry_ms
        reconnected = not self._connected
        self._connected = True
        self._seen_versions = versions
        if hb.paused != self.paused:
            logger.warning(
                "dcron: node %s %s", self.node_id,
                "paused with the cluster (pause_all): claiming nothing" if hb.paused
                else "resumed with the cluster: missed ticks follow the misfire policy",
            )  # fmt: skip
            self.paused = hb.paused
        if reset:
            logger.warning(
                "dcron: the registry was reset (Redis lost its data); rebuilding",
                extra=fields("registry_reset", node=self.node_id),
            )
        if not self._synced or reset:
            if reset:
                # Anchors never change, so every instance's copy is exact: put them back
                # before the static sync would anchor the entries anew (the grid holds).
                self.registry.restore_anchors(
                    {n: st.anchor_ms for n, st in self.states.items() if st.anchor_ms is not None},
                    reset_ms=self.clock.now_ms(),
                )
            self._sync_static()
            _send(signals.reconcile, self, reason="reset" if reset else "start")
            self._next_reconcile = time.monotonic() + self.settings.reconcile_interval_s
            if reset:
                self._reseed_states()
                self._reset_at_ms = self.clock.now_ms()
                self._settle_until_ms = self._reset_at_ms + self.settings.node_ttl_ms
        full = reset or reconnected
        if reconnected and not reset and self._synced and self._seen_once:
            _send(signals.reconcile, self, reason="reconnect")
        self._seen_once = True
        if full or entries_changed or event_entries:
            self._load_entries()
            self._requests_due = True
        if full or members_changed or event_members or entries_changed or event_entries:
            self._refresh_nodes()
            self.states = self.registry.states()
            self._reassign()
            self._next_recover = 0.0
        if self.membership.status is NodeStatus.STARTING and not self.stopped:
            self.membership.set_status(NodeStatus.WORKING)
            self.membership.beat()
            self._refresh_nodes()
            self._reassign()

    def _next_beat_in_s(self) -> float:
        """Until the next heartbeat: the interval, or sooner when another node's heartbeat
        expires first. A dead node's entries then move at its expiry, not up to one interval
        later: failover within the node TTL. Live nodes' expiries lie a TTL ahead, so this
        adds a heartbeat only when a node stops heartbeating."""
        interval = self.settings.heartbeat_interval_s
        expiry = self._peer_expiry_ms
        if expiry is None:
            return interval
        until_s = max(expiry - self.clock.now_ms(), 0) / 1000.0
        return min(interval, until_s + _EXPIRY_MARGIN_S)

    def _join_rebuilt(self, reset_ms: int) -> None:
        """This instance first meets a registry that others rebuilt after a data loss at
        ``reset_ms``. It knows no last tick, but the rule of the instances that saw the
        loss holds for it too: an entry whose last tick nobody restored skips its ticks up
        to the reset (their previous owner may have sent them), and waits one node TTL
        after the reset for that owner to come back and restore it."""
        self._reset_at_ms = reset_ms
        settle = reset_ms + self.settings.node_ttl_ms
        if settle > self.clock.now_ms():
            self._settle_until_ms = settle
        logger.info(
            "dcron: the registry was rebuilt after a data loss at %s; entries without a "
            "restored last tick skip their ticks up to then",
            tickmath.tick_iso(reset_ms),
            extra=fields("registry_rebuilt", node=self.node_id, reset_ms=reset_ms),
        )

    def _sync_static(self) -> None:
        result = self.registry.sync_static(self.static_entries)
        for name, reason in result.skipped.items():
            logger.warning(
                "dcron: static entry %r not written: a %s entry of that name exists",
                name,
                "deleted (tombstoned)" if reason == "tombstoned" else reason,
            )
        if result.changed:
            logger.info("dcron: static schedule synced, %d entries changed", result.changed)
        self._synced = True

    def _reseed_states(self) -> None:
        """After Redis lost its data, put back the last ticks of the entries this instance
        owned. Only those: its copy of other entries' state may be stale, and replaying
        from a stale tick would publish a tick twice (G1 before G2)."""
        seeds = [
            Tick(name=name, tick_ms=state.last_tick_ms, fire=False)
            for name, state in self.states.items()
            if state.last_tick_ms is not None and name in self.owned
        ]
        if seeds:
            self.registry.claim(seeds, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms)
            logger.info("dcron: restored the last tick of %d entries", len(seeds))

    def _load_entries(self) -> None:
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
                _send(signals.entry_added, self, entry=spec)
            elif old[name] != spec:
                _send(signals.entry_changed, self, entry=spec, old=old[name])
        for name in old.keys() - entries.keys():
            _send(signals.entry_removed, self, entry=old[name])

    def _refresh_nodes(self) -> None:
        before = {n.id: n for n in self.membership.working_nodes()}
        self.membership.refresh_nodes()
        after = {n.id: n for n in self.membership.working_nodes()}
        if not self._nodes_seen:
            self._nodes_seen = True
            return
        for node_id in after.keys() - before.keys():
            _send(signals.node_joined, self, node=after[node_id])
        for node_id in before.keys() - after.keys():
            _send(signals.node_left, self, node=before[node_id])

    def _skip_once(self, name: str, reason: str) -> None:
        if self._skipped_reasons.get(name) != reason:
            self._skipped_reasons[name] = reason
            logger.error(
                "dcron: skipping entry %r: %s", name, reason,
                extra=fields("entry_skipped", entry=name, node=self.node_id, reason=reason),
            )  # fmt: skip

    def _runnable(self, spec: EntrySpec) -> bool:
        if not spec.enabled:
            return False
        reason = self.check(spec) if self.check is not None else None
        if reason is not None:
            self._skip_once(spec.name, reason)
            return False
        self._skipped_reasons.pop(spec.name, None)
        return True

    def _reassign(self) -> None:
        working = self.membership.working_nodes()
        if not any(n.id == self.node_id for n in working):
            owned: frozenset[str] = frozenset()
        else:
            assignment = self.strategy.assign(sorted(self.entries), working)
            owned = frozenset(n for n, owner in assignment.items() if owner == self.node_id)
        if owned != self.owned:
            logger.info(
                "dcron: node %s owns %d of %d entries (%d working nodes)",
                self.node_id, len(owned), len(self.entries), len(working),
                extra=fields(
                    "ownership", node=self.node_id, owned=len(owned),
                    entries=len(self.entries), working=len(working),
                ),
            )  # fmt: skip
        self.owned = owned
        self.metrics.membership(
            Counter(n.status.value for n in self.membership.nodes),
            entries=len(self.entries),
            owned=len(owned),
        )
        self._heap = []
        self._next = {}
        for name in owned:
            spec = self.entries[name]
            if self._runnable(spec):
                self._schedule(spec)

    # -- ticks -------------------------------------------------------------------

    def _base_ms(self, spec: EntrySpec) -> int | None:
        state = self.states.get(spec.name) or EntryState()
        base = state.last_tick_ms if state.last_tick_ms is not None else state.anchor_ms
        if base is None:
            return None
        if spec.start_ms is not None and spec.start_ms - 1 > base:
            if isinstance(spec.schedule, IntervalSchedule):
                base = spec.start_ms - spec.schedule.every_ms
            else:
                base = spec.start_ms - 1
        return base

    def _finished(self, spec: EntrySpec, next_ms: int | None) -> bool:
        state = self.states.get(spec.name) or EntryState()
        if next_ms is None:
            return True
        if spec.end_ms is not None and next_ms > spec.end_ms:
            return True
        return spec.max_runs is not None and state.run_count >= spec.max_runs

    def _schedule(self, spec: EntrySpec) -> None:
        base = self._base_ms(spec)
        if base is None:
            due = 0  # no anchor yet: anchor it on the next pass
        else:
            nxt = _next_tick(spec.schedule, base)
            if self._finished(spec, nxt):
                self._next.pop(spec.name, None)
                state = self.states.get(spec.name) or EntryState()
                if spec.after_run is not None and state.run_count > 0:
                    self._after_run[spec.name] = spec
                return
            assert nxt is not None
            due = nxt
        self._next[spec.name] = due
        heapq.heappush(self._heap, (due, spec.name))

    def next_due_ms(self) -> int | None:
        while self._heap:
            due, name = self._heap[0]
            if self._next.get(name) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def run_pass(self, now_ms: int) -> int:
        """Claim and publish every owned tick due at ``now_ms``. Returns ticks published.

        With ``claim_ahead_ms``, ticks due by ``now_ms + claim_ahead_ms`` are claimed in
        the same round trip and each is published at its tick, never before. Claims go
        to Redis in chunks of at most :data:`CLAIM_CHUNK` ticks, each chunk published
        and marked sent before the next is claimed.
        """
        due = self._pop_due(now_ms, now_ms + self.claim_ahead_ms)
        if not due:
            return 0
        catchup = _Summary("catch_up", self.node_id)
        planned = [(spec, when, self._plan(spec, now_ms, catchup, when)) for spec, when in due]
        catchup.log(
            "catch-up of %d entries: %d ticks missed, %d fired by their misfire policy, "
            "%d entries dropped theirs",
            catchup.count, catchup.totals["missed"], catchup.totals["fired"],
            catchup.totals["dropped"],
        )  # fmt: skip
        chunks = _chunks(planned, CLAIM_CHUNK)
        claimed: list[tuple[EntrySpec, int, list[Tick]]] = []
        sent = 0
        try:
            for i, chunk in enumerate(chunks):
                # Taken before the round trip: a pause while Redis runs the claim counts.
                claiming_at = time.monotonic()
                try:
                    won = self._claim(chunk)
                except RegistryUnavailableError:
                    for later in chunks[i:]:
                        self._reschedule(later)  # try again once Redis answers
                    raise
                claimed.extend(chunk)
                published = self._publish_all(won, claiming_at)
                self._mark_sent(published)
                sent += len(published)
        finally:
            # The next ticks, once the burst is out: a cron's next tick costs ~30 µs.
            for spec, _, _ in claimed:
                if spec.name in self.owned:
                    self._schedule(spec)
        return sent

    def _pop_due(self, now_ms: int, horizon_ms: int) -> list[tuple[EntrySpec, int]]:
        """Owned entries whose next tick is at or before ``horizon_ms``, with that tick."""
        due: list[tuple[EntrySpec, int]] = []
        deferred: list[tuple[int, str]] = []
        while self._heap and self._heap[0][0] <= horizon_ms:
            when, name = heapq.heappop(self._heap)
            if self._next.get(name) != when or name not in self.owned:
                continue
            del self._next[name]
            spec = self.entries.get(name)
            if spec is None:
                continue
            settle = self._settle_until_ms
            state = self.states.get(name)
            if (
                settle is not None
                and now_ms < settle
                and (state is None or state.last_tick_ms is None)
            ):
                # Redis lost its data and this entry's last tick is unknown: give its
                # previous owner one node TTL to come back and restore it.
                self._next[name] = settle
                deferred.append((settle, name))
                continue
            due.append((spec, when))
        for item in deferred:  # pushed back after the loop: settle may be <= horizon_ms
            heapq.heappush(self._heap, item)
        return due

    def _reschedule(self, planned: Sequence[tuple[EntrySpec, int, list[Tick]]]) -> None:
        for spec, when, _ in planned:
            self._next[spec.name] = when
            heapq.heappush(self._heap, (when, spec.name))

    def _claim(self, planned: Sequence[tuple[EntrySpec, int, list[Tick]]]) -> list[Tick]:
        """Claim the planned ticks in one round trip; the ticks won, to publish."""
        claims = [tick for _, _, ticks in planned for tick in ticks]
        limits = {s.name: s.max_runs for s, _, _ in planned if s.max_runs is not None}
        results = self.registry.claim(
            claims, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms, max_runs=limits
        )
        won: list[Tick] = []
        lost = 0
        for result in results:
            tick = result.tick
            old = self.states.get(tick.name) or EntryState()
            last = result.last_tick_ms
            if not result.won and (last is None or last < tick.tick_ms):
                last = tick.tick_ms  # blocked by a lock or max_runs: do not retry this tick
            self.states[tick.name] = replace(old, last_tick_ms=last, run_count=result.run_count)
            if result.won and tick.fire:
                won.append(tick)
            elif tick.fire:
                lost += 1
                logger.debug(
                    "dcron: %s tick=%s already claimed (last tick %s)",
                    tick.name, tickmath.tick_iso(tick.tick_ms), last,
                    extra=fields(
                        "claim_lost", entry=tick.name, tick_ms=tick.tick_ms,
                        node=self.node_id, last_tick_ms=last,
                    ),
                )  # fmt: skip
        self.metrics.claims_lost(lost)
        return won

    def _plan(self, spec: EntrySpec, now_ms: int, catchup: _Summary, due_ms: int) -> list[Tick]:
        """The ticks to claim for ``spec``, whose next tick ``due_ms`` is due at ``now_ms``
        (or is claimed ahead: ``due_ms > now_ms``)."""
        base = self._base_ms(spec)
        if base is None:
            anchor = now_ms
            if isinstance(spec.schedule, IntervalSchedule):  # on the entry's grid
                every = spec.schedule.every_ms
                phase = tickmath.interval_phase_ms(self.settings.namespace, spec.name, every)
                anchor = tickmath.phased_anchor(now_ms, every, phase)
            logger.debug("dcron: anchoring %s at %s", spec.name, anchor)
            return [Tick(name=spec.name, tick_ms=anchor, fire=False)]
        state = self.states.get(spec.name) or EntryState()
        if (
            self._reset_at_ms is not None
            and state.last_tick_ms is None
            and base < self._reset_at_ms
        ):
            # Nobody restored this entry's last tick after the data loss: whether the
            # ticks before the reset were sent is unknown, so none of them is replayed.
            lost = tickmath.latest_tick(spec.schedule, base, self._reset_at_ms)
            if lost is not None:
                logger.warning(
                    "dcron: %s lost its state with the Redis data; ticks up to %s are not replayed",
                    spec.name, tickmath.tick_iso(lost),
                    extra=fields("state_lost", entry=spec.name, tick_ms=lost, node=self.node_id),
                )  # fmt: skip
                return [Tick(name=spec.name, tick_ms=lost, fire=False)]
        if due_ms >= now_ms and self._settle_until_ms is None:
            # Planned at its next tick, claimed on time or ahead: nothing was missed, and
            # plan_due would say "fire due_ms" (for a cron, at ~3 croniter steps' cost).
            return self._limit(spec, [due_ms])
        policy = spec.misfire_policy or self.settings.misfire_policy
        grace_s = (
            spec.misfire_grace_s
            if spec.misfire_grace_s is not None
            else self.settings.misfire_grace_s
        )
        plan = tickmath.plan_due(
            spec.schedule,
            last_ms=base,
            now_ms=now_ms,
            policy=policy,
            grace_ms=None if grace_s is None else int(grace_s * 1000),
            max_catchup=self.settings.misfire_max_catchup,
            on_time_ms=self._on_time_ms,
        )
        ticks = self._limit(spec, plan.fire)
        fire = [t.tick_ms for t in ticks]
        if plan.missed:
            if fire:
                detail = (
                    f"{spec.name} missed {plan.missed} ticks; policy {policy.value} fires "
                    f"{len(fire)} (up to tick={tickmath.tick_iso(fire[-1])})"
                )
            else:
                detail = (
                    f"{spec.name} dropped {plan.missed} missed ticks (policy {policy.value}, "
                    f"grace {'none' if grace_s is None else f'{grace_s}s'}), up to "
                    f"tick={tickmath.tick_iso(plan.skip_to or base)}"
                )
            catchup.add(detail, missed=plan.missed, fired=len(fire), dropped=int(not fire))
            dropped_by_grace = not fire and grace_s is not None and policy.value != "skip"
            self.metrics.skipped(
                "grace" if dropped_by_grace else policy.value, plan.missed - len(fire)
            )
        if not ticks and plan.skip_to is not None:
            ticks.append(Tick(name=spec.name, tick_ms=plan.skip_to, fire=False))
        return ticks

    def _limit(self, spec: EntrySpec, fire: Sequence[int]) -> list[Tick]:
        """The ticks of ``fire`` that ``end_at`` and ``max_runs`` still allow."""
        allowed = [t for t in fire if spec.end_ms is None or t <= spec.end_ms]
        if spec.max_runs is not None:
            runs = (self.states.get(spec.name) or EntryState()).run_count
            allowed = allowed[: max(spec.max_runs - runs, 0)]
        return [Tick(name=spec.name, tick_ms=t) for t in allowed]

    # -- run-now requests and after-run actions ----------------------------------

    def run_requests(self) -> int:
        """Send the run-now requests of owned entries (each taken by one node only)."""
        self._requests_due = False
        requests = self.registry.requests()
        if not requests:
            return 0
        working = sorted(n.id for n in self.membership.working_nodes())
        janitor = bool(working) and working[0] == self.node_id
        mine = [r for r in requests if r.name in self.owned or r.holder == self.node_id]
        # a request for an entry this node does not know: dropped by one node, and only
        # once it is old (this node's view of the entries may lag behind the request)
        stale_ms = self.clock.now_ms() - 2 * self.settings.node_ttl_ms
        gone = [
            r
            for r in requests
            if janitor and r.name not in self.entries and r.request_ms < stale_ms
        ]
        if gone:
            self.registry.done_requests(gone)
        mine = [r for r in mine if r.name in self.entries]
        taken = self.registry.take_requests(mine, node_id=self.node_id)
        done = []
        for request, ok in zip(mine, taken, strict=True):
            if not ok:
                continue
            spec = self.entries[request.name]
            tick = Tick(name=spec.name, tick_ms=request.request_ms)
            tid = tickmath.run_now_task_id(self.settings.namespace, spec.name, request.request_ms)
            reason = self.check(spec) if self.check is not None else None
            if reason is not None:
                logger.error("dcron: run-now of %r dropped: %s", spec.name, reason)
                done.append(request)
                continue
            try:
                self.publish(spec, tick, tid)
            except Exception as exc:
                self._requests_due = True
                logger.error(
                    "dcron: run-now of %s failed id=%s: %r (will retry)", spec.name, tid, exc
                )
                self._publish_failed(spec, tick, exc)
                continue
            done.append(request)
            self.metrics.run_now()
            self._log_fired(spec.name, request.request_ms, tid, run_now=True)
        self.registry.done_requests(done)
        return len(done)

    def _apply_after_run(self) -> None:
        """Apply the after-run action of entries that ran for the last time."""
        from .exceptions import DcronError

        for name, spec in list(self._after_run.items()):
            del self._after_run[name]
            if name not in self.owned:
                continue
            try:
                if spec.after_run == "disable":
                    self.registry.put_entry(
                        spec.with_changes(enabled=False), expected_version=spec.version
                    )
                else:
                    self.registry.remove_entry(
                        name, tombstone=spec.after_run == "tombstone", expected_version=spec.version
                    )
            except RegistryUnavailableError:
                self._after_run[name] = spec
                raise
            except DcronError as exc:  # changed meanwhile: the new definition decides
                logger.info("dcron: after-run action of %s not applied: %s", name, exc)
                continue
            logger.info("dcron: %s ran for the last time: %s", name, spec.after_run)

    # -- publishing --------------------------------------------------------------

    def _publish_all(self, ticks: Sequence[Tick], claimed_at: float) -> list[Tick]:
        """Publish claimed ticks oldest first, none before its tick; returns those sent.

        Ticks already due go out together, up to :data:`PUBLISH_BATCH` per broker batch.
        """
        sent: list[Tick] = []
        todo = sorted(ticks, key=lambda t: t.tick_ms)
        keepalive_at = time.monotonic() + self.settings.heartbeat_interval_s
        while todo:
            if todo[0].tick_ms > self.clock.now_ms():
                self.clock.sleep_until(todo[0].tick_ms)  # claimed ahead: not before its tick
            now_ms = self.clock.now_ms()
            size = 1
            while size < min(len(todo), PUBLISH_BATCH) and todo[size].tick_ms <= now_ms:
                size += 1
            batch, todo = todo[:size], todo[size:]
            if time.monotonic() >= keepalive_at:
                # A long burst must not starve the heartbeat, or the others would take
                # this node for dead mid-pass. Versions are left for the next full beat.
                with contextlib.suppress(RegistryUnavailableError):
                    self.registry.heartbeat(self.membership.node, self.settings.node_ttl_ms)
                keepalive_at = time.monotonic() + self.settings.heartbeat_interval_s
            if time.monotonic() - claimed_at > self._safe_publish_s:
                # We were paused or slow since the claim: another node may have taken
                # them over. Publish only the claims that are still ours.
                checking_at = time.monotonic()
                try:
                    batch = self._still_ours(batch)
                except RegistryUnavailableError:
                    self._unmarked.update(sent)  # published: never publish them again
                    raise
                claimed_at = checking_at
            sent.extend(self._publish_batch(batch))
        return sent

    def _still_ours(self, ticks: Sequence[Tick]) -> list[Tick]:
        flags = self.registry.retake(
            ticks, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms
        )
        for tick, ours in zip(ticks, flags, strict=True):
            if not ours:
                logger.warning(
                    "dcron: %s tick=%s was taken over while this node stalled; not sent",
                    tick.name, tickmath.tick_iso(tick.tick_ms),
                    extra=fields(
                        "taken_over", entry=tick.name, tick_ms=tick.tick_ms, node=self.node_id
                    ),
                )  # fmt: skip
        return [tick for tick, ours in zip(ticks, flags, strict=True) if ours]

    def _publish_batch(self, ticks: Sequence[Tick]) -> list[Tick]:
        """Publish ``ticks`` in one broker batch (when the publisher batches); the sent ones.

        When the batch as a whole fails (its round trip to the broker), delivery of each
        of its messages is uncertain: all of them count as failed and are published
        again with the same task ids.
        """
        done: list[tuple[Tick, EntrySpec, str]] = []
        failed: set[Tick] = set()
        try:
            with self.publish_batch() if self.publish_batch else contextlib.nullcontext():
                for tick in ticks:
                    spec = self.entries.get(tick.name)
                    if spec is None:
                        continue
                    task_id = tickmath.task_id(self.settings.namespace, tick.name, tick.tick_ms)
                    try:
                        self.publish(spec, tick, task_id)
                    except Exception as exc:
                        failed.add(tick)
                        self._tick_failed(spec, tick, task_id, exc)
                        continue
                    done.append((tick, spec, task_id))
        except Exception as exc:  # the batch as a whole (or opening it) failed
            for tick in ticks:
                spec = self.entries.get(tick.name)
                if spec is not None and tick not in failed:
                    task_id = tickmath.task_id(self.settings.namespace, tick.name, tick.tick_ms)
                    self._tick_failed(spec, tick, task_id, exc)
            return []
        sent_ms = self.clock.now_ms()
        lateness = [(sent_ms - tick.tick_ms) / 1000.0 for tick, _, _ in done]
        self.metrics.dispatched(
            lateness, catchup=sum(1 for late in lateness if late * 1000 > self._on_time_ms)
        )
        sent = [tick for tick, _, _ in done]
        self._failed.difference_update(sent)
        if logger.isEnabledFor(logging.INFO):  # tick_iso is not free, and bursts are long
            for tick, _, task_id in done:
                self._log_fired(tick.name, tick.tick_ms, task_id, run_now=False)
        return sent

    def _log_fired(self, name: str, tick_ms: int, task_id: str, *, run_now: bool) -> None:
        """``fired <entry> tick=<T> ...``, or ``fired <entry> run-now at=<T> ...``."""
        logger.info(
            "dcron: fired %s %s=%s node=%s id=%s",
            name, "run-now at" if run_now else "tick", tickmath.tick_iso(tick_ms),
            self.node_id, task_id,
            extra=fields(
                "fired", entry=name, tick_ms=tick_ms, task_id=task_id, node=self.node_id,
                run_now=run_now,
            ),
        )  # fmt: skip

    def _tick_failed(self, spec: EntrySpec, tick: Tick, task_id: str, exc: Exception) -> None:
        self._failed.add(tick)
        self._next_recover = time.monotonic() + self.settings.heartbeat_interval_s
        logger.error(
            "dcron: publish failed %s tick=%s id=%s: %r (will retry with the same id)",
            tick.name, tickmath.tick_iso(tick.tick_ms), task_id, exc,
            extra=fields(
                "publish_failed", entry=tick.name, tick_ms=tick.tick_ms, task_id=task_id,
                node=self.node_id, error=repr(exc),
            ),
        )  # fmt: skip
        self._publish_failed(spec, tick, exc)

    def _publish_failed(self, spec: EntrySpec, tick: Tick, exc: BaseException) -> None:
        self.metrics.publish_failed()
        if self.on_publish_error is not None:
            try:
                self.on_publish_error(spec, tick, exc)
            except Exception:
                logger.exception("dcron: the publish-error hook raised")
        _send(signals.publish_failed, self, entry=spec, tick=tick, exc=exc)

    def _mark_sent(self, sent: Sequence[Tick]) -> None:
        if not sent:
            return
        try:
            self.registry.mark_sent(sent)
        except RegistryUnavailableError:
            self._unmarked.update(sent)
            raise

    def _flush_unmarked(self) -> None:
        ticks = list(self._unmarked)
        self.registry.mark_sent(ticks)
        self._unmarked.difference_update(ticks)

    def recover(self) -> int:
        """Publish again claims that were never marked sent: ours, or a dead node's."""
        interval = self.settings.heartbeat_interval_s if self._failed else self.settings.node_ttl_s
        self._next_recover = time.monotonic() + interval
        pending = self.registry.pending()
        if not pending:
            self._failed.clear()
            return 0
        working = sorted(n.id for n in self.membership.working_nodes())
        janitor = bool(working) and working[0] == self.node_id
        candidates: list[Tick] = []
        orphans: list[Tick] = []
        dropped = _Summary("pending_dropped", self.node_id)
        now_ms = self.clock.now_ms()
        for claim in pending:
            tick = Tick(name=claim.name, tick_ms=claim.tick_ms)
            if tick in self._unmarked:
                continue
            spec = self.entries.get(claim.name)
            if spec is None:
                if janitor:
                    orphans.append(tick)
                continue
            if claim.name not in self.owned and claim.node != self.node_id:
                continue
            grace_s = (
                spec.misfire_grace_s
                if spec.misfire_grace_s is not None
                else self.settings.misfire_grace_s
            )
            if grace_s is not None and now_ms - claim.tick_ms > grace_s * 1000:
                dropped.add(
                    f"{claim.name} tick={tickmath.tick_iso(claim.tick_ms)} was claimed by "
                    f"{claim.node} but never sent, and is past its grace; dropped"
                )
                orphans.append(tick)
                continue
            candidates.append(tick)
        dropped.log("dropped %d unsent claims past their grace", dropped.count)
        if orphans:
            self.registry.drop_pending(orphans)
        if not candidates:
            return 0
        retaking_at = time.monotonic()
        won_flags = self.registry.retake(
            candidates, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms
        )
        won = [t for t, ok in zip(candidates, won_flags, strict=True) if ok]
        again = _Summary("republished", self.node_id)
        for tick in won:
            again.add(
                f"re-publishing unsent claim {tick.name} tick={tickmath.tick_iso(tick.tick_ms)} "
                "with its original id"
            )
        again.log("re-publishing %d unsent claims with their original ids", again.count)
        sent = self._publish_all(won, retaking_at)
        self._mark_sent(sent)
        return len(sent)

    # -- waiting and failures ------------------------------------------------------

    def _wait_s(self) -> float:
        wait = self._next_beat - time.monotonic()
        due = self.next_due_ms()
        if due is not None and self.membership.status is NodeStatus.WORKING and not self.paused:
            # Wake a little before the tick when claiming ahead, so that the claim's
            # round trip is over by then; the publish itself still waits for the tick.
            lead_ms = self.claim_ahead_ms // 4
            wait = min(wait, (due - lead_ms - self.clock.now_ms()) / 1000.0)
        if self._failed:
            wait = min(wait, self._next_recover - time.monotonic())
        return max(wait, 0.0)

    def _unavailable(self, exc: RegistryUnavailableError) -> float:
        self._failures += 1
        self._connected = False
        self.metrics.registry_up(False)
        backoff: float = min(0.25 * (2 ** min(self._failures - 1, 5)), _MAX_BACKOFF_S)
        level = (
            logging.WARNING
            if self._failures in (1, 2) or self._failures % 20 == 0
            else logging.DEBUG
        )
        cause = exc.__cause__ or exc
        logger.log(
            level,
            "dcron: Redis unreachable (attempt %d), publishing nothing; retrying in %.2fs: %s",
            self._failures, backoff, cause,
            extra=fields(
                "redis_unreachable", node=self.node_id, attempt=self._failures,
                retry_s=backoff, error=str(cause),
            ),
        )  # fmt: skip
        return backoff

    # -- introspection -------------------------------------------------------------

    def describe(self) -> Mapping[str, object]:
        return {
            "node": self.node_id,
            "status": self.membership.status.value,
            "owned": len(self.owned),
            "entries": len(self.entries),
            "nodes": [n.id for n in self.membership.working_nodes()],
        }


def _next_tick(schedule: Schedule, after_ms: int) -> int | None:
    """``ticks.next_tick``, remembered for the schedules where it is not plain arithmetic.

    A cron step costs ~30 µs, and entries that share an expression share their ticks: the
    10,000 entries of a burst, or 100,000 entries rescheduled after a membership change,
    then cost one croniter step per distinct (schedule, previous tick).
    """
    if isinstance(schedule, IntervalSchedule):
        return tickmath.next_tick(schedule, after_ms)
    return _cached_next_tick(schedule, after_ms)


_cached_next_tick = functools.lru_cache(maxsize=8192)(tickmath.next_tick)


class _Summary:
    """Similar events of one pass, logged as one warning that shows the first few in full
    (:data:`SUMMARY_DETAILS`); each event is also logged on its own at DEBUG."""

    def __init__(self, event: str, node: str) -> None:
        self.event = event
        self.node = node
        self.count = 0
        self.totals: Counter[str] = Counter()
        self.shown: list[str] = []

    def add(self, detail: str, **totals: int) -> None:
        logger.debug("dcron: %s", detail)
        self.count += 1
        self.totals.update(totals)
        if len(self.shown) < SUMMARY_DETAILS:
            self.shown.append(detail)

    def log(self, headline: str, *args: object) -> None:
        if not self.count:
            return
        more = self.count - len(self.shown)
        counts = {"entries": self.count, **self.totals} if self.totals else {"count": self.count}
        logger.warning(
            "dcron: %s: %s%s",
            headline % args,
            " | ".join(self.shown),
            f" | and {more} more (each logged at DEBUG)" if more else "",
            extra=fields(self.event, node=self.node, **counts),
        )


def _chunks(
    planned: Sequence[tuple[EntrySpec, int, list[Tick]]], max_ticks: int
) -> list[list[tuple[EntrySpec, int, list[Tick]]]]:
    """Consecutive groups of planned entries of at most ``max_ticks`` ticks each (an
    entry's ticks are never split; an entry with more ticks makes a group of its own)."""
    chunks: list[list[tuple[EntrySpec, int, list[Tick]]]] = []
    current: list[tuple[EntrySpec, int, list[Tick]]] = []
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


def _send(signal: Any, sender: Engine, **kwargs: Any) -> None:
    """Send a signal; Celery's dispatch logs a receiver that raises and goes on."""
    signal.send(sender=sender, **kwargs)
