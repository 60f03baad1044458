"""Run-now requests and after-run actions: what is asked of an entry besides its ticks.

:class:`Requests` sends the run-now requests of the owned entries (each request taken by
one node only, with its own deterministic task id; when the broker is the registry's
Redis, pushed and forgotten in one atomic step, as the ticks are), drops the requests of
entries that no longer exist (the janitor does), and applies the after-run action
(delete, tombstone, disable) of the entries that ran for the last time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, NamedTuple

from .. import ticks as tickmath
from ..entries import EntrySpec, EntryState, Tick
from ..enums import AfterRun
from ..exceptions import DcronError, RegistryUnavailableError
from .context import Context, Part
from .dispatch import Captured, Dispatcher, EnqueueRefusedError
from .stalls import Stalls
from .view import View

if TYPE_CHECKING:
    from ..registry import BrokerCommand, RunRequest

__all__ = ["Requests"]

logger = logging.getLogger(__name__)


class _Send(NamedTuple):
    """A run-now request this node took, to send: its entry, tick and task id."""

    request: RunRequest
    spec: EntrySpec
    tick: Tick
    task_id: str


class Requests(Part):
    """Run-now requests and after-run actions of the owned entries."""

    def __init__(self, ctx: Context, *, view: View, dispatcher: Dispatcher, stalls: Stalls) -> None:
        super().__init__(ctx)
        self.view = view
        self.dispatcher = dispatcher
        self.stalls = stalls
        #: whether to look at the requests on the next pass
        self.due = True
        #: finished entries whose after-run action (delete, tombstone, disable) is due
        self.after_run: dict[str, EntrySpec] = {}
        #: requests sent (or dropped) whose deletion did not reach Redis: deleted first on
        #: the next run, never sent again by this node
        self.unforgotten: list[RunRequest] = []

    def finished(self, spec: EntrySpec, state: EntryState) -> None:
        """``spec`` ran for the last time: its after-run action, if any, is due."""
        if spec.after_run is not None and state.run_count > 0:
            self.after_run[spec.name] = spec

    def run(self) -> int:
        """Send the run-now requests of owned entries (each taken by one node only)."""
        self.due = False
        if self.unforgotten:  # sent (or dropped) while Redis did not answer: never again
            self.registry.done_requests(self.unforgotten)
            self.unforgotten = []
        requests = self.registry.requests()
        if not requests:
            return 0
        view = self.view
        mine = [r for r in requests if r.name in view.owned or r.holder == self.node_id]
        # a request for an entry this node does not know: dropped by one node, and only
        # once it is old (this node's view of the entries may lag behind the request)
        if self.membership.is_janitor() and view.position is not None:
            stale_ms = self.clock.now_ms() - 2 * self.settings.node_ttl_ms
            gone = [r for r in requests if r.name not in view.names and r.request_ms < stale_ms]
            if gone:
                self.registry.done_requests(gone)
        # requests this node took for entries that moved elsewhere since: still ours to send
        view.borrow({r.name for r in mine if r.name not in view.owned})
        entries: dict[str, EntrySpec] = {}
        for request in mine:
            spec = view.spec(request.name)
            if spec is not None:
                entries[request.name] = spec
        mine = [r for r in mine if r.name in entries]
        taking_at = time.monotonic()  # before: a stall while taking them counts
        taken = self.registry.take_requests(mine, node_id=self.node_id)
        done: list[RunRequest] = []
        ready: list[_Send] = []
        for request, ok in zip(mine, taken, strict=True):
            if not ok:
                continue
            spec = entries[request.name]
            reason = self.view.why_not(spec)
            if reason is not None:
                logger.error("dcron: run-now of %r dropped: %s", spec.name, reason)
                done.append(request)
                continue
            tick = Tick(name=spec.name, tick_ms=request.request_ms)
            tid = tickmath.run_now_task_id(self.settings.namespace, spec.name, request.request_ms)
            ready.append(_Send(request, spec, tick, tid))
        capture = None
        if ready and self.dispatcher.capture is not None:
            capture = self.dispatcher.capture()
        if capture is None:
            sent = self._publish(ready, done, taking_at)
        else:
            sent = self._enqueue(ready, done, capture)
        for send in sent:
            self.metrics.run_now()
            self.dispatcher.log_fired(send.spec.name, send.tick.tick_ms, send.task_id, run_now=True)
        try:
            self.registry.done_requests(done)
        except RegistryUnavailableError:
            self.unforgotten.extend(done)  # still held by this node: forgotten first next time
            self.due = True
            raise
        self.dispatcher.flush_rejected()
        return len(sent)

    def _publish(self, ready: list[_Send], done: list[RunRequest], taking_at: float) -> list[_Send]:
        """Publish each request's message; the requests sent (added to ``done``: forgotten
        after, in one round trip) or rejected (added too: never retried). After a stall
        since ``taking_at`` (as the dispatcher checks its claims), the requests left are
        first checked to be still this node's, all in one round trip: another node may
        have taken some over and sent them. If Redis does not answer that check, the
        rest wait for a later pass (still this node's, checked again then)."""
        sent = []
        todo = deque(ready)
        while todo:
            if self.stalls.stalled(taking_at):
                checking_at = time.monotonic()
                try:
                    if self.stalls.superseded_now():
                        break
                    ours = self.registry.take_requests(
                        [s.request for s in todo], node_id=self.node_id
                    )
                except RegistryUnavailableError:
                    self.due = True
                    break
                kept: deque[_Send] = deque()
                for s, ok in zip(todo, ours, strict=True):
                    if ok:
                        kept.append(s)
                    else:
                        self._not_held(s)
                todo, taking_at = kept, checking_at
                continue
            send = todo.popleft()
            if self._publish_one(send, done):
                done.append(send.request)
                sent.append(send)
        return sent

    def _enqueue(
        self, ready: list[_Send], done: list[RunRequest], capture: AbstractContextManager[Captured]
    ) -> list[_Send]:
        """Build each request's message in ``capture`` (nothing sent), then have the
        registry push them and forget the requests atomically (the broker is its Redis):
        each request is sent once, or still held by this node and retried (rejected ones
        are added to ``done``)."""
        built: list[tuple[_Send, list[BrokerCommand]]] = []
        with capture as captured:
            for send in ready:
                if self._publish_one(send, done, undo=captured.discard):
                    built.append((send, captured.take()))
        if not built:
            return []
        try:
            results = self.registry.enqueue_requests(
                [(send.request, commands) for send, commands in built], node_id=self.node_id
            )
        except Exception as exc:  # each one sent and gone, or still ours: retried once
            for send, _ in built:
                self._failed(send, exc)
            return []
        sent = []
        for (send, _), result in zip(built, results, strict=True):
            if result.sent:
                sent.append(send)
            elif result.error is not None:
                self._failed(send, EnqueueRefusedError(result.error))
            else:  # taken over while this node stalled (or sent by a call whose reply was lost)
                self._not_held(send)
        return sent

    def _not_held(self, send: _Send) -> None:
        logger.warning(
            "dcron: run-now of %s at=%s no longer held by this node; not sent",
            send.spec.name, send.tick.tick_ms,
        )  # fmt: skip

    def _publish_one(
        self, send: _Send, done: list[RunRequest], undo: Callable[[], object] = object
    ) -> bool:
        """Publish the request's message; False if that raised (``undo`` forgets what it
        left half-built): a publish that can never succeed is recorded and its request
        added to ``done`` (not retried), any other failure is retried."""
        try:
            self.dispatcher.publish(send.spec, send.tick, send.task_id)
        except Exception as exc:
            undo()
            if self.dispatcher.reject(send.spec, send.tick, send.task_id, exc, run_now=True):
                done.append(send.request)
            else:
                self._failed(send, exc)
            return False
        return True

    def _failed(self, send: _Send, exc: BaseException) -> None:
        self.due = True
        logger.error(
            "dcron: run-now of %s failed id=%s: %r (will retry)", send.spec.name, send.task_id, exc
        )
        self.dispatcher.publish_failed(send.spec, send.tick, exc)

    def apply_after_run(self) -> None:
        """Apply the after-run action of entries that ran for the last time."""
        for name, spec in list(self.after_run.items()):
            del self.after_run[name]
            if name not in self.view.owned:
                continue
            try:
                if spec.after_run is AfterRun.DISABLE:
                    self.registry.put_entry(
                        spec.with_changes(enabled=False), expected_version=spec.version
                    )
                else:
                    self.registry.remove_entry(
                        name,
                        tombstone=spec.after_run is AfterRun.TOMBSTONE,
                        expected_version=spec.version,
                    )
            except RegistryUnavailableError:
                self.after_run[name] = spec
                raise
            except DcronError as exc:  # changed meanwhile: the new definition decides
                logger.info("dcron: after-run action of %s not applied: %s", name, exc)
                continue
            logger.info("dcron: %s ran for the last time: %s", name, spec.after_run)
