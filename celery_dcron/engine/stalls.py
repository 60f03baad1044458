"""After a stall: may what this node took have been taken over meanwhile?

A claim, or a run-now request, names the node id, not the process. A process paused
(``SIGSTOP``, a VM pause) or slowed down for more than half the node TTL, or whose node
channel was not held all along (the others may have taken it for crashed:
:mod:`celery_dcron.crashes`), may have been taken for dead, and what it took taken over
and sent by another node. Before publishing it then checks in Redis: first that no new
incarnation took its node id (:meth:`Stalls.superseded_now`), then that what it took is
still its own. The dispatcher checks its claims so, and the run-now requests theirs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .context import Context, Part

if TYPE_CHECKING:
    from ..membership import EventListener

__all__ = ["Stalls"]


class Stalls(Part):
    """Whether this node stalled since it took something, and whether it was superseded."""

    def __init__(self, ctx: Context, *, listener: EventListener | None) -> None:
        super().__init__(ctx)
        #: the listener holding this node's channel when the others may take it for dead
        #: on its crash; None: only its TTL can
        self.listener = listener
        self._safe_s = self.settings.node_ttl_s / 2

    def stalled(self, since: float) -> bool:
        """Whether what this node took at ``since`` (``time.monotonic()``) may have been
        taken over meanwhile: more than half the node TTL passed, or its channel was not
        held all along."""
        return time.monotonic() - since > self._safe_s or self._lapsed(since)

    def superseded_now(self) -> bool:
        """Heartbeat now: True (and the node marked superseded) when a new incarnation
        took this node id over (it sends what this one took as its own)."""
        if self.registry.heartbeat(self.membership.node, self.settings.node_ttl_ms).superseded:
            self.membership.mark_superseded()
            return True
        return False

    def _lapsed(self, since: float) -> bool:
        """Whether this node's channel was not held all along since ``since``."""
        if self.listener is None:
            return False
        held = self.listener.watching_since
        return held is None or held > since
