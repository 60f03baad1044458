"""Run-now requests and after-run actions: what is asked of an entry besides its ticks.

:class:`Requests` sends the run-now requests of the owned entries (each request taken by
one node only, with its own deterministic task id), drops the requests of entries that
no longer exist (the janitor does), and applies the after-run action (delete, tombstone,
disable) of the entries that ran for the last time.
"""

from __future__ import annotations

import logging

from .. import ticks as tickmath
from ..entries import EntrySpec, EntryState, Tick
from ..enums import AfterRun
from ..exceptions import DcronError, RegistryUnavailableError
from .context import Context, Part
from .dispatch import Dispatcher
from .view import View

__all__ = ["Requests"]

logger = logging.getLogger(__name__)


class Requests(Part):
    """Run-now requests and after-run actions of the owned entries."""

    def __init__(self, ctx: Context, *, view: View, dispatcher: Dispatcher) -> None:
        super().__init__(ctx)
        self.view = view
        self.dispatcher = dispatcher
        #: whether to look at the requests on the next pass
        self.due = True
        #: finished entries whose after-run action (delete, tombstone, disable) is due
        self.after_run: dict[str, EntrySpec] = {}

    def finished(self, spec: EntrySpec, state: EntryState) -> None:
        """``spec`` ran for the last time: its after-run action, if any, is due."""
        if spec.after_run is not None and state.run_count > 0:
            self.after_run[spec.name] = spec

    def run(self) -> int:
        """Send the run-now requests of owned entries (each taken by one node only)."""
        self.due = False
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
        taken = self.registry.take_requests(mine, node_id=self.node_id)
        done = []
        for request, ok in zip(mine, taken, strict=True):
            if not ok:
                continue
            spec = entries[request.name]
            tick = Tick(name=spec.name, tick_ms=request.request_ms)
            tid = tickmath.run_now_task_id(self.settings.namespace, spec.name, request.request_ms)
            reason = self.view.why_not(spec)
            if reason is not None:
                logger.error("dcron: run-now of %r dropped: %s", spec.name, reason)
                done.append(request)
                continue
            try:
                self.dispatcher.publish(spec, tick, tid)
            except Exception as exc:
                if self.dispatcher.reject(spec, tick, tid, exc, run_now=True):
                    done.append(request)  # it can never succeed: not retried
                    continue
                self.due = True
                logger.error(
                    "dcron: run-now of %s failed id=%s: %r (will retry)", spec.name, tid, exc
                )
                self.dispatcher.publish_failed(spec, tick, exc)
                continue
            done.append(request)
            self.metrics.run_now()
            self.dispatcher.log_fired(spec.name, request.request_ms, tid, run_now=True)
        self.registry.done_requests(done)
        self.dispatcher.flush_rejected()
        return len(done)

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
