"""``rendezvous``: highest random weight (HRW) hashing.

Every (entry, node) pair gets a 32-bit score from the stable hashes of the two
names; the entry belongs to the node with the highest score (ties: the larger
id). A pair's score does not depend on the other nodes, so, exactly (any nodes
and entries; tested):

* a node that joins takes exactly the entries it now scores highest on, from
  the others, and no other entry moves;
* a node that leaves gives away only its own entries, each to its runner-up.

Node weights are ignored (see ``weighted``). Cost: one entry is scored against
all nodes at once (packed lanes, see :mod:`._common`), O(N) big-integer work.

Statistical bounds asserted by
``tests/unit/test_strategies.py`` (10,000 entries, 3..10 nodes; "measured" is the
worst of 1,000 random node sets; only sampling noise, about 3% at 1,000 entries
per node):

* balance: max load <= 1.2 x mean (measured 1.09);
* join of node N+1: moved fraction <= 1.2 / (N+1) (measured 1.09 / (N+1)).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..enums import StrategyName
from ..interfaces import NodeRef
from ._common import best_lanes, entry_hashes32, hash32, lanes_for, node_ids, rank_of

__all__ = ["RendezvousStrategy"]


class RendezvousStrategy:
    """Highest random weight: each entry goes to the node scoring highest on it."""

    name = StrategyName.RENDEZVOUS

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        ids = node_ids(nodes)
        if not ids:
            return None
        (word,) = best_lanes((hash32(entry),), lanes_for(ids))
        return ids[rank_of(word)]

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> dict[str, str]:
        ids = node_ids(nodes)
        if not ids:
            return {}
        words = best_lanes(entry_hashes32(entries), lanes_for(ids))
        mask = 0xFFFFFFFF
        return {entry: ids[word & mask] for entry, word in zip(entries, words, strict=True)}
