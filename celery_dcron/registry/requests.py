"""Run-now requests in Redis: asked for anywhere, taken by one live node, then done."""

from __future__ import annotations

from collections.abc import Sequence

from ..entries import Tick
from ..exceptions import EntryNotFoundError
from . import scripts
from .claims import BrokerCommand, Enqueued, send_through
from .codec import RunRequest
from .transport import Store

__all__ = ["RequestStore"]


class RequestStore(Store):
    """The ``requests`` key: ``"<request_ms>:<name>"`` -> "" or the node that took it."""

    def run_now(self, name: str) -> int:
        """Ask the owner of ``name`` for an extra dispatch; returns the request time (ms)."""
        at = int(self.transport.call(scripts.RUN_NOW, [self.keys.events, name]))
        if at < 0:
            raise EntryNotFoundError(f"entry {name!r}: not found")
        return at

    def requests(self) -> list[RunRequest]:
        """Requests not yet done (a malformed field is logged and dropped)."""
        fields = self.read_fields(self.keys.requests, "run-now request")
        return [RunRequest(name=name, request_ms=at, holder=holder) for name, at, holder in fields]

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        """Take run-now requests (waiting, ours, or a dead node's): one node wins each."""
        if not requests:
            return []
        fields = [self.keys.pending_field(r.name, r.request_ms) for r in requests]
        raw = self.transport.call(scripts.TAKE_REQUESTS, [node_id, *fields])
        return [bool(int(x)) for x in raw]

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        """Forget run-now requests that were sent (or whose entry is gone)."""
        if requests:
            t, key = self.transport, self.keys.requests
            fields = [self.keys.pending_field(r.name, r.request_ms) for r in requests]
            t.run(lambda: t.client.hdel(key, *fields))

    def enqueue_requests(
        self, sends: Sequence[tuple[RunRequest, Sequence[BrokerCommand]]], *, node_id: str
    ) -> list[Enqueued]:
        """Send run-now requests through this Redis, the broker's: per request, if
        ``node_id`` holds it (:meth:`take_requests`), run its message's broker commands
        and forget the request, atomically
        (:data:`~celery_dcron.registry.scripts.ENQUEUE_REQUESTS`). Each result's tick is
        ``(name, request_ms)``."""
        ticks = [(Tick(name=r.name, tick_ms=r.request_ms), c) for r, c in sends]
        return send_through(self, scripts.ENQUEUE_REQUESTS, ticks, node_id=node_id)
