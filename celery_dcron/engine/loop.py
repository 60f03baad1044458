"""The scheduling loop: :class:`Engine` runs one instance of the cluster.

One :meth:`Engine.step`:

1. heartbeat (when due, or woken by an event) and refresh what changed: nodes, entries,
   shared state, ownership (:mod:`.view`); notice a Redis data loss (:mod:`.recovery`);
   then one budget of paged bookkeeping: the static sync (a ``beat_schedule`` of more
   than 1,000 entries takes several, :mod:`.view`), else the rebuild after a data loss
   (:mod:`.recovery`), else the full reload or the reassignment (:mod:`.loading`), else
   the change feed;
2. retake claims that were made but never marked sent (ours after a failed publish, or
   those of a dead node) and publish them again with the same task id (:mod:`.dispatch`);
3. for every owned entry whose next tick is due (:mod:`.timeline`): plan its ticks under
   its misfire policy, claim them all in one round trip, publish the ones won, mark them
   sent in one more round trip (:mod:`.claims`);
4. send the run-now requests, apply the after-run actions (:mod:`.requests`);
5. write the next ticks computed since the last pass to the registry's due index, up to
   1,000 a pass (a full reload's are written over the passes that follow it).

With Redis unreachable nothing is claimed, so nothing is published (G5); the step backs
off and everything is reloaded once Redis answers again. This module wires the parts and
owns the loop's timing: heartbeats, backoff, how long to wait.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import engine as package
from .. import signals
from ..clock import ManualClock, RedisClock
from ..config import Settings
from ..crashes import CrashWatch
from ..entries import EntrySpec, EntryState, NodeStatus, Tick
from ..exceptions import RegistryUnavailableError
from ..interfaces import Strategy
from ..logfields import log_event
from ..membership import EventListener, Membership, PidAlive, process_alive
from ..metrics import Metrics, NullMetrics
from ..planning import Rules
from ..registry import Registry
from . import loading
from .claims import Claimer
from .context import Context, Delegated
from .dispatch import Dispatcher, ErrorHook, PublishBatch, Publisher
from .loading import Jobs
from .recovery import Recovery
from .requests import Requests
from .stalls import Stalls
from .timeline import Timeline
from .view import EntryCheck, View

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0
#: Heartbeat this long after a peer's expiry (server time), so that Redis sees it expired.
_EXPIRY_MARGIN_S = 0.02
#: Due times written per pass of the loop (one SET_DUE call, ~4 ms of Python and Redis) ...
_DUE_WRITE_PAGE = 1_000
#: ... and with more left to write (a reload's), the loop comes back after at most this
#: long: a reload's 333,000 (cron entries added in bulk, whose first ticks every owner
#: computes) go out in the background over ~35 s instead of taking a core for ~3 s (the
#: index meanwhile says 0, unknown: a node that takes them over reads them first).
_DUE_WRITE_PAUSE_S = 0.1


class Engine:
    """Runs one instance of the cluster: membership, ownership, claims, dispatch."""

    entries = Delegated[dict[str, EntrySpec]]("view")
    states = Delegated[dict[str, EntryState]]("view")
    owned = Delegated[set[str]]("view")
    check = Delegated[EntryCheck | None]("view")
    publish = Delegated[Publisher]("dispatcher")
    publish_batch = Delegated[PublishBatch | None]("dispatcher")
    on_publish_error = Delegated[ErrorHook | None]("dispatcher")
    claim_ahead_ms = Delegated[int]("claimer")
    _failed = Delegated[set[Tick]]("dispatcher", "failed")
    _next_recover = Delegated[float]("dispatcher", "next_recover")
    _reset_at_ms = Delegated[int | None]("recovery", "reset_at_ms")

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
        pid_alive: PidAlive = process_alive,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.strategy = strategy
        self.metrics = metrics or NullMetrics()
        # The node channel is held by the event listener: without one, only the TTL.
        watch = settings.crash_detection and listen
        self.membership = Membership(
            registry,
            clock,
            node_id=settings.node_id,
            ttl_ms=settings.node_ttl_ms,
            weight=settings.node_weight,
            version=version,
            pid_alive=pid_alive,
            watch_ms=settings.heartbeat_interval_ms if watch else 0,
        )
        self.crashes = CrashWatch(
            registry, self.membership, interval_ms=settings.heartbeat_interval_ms,
            enabled=settings.crash_detection,
        )  # fmt: skip
        self.wake = threading.Event()
        self.listener = EventListener(registry, self.wake) if listen else None
        ctx = Context(
            settings=settings, registry=registry, clock=clock, membership=self.membership,
            metrics=self.metrics, notify=self._notify,
        )  # fmt: skip
        rules = Rules.from_settings(settings)
        self.timeline = Timeline(
            on_finished=lambda spec, state: self.requests.finished(spec, state)
        )
        self.view = View(
            ctx, strategy=strategy, static_entries=static_entries, check=check,
            timeline=self.timeline,
        )  # fmt: skip
        self.jobs = Jobs(self.view, on_loaded=self._loaded)
        self.recovery = Recovery(ctx)
        stalls = Stalls(ctx, listener=self.listener if watch else None)
        self.dispatcher = Dispatcher(
            ctx, view=self.view, rules=rules, stalls=stalls, publish=publish,
            publish_batch=publish_batch, on_publish_error=on_publish_error,
        )  # fmt: skip
        self.requests = Requests(ctx, view=self.view, dispatcher=self.dispatcher, stalls=stalls)
        self.claimer = Claimer(
            ctx, rules=rules, view=self.view, timeline=self.timeline, recovery=self.recovery,
            dispatcher=self.dispatcher, claim_ahead_ms=claim_ahead_ms,
            chunk=package.CLAIM_CHUNK,  # read here: tests patch the package's constant
        )  # fmt: skip
        self._synced = False
        #: a static sync is under way (a large beat_schedule is written a page a pass)
        self._syncing = False
        self._connected = False
        self._failures = 0
        self._up_reported = False
        self._next_beat = 0.0
        self._next_reconcile = 0.0
        self._seen_once = False
        #: after a data loss: the ticks whose publish failed are to be claimed again
        self._reclaim = False
        #: the change feed has records this instance has not applied yet
        self._feed_behind = False
        #: the next heartbeat must be a full one (it reads the pause flag)
        self._full_beat = False
        self._peer_expiry_ms: int | None = None
        #: the cluster-wide pause flag, learnt from each heartbeat: claim nothing while set
        self.paused = False
        self.stopped = False

    @property
    def node_id(self) -> str:
        """``dcron_node_id``, or the ``<host>:<slot>`` won when joining."""
        return self.membership.node.id

    # -- the loop ----------------------------------------------------------------

    def start(self) -> None:
        if self.listener is not None and not self.listener.is_alive():
            self.listener.start()

    def step(self) -> float:
        """One pass of the scheduling loop. Returns how long to wait before the next."""
        if self.membership.superseded:  # another process holds our id: do nothing more
            return self.settings.heartbeat_interval_s
        try:
            now_mono = time.monotonic()
            if self.listener is not None and self.listener.entries_dirty.is_set():
                self.listener.entries_dirty.clear()
                self._feed_behind = True
            if now_mono >= self._next_beat or not self._connected or self._dirty(clear=False):
                self._beat()
                self._next_beat = now_mono + self._next_beat_in_s()
            # the static sync first: after a data loss, the static entries are back before
            # the rebuild; the reload waits for them
            if self._syncing and self._sync_static():
                pass  # a large beat_schedule: its next page, or the reload, next pass
            elif self.recovery.rebuilding:
                self.recovery.run()  # a data loss: the reload and the feed wait for it
            elif self.jobs.busy:
                self.jobs.run()
            elif self._feed_behind:
                self._apply_feed()
            interval = self.settings.reconcile_interval_s
            if interval and self._synced and now_mono >= self._next_reconcile:
                self._next_reconcile = now_mono + interval
                self._notify(signals.reconcile, reason="periodic")
            if self.recovery.settled(self.clock.now_ms()):
                self.jobs.reload("settled")  # the states the returning owners restored
            if self.membership.status is NodeStatus.WORKING:
                self.dispatcher.flush_unmarked()
                if not self.paused:
                    if now_mono >= self.dispatcher.next_recover:
                        self.recover()
                        self.requests.due = True
                    self.run_pass(self.clock.now_ms())
                    if self.requests.due:
                        self.run_requests()
                if self.requests.after_run:
                    self.requests.apply_after_run()
            if self.timeline.dirty and self._due_current():
                self._write_due()
            if self._failures or not self._up_reported:
                self.metrics.registry_up(True)
                self._up_reported = True
            self._failures = 0
        except RegistryUnavailableError as exc:
            return self._unavailable(exc)
        return self._wait_s()

    def _sync_static(self) -> bool:
        """Pages of the static sync for up to a job slice; once the last is written, what
        follows it (the reconcile of the adapters: Django's rows). True when this pass is
        spent: the sync goes on, or it took more than one call (a page)."""
        if not self.view.sync_static(loading.BUDGET_S):
            return True
        self._syncing = False
        self._synced = True
        if not self.recovery.rebuilding:  # else the rebuild's, once the anchors are back
            self._notify(signals.reconcile, reason="start")
        self._next_reconcile = time.monotonic() + self.settings.reconcile_interval_s
        return self.view.static_paged

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns early, and True, when an event arrives."""
        woken = self.wake.wait(seconds) if seconds > 0 else self.wake.is_set()
        self.wake.clear()
        return woken

    def stop(self) -> None:
        """Leave the cluster at once so the others take over without waiting for the TTL."""
        if self.stopped:
            return
        self.stopped = True
        if self.listener is not None:
            self.listener.stop()
        with contextlib.suppress(RegistryUnavailableError):
            self.dispatcher.flush_unmarked()
        if self._connected or self.membership.members_version >= 0:
            self.membership.leave()

    def run_pass(self, now_ms: int) -> int:
        """Claim and publish every owned tick due at ``now_ms``; see :class:`.Claimer`."""
        return self.claimer.run_pass(now_ms)

    def recover(self) -> int:
        """Publish again claims that were never marked sent: ours, or a dead node's."""
        return self.dispatcher.recover()

    def run_requests(self) -> int:
        """Send the run-now requests of owned entries (each taken by one node only)."""
        return self.requests.run()

    def next_due_ms(self) -> int | None:
        return self.timeline.next_due_ms()

    def _due_current(self) -> bool:
        """Whether the next ticks on the timeline may go to the due index: not while a job
        runs or the feed is behind (a definition changed since its owner read it could
        have a next tick earlier than the one computed, and the feed waits for the job),
        nor while a data loss settles (an entry put off is on the timeline at a time later
        than its tick). They go once the feed is applied: :meth:`Timeline.take_dirty`
        reads the timeline as it is then."""
        recovery = self.recovery
        return not (self.jobs.busy or self._feed_behind or recovery.rebuilding or recovery.settling)

    def _write_due(self) -> None:
        """Write the next ticks the timeline computed since the last pass to the due index:
        :data:`_DUE_WRITE_PAGE` a pass; the loop comes back for the rest within
        :data:`_DUE_WRITE_PAUSE_S`. A write lost (Redis went away) leaves an earlier time
        there: never a later one."""
        due = self.timeline.take_dirty(_DUE_WRITE_PAGE)
        if due:
            self.registry.set_due(due)

    def _publish_all(self, ticks: Sequence[Tick], claimed_at: float) -> list[Tick]:
        return self.dispatcher.publish_all(ticks, claimed_at)

    # -- membership and refresh --------------------------------------------------

    def _dirty(self, *, clear: bool) -> bool:
        """Whether a membership event arrived (entry events go to the feed, not here)."""
        if self.listener is None:
            return False
        members = self.listener.members_dirty.is_set()
        if clear:
            self.listener.members_dirty.clear()
        return members

    def _apply_feed(self) -> None:
        """Apply the change feed for up to one job budget; a gap starts a full reload."""
        deadline = time.monotonic() + loading.BUDGET_S
        reassign = False
        while True:
            applied = self.view.apply_feed()
            reassign = reassign or applied.reassign
            if applied.gap:
                self.jobs.reload("feed gap")
                break
            if applied.done or time.monotonic() >= deadline:
                break
        if reassign and not applied.gap:
            self.jobs.reassign()
        self._feed_behind = not applied.done and not applied.gap
        if self.view.run_seen:
            self.view.run_seen = False
            self.requests.due = True
        if self.view.pause_seen:
            self.view.pause_seen = False
            self._next_beat = 0.0  # a full heartbeat brings the pause flag
            self._full_beat = True

    def _beat(self) -> None:
        event_members = self._dirty(clear=True)
        if not self._connected:
            self.registry.load_scripts()
        turn = self.crashes.turn(self.membership.clock.now_ms())
        hb, members_changed, entries_changed = self.membership.beat(full=self._full_beat, read=turn)
        self._full_beat = False
        if self.membership.superseded:
            return
        if self.listener is not None and self.membership.node.watch_ms:
            self.listener.node_id = self.node_id  # its channel: held from now on
        if self.crashes.check(hb.server_ms):
            # the crashed nodes' expiries are now: a full heartbeat forgets them at once
            hb, members, entries = self.membership.beat(full=True)
            members_changed = members_changed or members
            entries_changed = entries_changed or entries
            if self.membership.superseded:
                return
        reset = self.recovery.observe(hb)
        self._peer_expiry_ms = hb.peer_expiry_ms
        reconnected = not self._connected
        self._connected = True
        if hb.paused != self.paused:
            logger.warning(
                "dcron: node %s %s", self.node_id,
                "paused with the cluster (pause_all): claiming nothing" if hb.paused
                else "resumed with the cluster: missed ticks follow the misfire policy",
            )  # fmt: skip
            self.paused = hb.paused
        if reset:  # settle from now on; the rebuild's pages go in step() (recovery.py)
            self.recovery.start_rebuild(self.view.states)
            self._reclaim = True
            self._synced = False
            self._syncing = False  # a sync under way starts over
        if self._reclaim:  # before the rebuild's first page puts last ticks back
            self.dispatcher.reclaim_failed()
            self._reclaim = False
        if not self._synced and not self._syncing:
            # after a loss, the static entries' anchors first: the sync would anchor anew
            self.recovery.restore_static_anchors(self.view.static_anchors)
            self.view.start_static_sync()
            self._syncing = True  # written in step(), a page a pass
        full = reset or reconnected
        again = reconnected and not reset and self._synced and self._seen_once
        if again:
            self._notify(signals.reconcile, reason="reconnect")
        first = not self._seen_once
        self._seen_once = True
        if full or members_changed or event_members:
            self.view.refresh_nodes()
            self.dispatcher.next_recover = 0.0
        if full:
            self.jobs.reload("start" if first else "reset" if reset else "reconnect")
            self.requests.due = True
        elif members_changed or event_members:
            self.jobs.reassign()
        position = self.view.position
        if entries_changed or (position is not None and hb.entries_version > position.seq):
            self._feed_behind = True

    def _loaded(self) -> None:
        """A full reload is in: a starting node now says it works (it holds its share)."""
        self.dispatcher.next_recover = 0.0
        if self.membership.status is NodeStatus.STARTING and not self.stopped:
            self.membership.set_status(NodeStatus.WORKING)
            self.membership.beat()
            self.view.refresh_nodes()
            self.jobs.reassign()

    def _next_beat_in_s(self) -> float:
        """Until the next heartbeat: the interval, or sooner when another node's heartbeat
        expires first. A dead node's entries then move at its expiry, not up to one interval
        later: failover within the node TTL. Live nodes' expiries lie a TTL ahead, so this
        adds a heartbeat only when a node stops heartbeating."""
        interval = self.settings.heartbeat_interval_s
        # and when a node without a subscriber (crashed?) becomes overdue: see crashes.py
        recheck = self.crashes.recheck_ms
        expiry = (
            self._peer_expiry_ms
            if recheck is None
            else min(recheck, self._peer_expiry_ms or recheck)
        )
        if expiry is None:
            return interval
        until_s = max(expiry - self.clock.now_ms(), 0) / 1000.0
        return min(interval, until_s + _EXPIRY_MARGIN_S)

    def _notify(self, signal: Any, **kwargs: Any) -> None:
        """Send a signal; Celery's dispatch logs a receiver that raises and goes on."""
        signal.send(sender=self, **kwargs)

    # -- waiting and failures ------------------------------------------------------

    def _wait_s(self) -> float:
        if self.jobs.busy or self._feed_behind or self.recovery.rebuilding or self._syncing:
            return 0.0  # the next page, once the loop has looked at due ticks
        wait = self._next_beat - time.monotonic()
        due = self.next_due_ms()
        if due is not None and self.membership.status is NodeStatus.WORKING and not self.paused:
            # Wake a little before the tick when claiming ahead, so that the claim's
            # round trip is over by then; the publish itself still waits for the tick.
            lead_ms = self.claim_ahead_ms // 4
            wait = min(wait, (due - lead_ms - self.clock.now_ms()) / 1000.0)
        if self.dispatcher.failed:
            wait = min(wait, self.dispatcher.next_recover - time.monotonic())
        if self.timeline.dirty:  # due times left to write: soon, not at once (see step)
            wait = min(wait, _DUE_WRITE_PAUSE_S)
        return max(wait, 0.0)

    def _unavailable(self, exc: RegistryUnavailableError) -> float:
        self._failures += 1
        self._connected = False
        self.crashes.outage()
        self.metrics.registry_up(False)
        backoff: float = min(0.25 * (2 ** min(self._failures - 1, 5)), _MAX_BACKOFF_S)
        level = (
            logging.WARNING
            if self._failures in (1, 2) or self._failures % 20 == 0
            else logging.DEBUG
        )
        cause = exc.__cause__ or exc
        log_event(
            logger, level, "redis_unreachable",
            "dcron: Redis unreachable (attempt %(attempt)d), publishing nothing; retrying in "
            "%(retry_s).2fs: %(error)s",
            node=self.node_id, attempt=self._failures, retry_s=backoff, error=str(cause),
        )  # fmt: skip
        return backoff

    # -- introspection -------------------------------------------------------------

    def describe(self) -> Mapping[str, object]:
        return {
            "node": self.node_id,
            "status": self.membership.status.value,
            "owned": len(self.owned),
            "entries": len(self.view.names),
            "nodes": [n.id for n in self.membership.working_nodes()],
        }
