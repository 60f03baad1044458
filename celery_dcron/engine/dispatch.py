"""Dispatch: publish claimed ticks, mark them sent, and publish again the unsent ones.

:class:`Dispatcher` publishes claimed ticks oldest first and never before their tick, in
broker batches; checks that a claim is still this node's after a stall; marks the ticks
sent (keeping those it could not mark, to mark them once Redis answers); tells of each
failed publish (log, metrics, the adapter's hook, the ``publish_failed`` signal); and
:meth:`Dispatcher.recover` re-publishes, with their original task ids, the claims that
were never marked sent (this node's after a failed publish, or a dead node's).

When the adapter can send through the registry (:attr:`Dispatcher.capture`: the broker is
the registry's Redis), a batch is published into a capture instead (Celery's own code
builds each message, nothing is sent) and the registry pushes the messages and forgets
their claims in one atomic step (:meth:`~celery_dcron.interfaces.Registry.enqueue`):
each tick is then sent once, or still pending, whatever fails when.

A failure that can never succeed on a retry (:mod:`.failures`: the task's arguments, the
serializer, an unknown queue) is not retried: the tick is finished like a sent one, logged
once (``publish_rejected``) and kept as the entry's last error in the registry.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from .. import signals
from .. import ticks as tickmath
from ..entries import ERROR_TEXT_MAX, EntrySpec, PublishRejection, Tick
from ..exceptions import DcronError, RegistryUnavailableError
from ..logfields import Summary, log_event
from ..membership import FULL_HEARTBEAT_EVERY_MS
from ..planning import Rules
from .context import Context, Part
from .failures import rejection
from .stalls import Stalls
from .view import View

if TYPE_CHECKING:
    from ..registry import BrokerCommand

__all__ = [
    "PUBLISH_BATCH",
    "RECOVER_EVERY_S",
    "Capture",
    "Captured",
    "Dispatcher",
    "EnqueueRefusedError",
    "ErrorHook",
    "PublishBatch",
    "Publisher",
]

logger = logging.getLogger(__name__)

#: ``publish(spec, tick, task_id)`` sends one message; raises on failure.
Publisher = Callable[[EntrySpec, Tick, str], None]
#: ``hook(spec, tick, exc)`` is told of every failed publish.
ErrorHook = Callable[[EntrySpec, Tick, BaseException], None]
#: ``batch()`` opens a context in which publishes may be buffered; leaving it sends them
#: (one broker round trip) or raises, and then none of them counts as sent.
PublishBatch = Callable[[], AbstractContextManager[object]]


class Captured(Protocol):
    """What the publishes made inside a capture would have sent."""

    def take(self) -> list[BrokerCommand]:
        """The broker commands of the messages published since the last call."""
        ...

    def discard(self) -> None:
        """Forget what a publish that failed half-way added."""
        ...


#: ``capture()`` opens a context in which ``publish`` sends nothing and its messages'
#: broker commands are kept (:class:`Captured`), for the registry to run atomically
#: with forgetting the claim; None: publish as usual (the broker is not the registry's
#: Redis). May raise RegistryUnavailableError while it cannot tell (nothing sent yet).
Capture = Callable[[], AbstractContextManager[Captured] | None]

#: Messages per publish batch (one broker round trip when the transport batches).
PUBLISH_BATCH = 100
#: :meth:`Dispatcher.recover` (and with it the run-now requests) at least this often (s),
#: the full heartbeat's cadence: both are polled as a fallback for events.
RECOVER_EVERY_S = FULL_HEARTBEAT_EVERY_MS / 1000


class EnqueueRefusedError(DcronError):
    """Redis refused a broker command of a tick's message (``WRONGTYPE``, ``OOM``): the
    tick is still pending and is retried with the same task id."""

    def __init__(self, error: str) -> None:
        super().__init__(f"dcron: Redis refused the message: {error}")
        self.error = error


class Dispatcher(Part):
    """Publishes claimed ticks and keeps track of those not (yet) marked sent."""

    def __init__(
        self,
        ctx: Context,
        *,
        view: View,
        rules: Rules,
        stalls: Stalls,
        publish: Publisher,
        publish_batch: PublishBatch | None,
        on_publish_error: ErrorHook | None,
    ) -> None:
        super().__init__(ctx)
        self.view = view
        self.rules = rules
        self.stalls = stalls
        self.publish = publish
        self.publish_batch = publish_batch
        self.on_publish_error = on_publish_error
        #: set by the adapter when the broker may be the registry's Redis
        self.capture: Capture | None = None
        #: sent and marked sent in one step (:meth:`_enqueue_batch`): not marked again
        self.enqueued: set[Tick] = set()
        #: published, not yet marked sent (Redis did not answer): never publish them again
        self.unmarked: set[Tick] = set()
        #: failed publishes, retried soon by :meth:`recover`
        self.failed: set[Tick] = set()
        #: publishes that can never succeed, by (entry, tick, run-now), not yet recorded
        #: in the registry (:meth:`flush_rejected`): never publish them again
        self.rejected: dict[tuple[str, int, bool], PublishRejection] = {}
        #: when :meth:`recover` runs next (``time.monotonic()``)
        self.next_recover = 0.0

    def publish_all(self, ticks: Sequence[Tick], claimed_at: float) -> list[Tick]:
        """Publish claimed ticks oldest first, none before its tick; returns those sent.

        Ticks already due go out together, up to :data:`PUBLISH_BATCH` per broker batch.
        """
        sent: list[Tick] = []
        todo = sorted(ticks, key=lambda t: t.tick_ms)
        keepalive_at = time.monotonic() + self.settings.heartbeat_interval_s
        while todo and not self.membership.superseded:
            # Never before its tick on the server's clock: our cluster time may run ahead
            # of it by up to the clock's error bound, so a tick goes out at T + error.
            margin = self.clock.error_ms
            if todo[0].tick_ms + margin > self.clock.now_ms():
                self.clock.sleep_until(todo[0].tick_ms + margin)
            now_ms = self.clock.now_ms() - margin
            size = 1
            while size < min(len(todo), PUBLISH_BATCH) and todo[size].tick_ms <= now_ms:
                size += 1
            batch, todo = todo[:size], todo[size:]
            if time.monotonic() >= keepalive_at:
                # A long burst must not starve the heartbeat, or the others would take
                # this node for dead mid-pass. Versions are left for the next full beat.
                with contextlib.suppress(RegistryUnavailableError):
                    if self.stalls.superseded_now():
                        break
                keepalive_at = time.monotonic() + self.settings.heartbeat_interval_s
            if self.stalls.stalled(claimed_at):
                # We were paused or slow since the claim, or our node channel was not held
                # all along (the others may have taken us for crashed): another node may
                # have taken them over. Publish only the claims that are still ours: all
                # those left are checked, as they were claimed together.
                checking_at = time.monotonic()
                try:
                    ours = set(self._still_ours([*batch, *todo]))
                except RegistryUnavailableError:
                    self.unmarked.update(sent)  # published: never publish them again
                    raise
                batch = [t for t in batch if t in ours]
                todo = [t for t in todo if t in ours]
                claimed_at = checking_at
            try:
                sent.extend(self._publish_batch(batch))
            except RegistryUnavailableError:
                self.unmarked.update(sent)  # published: never publish them again
                raise
        return sent

    def _still_ours(self, ticks: Sequence[Tick]) -> list[Tick]:
        if self.stalls.superseded_now():
            return []
        flags = self.registry.retake(
            ticks, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms
        )
        for tick, ours in zip(ticks, flags, strict=True):
            if not ours:
                self._taken_over(tick)
        return [tick for tick, ours in zip(ticks, flags, strict=True) if ours]

    def _taken_over(self, tick: Tick) -> None:
        log_event(
            logger, logging.WARNING, "taken_over",
            "dcron: %(entry)s tick=%(tick)s was taken over while this node stalled; not sent",
            entry=tick.name, tick_ms=tick.tick_ms, node=self.node_id,
        )  # fmt: skip

    def _publish_batch(self, ticks: Sequence[Tick]) -> list[Tick]:
        """Publish ``ticks`` in one broker batch (when the publisher batches); the sent ones.

        When the batch as a whole fails (its round trip to the broker), delivery of each
        of its messages is uncertain: all of them count as failed and are published
        again with the same task ids. A tick whose own publish can never succeed is
        rejected (:meth:`reject`), not failed.
        """
        capture = self.capture() if self.capture is not None else None
        if capture is not None:
            return self._sent(self._enqueue_batch(ticks, capture))
        done: list[tuple[Tick, str]] = []
        failed: set[Tick] = set()
        spec_of = self.view.spec
        try:
            with self.publish_batch() if self.publish_batch else contextlib.nullcontext():
                done.extend((tick, task_id) for _, tick, task_id in self._each(ticks, failed))
        except Exception as exc:  # the batch as a whole (or opening it) failed
            for tick in ticks:
                spec = spec_of(tick.name)
                if spec is not None and tick not in failed:
                    task_id = tickmath.task_id(self.settings.namespace, tick.name, tick.tick_ms)
                    self._tick_failed(spec, tick, task_id, exc)
            return []
        return self._sent(done)

    def _each(
        self, ticks: Sequence[Tick], failed: set[Tick], undo: Callable[[], object] = object
    ) -> Iterator[tuple[EntrySpec, Tick, str]]:
        """Publish each tick (of a known entry) with its task id; yields those published.
        A tick whose publish raised is added to ``failed`` (``undo`` forgets what it left
        half-built), and rejected when it can never succeed, else retried later."""
        spec_of = self.view.spec
        for tick in ticks:
            spec = spec_of(tick.name)
            if spec is None:
                continue
            task_id = tickmath.task_id(self.settings.namespace, tick.name, tick.tick_ms)
            try:
                self.publish(spec, tick, task_id)
            except Exception as exc:
                failed.add(tick)
                undo()
                if not self.reject(spec, tick, task_id, exc):
                    self._tick_failed(spec, tick, task_id, exc)
                continue
            yield spec, tick, task_id

    def _enqueue_batch(
        self, ticks: Sequence[Tick], capture: AbstractContextManager[Captured]
    ) -> list[tuple[Tick, str]]:
        """Build each tick's message in ``capture`` (Celery's own publish, nothing sent),
        then have the registry push them and forget their claims atomically; the ticks
        sent, with their task ids. A tick whose claim is no longer this node's is not
        sent; when the registry call fails, each tick is either sent or still pending
        (it is retaken and sent later, once)."""
        built: list[tuple[EntrySpec, Tick, str, list[BrokerCommand]]] = []
        with capture as captured:
            for spec, tick, task_id in self._each(ticks, set(), undo=captured.discard):
                built.append((spec, tick, task_id, captured.take()))
        if not built:
            return []
        try:
            # first: a tick sent now clears the error of an earlier one rejected
            self.flush_rejected()
            results = self.registry.enqueue(
                [(tick, commands) for _, tick, _, commands in built], node_id=self.node_id
            )
        except Exception as exc:  # sent or still pending, each: retaken if pending
            for spec, tick, task_id, _ in built:
                self._tick_failed(spec, tick, task_id, exc)
            return []
        done: list[tuple[Tick, str]] = []
        for (spec, tick, task_id, _), result in zip(built, results, strict=True):
            if result.sent:
                done.append((tick, task_id))
            elif result.error is not None:
                self._tick_failed(spec, tick, task_id, EnqueueRefusedError(result.error))
            else:
                self._taken_over(tick)
        self.enqueued.update(tick for tick, _ in done)
        return done

    def _sent(self, done: Sequence[tuple[Tick, str]]) -> list[Tick]:
        """Count and log the ticks sent (with their task ids); returns the ticks."""
        sent_ms = self.clock.now_ms()
        lateness = [(sent_ms - tick.tick_ms) / 1000.0 for tick, _ in done]
        self.metrics.dispatched(
            lateness, catchup=sum(1 for late in lateness if late * 1000 > self.rules.on_time_ms)
        )
        sent = [tick for tick, _ in done]
        self.failed.difference_update(sent)
        for tick, task_id in done:
            self.log_fired(tick.name, tick.tick_ms, task_id, run_now=False)
        return sent

    def log_fired(self, name: str, tick_ms: int, task_id: str, *, run_now: bool) -> None:
        """``fired <entry> tick=<T> ...``, or ``fired <entry> run-now at=<T> ...``."""
        log_event(
            logger, logging.INFO, "fired",
            "dcron: fired %(entry)s " + ("run-now at" if run_now else "tick")
            + "=%(tick)s node=%(node)s id=%(task_id)s",
            entry=name, tick_ms=tick_ms, task_id=task_id, node=self.node_id, run_now=run_now,
        )  # fmt: skip

    def _tick_failed(self, spec: EntrySpec, tick: Tick, task_id: str, exc: Exception) -> None:
        self.failed.add(tick)
        self.next_recover = time.monotonic() + self.settings.heartbeat_interval_s
        log_event(
            logger, logging.ERROR, "publish_failed",
            "dcron: publish failed %(entry)s tick=%(tick)s id=%(task_id)s: %(error)s "
            "(will retry with the same id)",
            entry=tick.name, tick_ms=tick.tick_ms, task_id=task_id, node=self.node_id,
            error=repr(exc),
        )  # fmt: skip
        self.publish_failed(spec, tick, exc)

    def publish_failed(self, spec: EntrySpec, tick: Tick, exc: BaseException) -> None:
        """Tell the metrics, the adapter's hook and the signal's receivers of a failure
        that is retried."""
        self.metrics.publish_failed()
        self._tell(spec, tick, exc, permanent=False)

    def _tell(self, spec: EntrySpec, tick: Tick, exc: BaseException, *, permanent: bool) -> None:
        if self.on_publish_error is not None:
            try:
                self.on_publish_error(spec, tick, exc)
            except Exception:
                logger.exception("dcron: the publish-error hook raised")
        self.notify(signals.publish_failed, entry=spec, tick=tick, exc=exc, permanent=permanent)

    def reject(
        self, spec: EntrySpec, tick: Tick, task_id: str, exc: Exception, *, run_now: bool = False
    ) -> bool:
        """If ``exc`` says this publish can never succeed (:func:`.failures.rejection`),
        finish the tick: log it once, count it, tell the hook and the signal's receivers,
        and keep it for the registry (:meth:`flush_rejected`) as the entry's last error.
        False (nothing done) when the failure is transient."""
        reason = rejection(exc)
        if reason is None:
            return False
        record = PublishRejection(
            name=spec.name, tick_ms=tick.tick_ms, task_id=task_id, reason=reason.value,
            error=repr(exc)[:ERROR_TEXT_MAX], at_ms=self.clock.now_ms(), node=self.node_id,
            version=spec.version, run_now=run_now,
        )  # fmt: skip
        self.rejected[(spec.name, tick.tick_ms, run_now)] = record
        if not run_now:
            self.failed.discard(tick)
        log_event(
            logger, logging.ERROR, "publish_rejected",
            "dcron: publish rejected %(entry)s " + ("run-now at" if run_now else "tick")
            + "=%(tick)s id=%(task_id)s: %(error)s (%(reason)s: it cannot succeed on a "
            "retry; not retried)",
            entry=spec.name, tick_ms=tick.tick_ms, task_id=task_id, node=self.node_id,
            reason=reason.value, error=record.error, run_now=run_now,
        )  # fmt: skip
        self.metrics.publish_rejected(reason.value)
        self._tell(spec, tick, exc, permanent=True)
        return True

    def flush_rejected(self) -> None:
        """Finish in the registry the ticks rejected so far: their claims are forgotten
        and each is kept as its entry's last error."""
        if self.rejected:
            self.registry.reject(list(self.rejected.values()))
            self.rejected.clear()

    def mark_sent(self, sent: Sequence[Tick]) -> None:
        """Mark ``sent`` sent, after recording the ticks rejected so far (so that a later
        tick sent clears the error of an earlier one)."""
        if self.enqueued:  # already marked by the script that sent them
            sent = [tick for tick in sent if tick not in self.enqueued]
            self.enqueued.clear()
        try:
            self.flush_rejected()
            if sent:
                self.registry.mark_sent(sent)
        except RegistryUnavailableError:
            self.unmarked.update(sent)
            raise

    def flush_unmarked(self) -> None:
        """Record the rejected ticks, and mark sent the ticks published, while Redis did
        not answer."""
        self.flush_rejected()
        if not self.unmarked:
            return
        ticks = list(self.unmarked)
        self.registry.mark_sent(ticks)
        self.unmarked.difference_update(ticks)

    def reclaim_failed(self) -> None:
        """After Redis lost its data: claim again the ticks whose publish failed and that
        wait to be published again. Their claims went with the data, and the last ticks
        restored next cover them: unclaimed, nothing would publish them (G2). Claimed
        again, :meth:`recover` publishes them with their ids, as before the loss."""
        if not self.failed:
            return
        ticks = sorted(self.failed, key=lambda t: (t.tick_ms, t.name))
        self.registry.claim(ticks, node_id=self.node_id, lock_ttl_ms=self.settings.lock_ttl_ms)
        self.next_recover = 0.0

    def recover(self) -> int:
        """Publish again claims that were never marked sent: ours, or a dead node's."""
        s = self.settings
        # Polled as a fallback only: a members change (a node died or left) and our own
        # failed publishes bring it forward, run-now requests come through the feed.
        interval = s.heartbeat_interval_s if self.failed else RECOVER_EVERY_S
        self.next_recover = time.monotonic() + interval
        pending = self.registry.pending()
        if not pending:
            self.failed.clear()
            return 0
        janitor = self.membership.is_janitor()
        candidates: list[Tick] = []
        orphans: list[Tick] = []
        dropped = Summary(logger, "pending_dropped", node=self.node_id)
        now_ms = self.clock.now_ms()
        view = self.view
        loaded = view.position is not None
        # Our own claims of entries that moved elsewhere are ours to publish, and so are
        # a dead node's claims of entries placed here that are not read yet (right after
        # the node died, its entries are read in pages for seconds): read those.
        placed = {
            c.name for c in pending
            if c.node != self.node_id and c.name not in view.owned and c.name in view.names
            and view.is_mine(c.name)
        }  # fmt: skip
        view.borrow({
            c.name for c in pending
            if c.node == self.node_id and c.name not in view.owned and c.name in view.names
        } | placed)  # fmt: skip
        for claim in pending:
            tick = Tick(name=claim.name, tick_ms=claim.tick_ms)
            if tick in self.unmarked or (claim.name, claim.tick_ms, False) in self.rejected:
                continue
            spec = view.spec(claim.name)
            if spec is None:
                if janitor and loaded and claim.name not in view.names:
                    orphans.append(tick)
                continue
            mine = claim.name in view.owned or claim.name in placed
            if not mine and claim.node != self.node_id:
                continue
            grace_s = self.rules.grace_s(spec)
            if grace_s is not None and now_ms - claim.tick_ms > grace_s * 1000:
                dropped.add(
                    "pending_dropped_claim",
                    "%(entry)s tick=%(tick)s was claimed by %(claimed_by)s but never sent, "
                    "and is past its grace; dropped",
                    entry=claim.name, tick_ms=claim.tick_ms, node=self.node_id,
                    claimed_by=claim.node,
                )  # fmt: skip
                orphans.append(tick)
                continue
            candidates.append(tick)
        dropped.log("dcron: dropped %(count)d unsent claims past their grace")
        if orphans:
            self.registry.drop_pending(orphans)
        if not candidates:
            return 0
        retaking_at = time.monotonic()
        won_flags = self.registry.retake(
            candidates, node_id=self.node_id, lock_ttl_ms=s.lock_ttl_ms
        )
        won = [t for t, ok in zip(candidates, won_flags, strict=True) if ok]
        again = Summary(logger, "republished", node=self.node_id)
        for tick in won:
            again.add(
                "republished_claim",
                "re-publishing unsent claim %(entry)s tick=%(tick)s with its original id",
                entry=tick.name, tick_ms=tick.tick_ms, node=self.node_id,
            )  # fmt: skip
        again.log("dcron: re-publishing %(count)d unsent claims with their original ids")
        sent = self.publish_all(won, retaking_at)
        self.mark_sent(sent)
        return len(sent)
