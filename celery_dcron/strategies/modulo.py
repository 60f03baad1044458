"""``modulo``: a stable hash of the entry name, modulo the number of nodes.

The entry with hash ``h`` (BLAKE2b, 64 bits) belongs to ``sorted_ids[h % N]``.
Simple and perfectly cheap, but a membership change re-deals almost everything:
going from N to N+1 nodes moves about N/(N+1) of the entries (an entry stays
only when ``h % N`` and ``h % (N+1)`` happen to name the same node), against
1/(N+1) for ``consistent_hash`` or ``rendezvous``. Prefer those unless the node
set never changes. Weights are ignored.

Bounds asserted by ``tests/unit/test_strategies.py`` (10,000 entries, 3..10 nodes;
"measured" is the worst of 1,000 random node sets):

* balance: max load <= 1.2 x mean (measured 1.09);
* join of node N+1: moved fraction >= 0.6 (measured 0.74 at least: N/(N+1)),
  against the minimal 1/(N+1), and not only to the new node.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..enums import StrategyName
from ..interfaces import NodeRef
from ._common import hash64, node_ids

__all__ = ["ModuloStrategy"]


class ModuloStrategy:
    """``sorted_ids[hash(entry) % N]``: moves most entries on any membership change."""

    name = StrategyName.MODULO

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        ids = node_ids(nodes)
        return ids[hash64(entry) % len(ids)] if ids else None

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> dict[str, str]:
        ids = node_ids(nodes)
        if not ids:
            return {}
        count = len(ids)
        return {entry: ids[hash64(entry) % count] for entry in entries}
