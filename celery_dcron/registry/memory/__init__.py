"""An in-memory registry: the semantics of the Redis registry's scripts, without Redis.

:class:`MemoryRegistry` satisfies :class:`celery_dcron.interfaces.Registry`; the contract
suite (``tests/integration/test_registry_contract.py``) runs against it and against the
Redis registry, and every difference it finds is a bug in this module. Its time is an
injected clock (a :class:`~celery_dcron.clock.ManualClock` in tests): heartbeats, fire
locks and request times follow it, where Redis follows its server time.

Each public method is one atomic step (one lock), as each script is in Redis. The
parts mirror the Redis registry's stores: ``nodes.py``, ``entries.py``, ``claims.py``
over the shared state and lock of ``base.py``.
Test helpers beyond the protocol: :attr:`MemoryRegistry.available` (False: every call
raises RegistryUnavailableError, as with Redis down) and :meth:`MemoryRegistry.lose_data`
(what a Redis restart without persistence does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..codec import Snapshot, decode_entries
from .base import MemorySubscription
from .claims import _Claims
from .entries import _Entries
from .nodes import _Nodes

if TYPE_CHECKING:
    from ...config import Settings
    from ...interfaces import Clock
    from ...interfaces import Registry as RegistryProtocol

__all__ = ["MemoryRegistry", "MemorySubscription"]


class MemoryRegistry(_Nodes, _Entries, _Claims):
    """The registry of one namespace, held in this process."""

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> MemoryRegistry:
        return cls(clock, namespace=settings.namespace)

    # -- views -------------------------------------------------------------------------

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        with self._op() as now:
            d = self._data
            wanted = None if names is None else set(names)
            texts = {n: t for n, t in d.entries.items() if wanted is None or n in wanted}
            entries, bad = decode_entries(texts)
            return Snapshot(
                nodes=self._live_nodes(now),
                server_ms=now,
                names=sorted(d.entries),
                entries=entries,
                bad=bad,
                states=self._states(wanted),
                paused=d.paused,
                tombstones=dict(d.tombstones),
                static=set(d.static),
                reset_ms=d.reset_ms,
                errors=self._errors(wanted),
            )


if TYPE_CHECKING:

    def _conforms(registry: MemoryRegistry) -> RegistryProtocol:
        return registry
