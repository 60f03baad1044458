"""``weighted``: weighted rendezvous hashing.

Each (entry, node) pair gets ``h`` in (0, 1) from the stable hashes of the two
names (the same pair hash as ``rendezvous``) and the score
``-weight / ln(h)``; the entry belongs to the highest score. A node's expected
share is exactly ``weight / sum(weights)``, and as with ``rendezvous`` a pair's
score ignores the other nodes, so:

* a node that joins takes entries only from the others, and only those move;
* a node that leaves gives away only its own entries;
* with all weights equal it assigns exactly like ``rendezvous``.

Weights come from :attr:`NodeRef.weight` (``dcron_node_weight``). A weight that is
not a finite number > 0 counts as 1.0 and weights are clamped to [0.001, 1000],
so one bad node record cannot stop the cluster. Cost: like ``rendezvous`` plus one
logarithm per distinct weight per entry (nodes of equal weight are compared on
``h`` first), so many distinct weights make ``assign`` slower.

Bounds asserted by ``tests/unit/test_strategies.py`` (10,000 entries, 3..10 nodes;
measured over 2,000 random node sets):

* weight 2 among weight-1 nodes: its share / the mean weight-1 share in [1.7, 2.3]
  (measured 1.81..2.20);
* join of node N+1 (weights 1..3): moved fraction <= 1.3 x its expected share
  ``w_new / sum(w)`` + 0.01, and every moved entry moves to the new node;
* leave: exactly the leaver's entries move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..interfaces import NodeRef
from ._common import Lanes, best_lanes, entry_hashes32, lane_words, lanes_for, weighted_nodes

__all__ = ["WeightedStrategy"]

_M32 = 0xFFFFFFFF
_INV_2_32 = 1.0 / 4294967296.0


@dataclass(frozen=True, slots=True)
class _Plan:
    """A node set laid out for scoring: lanes grouped by equal weight."""

    ids: tuple[str, ...]
    lanes: Lanes
    #: ``(first lane, end lane, weight)`` of each run of equal weights.
    groups: tuple[tuple[int, int, float], ...]

    def best_ranks(self, hashes: Sequence[int]) -> list[int]:
        """Rank (index in ``ids``) of the winning node for each 32-bit entry hash."""
        if len(self.groups) == 1:  # all weights equal: plain rendezvous
            return [word & _M32 for word in best_lanes(hashes, self.lanes)]
        return [_best_per_group(h, self.lanes, self.groups) for h in hashes]


@lru_cache(maxsize=32)
def _plan(key: tuple[tuple[str, float], ...]) -> _Plan:
    ids = tuple(node_id for node_id, _ in key)
    order = tuple(sorted(range(len(key)), key=lambda rank: (key[rank][1], rank)))
    groups: list[tuple[int, int, float]] = []
    for lane, rank in enumerate(order):
        weight = key[rank][1]
        if groups and groups[-1][2] == weight:
            groups[-1] = (groups[-1][0], lane + 1, weight)
        else:
            groups.append((lane, lane + 1, weight))
    return _Plan(ids, lanes_for(ids, order), tuple(groups))


def _best_per_group(h32: int, lanes: Lanes, groups: tuple[tuple[int, int, float], ...]) -> int:
    """Winner's rank for one entry: the best ``h`` of each weight group, then one log each.

    Candidates compare on ``(score, word)``: ``word`` (``h << 32 | rank``) orders a
    group the same way as ``score`` does, and breaks exact ties by id.
    """
    words = lane_words(h32, lanes)
    best_score = -1.0
    best_word = 0
    log = math.log
    for start, end, weight in groups:
        word = max(words[start:end])
        score = -weight / log(((word >> 32) + 0.5) * _INV_2_32)
        if score > best_score or (score == best_score and word > best_word):
            best_score, best_word = score, word
    return best_word & _M32


class WeightedStrategy:
    """Weighted rendezvous: node shares proportional to :attr:`NodeRef.weight`."""

    name = "weighted"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        key = weighted_nodes(nodes)
        if not key:
            return None
        plan = _plan(key)
        (rank,) = plan.best_ranks(entry_hashes32((entry,)))
        return plan.ids[rank]

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> dict[str, str]:
        key = weighted_nodes(nodes)
        if not key:
            return {}
        plan = _plan(key)
        ids = plan.ids
        ranks = plan.best_ranks(entry_hashes32(entries))
        return {entry: ids[rank] for entry, rank in zip(entries, ranks, strict=True)}
