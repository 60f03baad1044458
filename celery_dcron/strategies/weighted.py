"""``weighted``: weighted rendezvous hashing.

Each (entry, node) pair gets ``h`` in (0, 1) from the stable hashes of the two
names (the same pair hash as ``rendezvous``) and the score
``-weight / ln(h)``; the entry belongs to the highest score. A node's expected
share is exactly ``weight / sum(weights)``, and as with ``rendezvous`` a pair's
score ignores the other nodes, so, exactly (any nodes, entries, weights; tested):

* a node that joins takes entries only from the others, and no other entry moves;
* a node that leaves gives away only its own entries;
* raising a node's weight moves entries only to that node;
* with all weights equal it assigns exactly like ``rendezvous``.

Weights come from :attr:`NodeRef.weight` (``dcron_node_weight``). A weight that is
not a finite number > 0 counts as 1.0 and weights are clamped to [0.001, 1000],
so one bad node record cannot stop the cluster.

Cost: with equal weights, exactly ``rendezvous``; with a few distinct weights, one
logarithm per weight per entry (nodes of equal weight compare on ``h`` first);
with many (more than max(4, N/3)), every lane is scored through ``map()`` over C
functions. 100,000 entries over 30 nodes: about 0.3 s (one weight), 0.45 s
(three), 0.8 s (thirty distinct weights).

Statistical bounds asserted by ``tests/unit/test_strategies.py``
(10,000 entries, 3..10 nodes; "measured" is the worst of 1,000 random node sets
for weight 1, of 500 for weights 1..3):

* weight 1: max load <= 1.2 x mean, join moves <= 1.2 / (N+1) (measured 1.10 and
  1.09, as ``rendezvous``);
* weight 2 among weight-1 nodes: its load / mean weight-1 load in [1.7, 2.3]
  (measured 1.84 .. 2.13);
* weights 1..3: load <= 1.25 x weight share, join moves <= 1.25 x the new node's
  weight share ``w_new / sum(w)`` (measured 1.12 and 1.10).

Floating point: every path computes ``weight / (33 ln 2 - ln(2s + 1))`` (that is
``-weight / ln(h)`` with ``h = (s + 1/2) / 2**32`` for the 32-bit pair score ``s``)
and compares IEEE doubles; ties go to the higher ``s``, then the larger id. Two
platforms whose ``log`` differ in the last bit could disagree on an entry whose
two best scores are within 1e-16 of each other (odds ~1e-13 per entry); the claim
in Redis still prevents a double fire.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import sub, truediv

from ..enums import StrategyName
from ..interfaces import NodeRef
from ._common import (
    MIX_C1,
    MIX_C2,
    Lanes,
    best_lanes,
    entry_hashes32,
    lane_words,
    lanes_for,
    weighted_nodes,
)

__all__ = ["WeightedStrategy"]

_M32 = 0xFFFFFFFF
#: ``33 ln 2``: with ``h = (2s + 1) / 2**33``, ``-ln(h) = 33 ln 2 - ln(2s + 1)``.
_LN_2_POW_33 = 33 * math.log(2)
#: Up to max(4, N / 3) distinct weights, one max() and one log per weight group is
#: faster; beyond that, scoring every lane with map() over C functions is (measured).
_MIN_GROUPS_PER_LANE_PATH = 4


@dataclass(frozen=True, slots=True)
class _Plan:
    """A node set laid out for scoring: lanes grouped by equal weight."""

    ids: tuple[str, ...]
    lanes: Lanes
    #: ``(first lane, end lane, weight)`` of each run of equal weights.
    groups: tuple[tuple[int, int, float], ...]
    #: The weight of each lane, in lane order.
    lane_weights: tuple[float, ...]

    def best_ranks(self, hashes: Sequence[int]) -> list[int]:
        """Rank (index in ``ids``) of the winning node for each 32-bit entry hash.

        The winner has the highest ``(score, h, rank)``: equal scores (rounding) go
        to the higher ``h``, then to the larger id, in every code path.
        """
        if len(self.groups) == 1:  # all weights equal: plain rendezvous
            return [word & _M32 for word in best_lanes(hashes, self.lanes)]
        if len(self.groups) <= max(_MIN_GROUPS_PER_LANE_PATH, len(self.ids) // 3):
            return [self._best_per_group(h) for h in hashes]
        return self._best_per_lane(hashes)

    def _best_per_group(self, h32: int) -> int:
        """One entry: the best ``h`` of each weight group (C-level max), one log per group."""
        words = lane_words(h32, self.lanes)
        best_key = (-1.0, 0)
        log = math.log
        for start, end, weight in self.groups:
            word = max(words[start:end])  # (h, rank) order = (score, h, rank) order here
            key = (weight / (_LN_2_POW_33 - log((word >> 31) | 1)), word)
            if key > best_key:
                best_key = key
        return best_key[1] & _M32

    def _best_per_lane(self, hashes: Sequence[int]) -> list[int]:
        """All entries, scoring every lane with map() over C functions (many weights)."""
        lanes = self.lanes
        rep, keys, mask, nbytes = lanes.rep, lanes.keys, lanes.mask, lanes.nbytes
        order = lanes.order
        c1, c2, byteorder = MIX_C1, MIX_C2, sys.byteorder
        weights = self.lane_weights
        ln_2_pow_33 = [_LN_2_POW_33] * len(weights)
        log = math.log
        out: list[int] = []
        append = out.append
        for h in hashes:
            # The pair scores s of best_lanes(), then 2s + 1 in each lane.
            p = ((h * rep) ^ keys) * c1
            p = ((p ^ (p >> 32)) & mask) * c2
            packed = ((((p ^ (p >> 32)) & mask) << 1) | rep).to_bytes(nbytes, byteorder)
            odd = memoryview(packed).cast("Q").tolist()
            scores = list(map(truediv, weights, map(sub, ln_2_pow_33, map(log, odd))))
            best = max(scores)
            lane = scores.index(best)
            if scores.count(best) > 1:  # a tie after rounding: higher h, then larger id
                lane = max(
                    (i for i, value in enumerate(scores) if value == best),
                    key=lambda i: (odd[i], order[i]),
                )
            append(order[lane])
        return out


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
    lane_weights = tuple(key[rank][1] for rank in order)
    return _Plan(ids, lanes_for(ids, order), tuple(groups), lane_weights)


class WeightedStrategy:
    """Weighted rendezvous: node shares proportional to :attr:`NodeRef.weight`."""

    name = StrategyName.WEIGHTED

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
