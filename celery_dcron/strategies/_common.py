"""Helpers shared by the strategies: stable hashes, node-set keys, packed HRW scores.

Pure module: no I/O. Nothing here uses Python's ``hash()`` (randomised per
process for ``str``) or depends on the order of a ``nodes`` sequence: node sets
are reduced to a sorted, de-duplicated key first, so every instance computes
the same answer from the same set, whatever Python version or platform it runs.

Highest-random-weight scores are computed many nodes at a time: the 32-bit
score of one entry against *every* node is a handful of big-integer operations
on one packed integer (one 64-bit lane per node), and the best lane is found by
``max()`` over a ``memoryview`` of its bytes. That keeps ``assign`` of 100,000
entries over 30 nodes at a few tenths of a second in pure Python, where a
per-pair loop takes several times longer.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b

from ..interfaces import NodeRef

__all__ = [
    "DEFAULT_WEIGHT",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "MIX_C1",
    "MIX_C2",
    "Lanes",
    "best_lanes",
    "clean_weight",
    "entry_hashes32",
    "hash32",
    "hash64",
    "lane_words",
    "lanes_for",
    "node_ids",
    "rank_of",
    "weighted_nodes",
]

#: Weight of a node whose advertised weight is not a finite number > 0.
DEFAULT_WEIGHT = 1.0
#: Weights are clamped to [MIN_WEIGHT, MAX_WEIGHT] (relative shares from 1:1e6 at most).
MIN_WEIGHT = 0.001
MAX_WEIGHT = 1000.0

_M32 = 0xFFFFFFFF
#: Odd 32-bit multipliers of the two mixing rounds of a pair score (golden ratio, murmur3).
MIX_C1 = 0x9E3779B1
MIX_C2 = 0x85EBCA77
_BYTEORDER = sys.byteorder


def hash64(text: str) -> int:
    """A stable 64-bit hash of ``text`` (BLAKE2b, 8-byte digest, big-endian)."""
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def hash32(text: str) -> int:
    """A stable 32-bit hash of ``text``: the top half of :func:`hash64`."""
    return hash64(text) >> 32


def clean_weight(weight: float) -> float:
    """A usable weight: ``DEFAULT_WEIGHT`` unless finite and > 0, then clamped to the bounds.

    Weights are validated where they enter (``dcron_node_weight``); a node record
    read back from Redis with a bad weight must not stop every instance.
    """
    try:
        value = float(weight)
    except (TypeError, ValueError):
        return DEFAULT_WEIGHT
    if not (value > 0.0 and math.isfinite(value)):  # also catches NaN
        return DEFAULT_WEIGHT
    return min(max(value, MIN_WEIGHT), MAX_WEIGHT)


def node_ids(nodes: Iterable[NodeRef]) -> tuple[str, ...]:
    """Sorted, de-duplicated node ids: the key of a node set when weights do not matter."""
    return tuple(sorted({node.id for node in nodes}))


def weighted_nodes(nodes: Iterable[NodeRef]) -> tuple[tuple[str, float], ...]:
    """Sorted ``(id, weight)`` pairs; a duplicated id keeps its largest (clean) weight."""
    weights: dict[str, float] = {}
    for node in nodes:
        weight = clean_weight(node.weight)
        if weight > weights.get(node.id, 0.0):
            weights[node.id] = weight
    return tuple(sorted(weights.items()))


@dataclass(frozen=True, slots=True)
class Lanes:
    """Node hashes packed one per 64-bit lane, for scoring one entry against all nodes.

    Lane ``k`` holds node ``order[k]``. A best lane word is ``score << 32 | rank``,
    where ``rank`` is the node's index in ``ids`` (sorted ids), so ties on the
    32-bit score go to the larger id, the same way in every node set.
    """

    ids: tuple[str, ...]
    order: tuple[int, ...]
    rep: int
    keys: int
    mask: int
    ranks: int
    nbytes: int


@lru_cache(maxsize=64)
def lanes_for(ids: tuple[str, ...], order: tuple[int, ...] | None = None) -> Lanes:
    """Packed lanes for the sorted ``ids``, laid out in ``order`` (default: ``ids`` order)."""
    layout = tuple(range(len(ids))) if order is None else order
    rep = keys = mask = ranks = 0
    for lane, rank in enumerate(layout):
        shift = 64 * lane
        rep |= 1 << shift
        keys |= hash32(ids[rank]) << shift
        mask |= _M32 << shift
        ranks |= rank << shift
    return Lanes(ids, layout, rep, keys, mask, ranks, 8 * len(layout))


def lane_words(h32: int, lanes: Lanes) -> memoryview:
    """The words ``score << 32 | rank`` of one entry hash against every lane, in lane order."""
    mask = lanes.mask
    p = ((h32 * lanes.rep) ^ lanes.keys) * MIX_C1
    p = ((p ^ (p >> 32)) & mask) * MIX_C2
    z = ((p ^ (p << 32)) & (mask << 32)) | lanes.ranks
    return memoryview(z.to_bytes(lanes.nbytes, _BYTEORDER)).cast("Q")


def best_lanes(hashes: Iterable[int], lanes: Lanes) -> list[int]:
    """For each 32-bit entry hash, the best word ``score << 32 | rank`` over all lanes.

    The score of (entry, node) is two multiply-xorshift rounds over
    ``entry_hash ^ node_hash``; it depends on that pair only, so adding or removing
    other nodes never changes which of two nodes an entry prefers.
    """
    rep, keys, mask, ranks, nbytes = lanes.rep, lanes.keys, lanes.mask, lanes.ranks, lanes.nbytes
    high = mask << 32
    c1, c2, order = MIX_C1, MIX_C2, _BYTEORDER
    out: list[int] = []
    append = out.append
    for h in hashes:
        # Per lane: x = h ^ node; two rounds of "multiply, fold the 64-bit product's
        # halves with xor" (the shifts leak bits across lanes, the masks drop them).
        p = ((h * rep) ^ keys) * c1
        p = ((p ^ (p >> 32)) & mask) * c2
        z = ((p ^ (p << 32)) & high) | ranks
        append(max(memoryview(z.to_bytes(nbytes, order)).cast("Q")))
    return out


def rank_of(word: int) -> int:
    """The node rank (index in sorted ids) of a lane word."""
    return word & _M32


def entry_hashes32(entries: Sequence[str]) -> list[int]:
    """:func:`hash32` of every entry, in order."""
    return [hash64(entry) >> 32 for entry in entries]


class WholeListStrategy:
    """Base of the strategies that place the sorted entry list as a whole (round-robin,
    range): the owner of one entry depends on every entry, so only :meth:`assign` exists.
    Subclasses say where the ``i``-th of ``total`` sorted entries goes among ``count`` nodes.
    """

    name: str = ""
    #: The owner of one entry depends on all entries: call :meth:`assign`.
    needs_all_entries = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        """Always raises: the owner of one entry depends on the whole entry list."""
        raise NotImplementedError(
            f"{self.name}: owner() cannot place entry {entry!r} without the whole entry "
            "list; call assign(entries, nodes) (the engine always does)"
        )

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> dict[str, str]:
        ids = node_ids(nodes)
        if not ids:
            return {}
        names = sorted(set(entries))
        return {name: ids[self._place(i, len(names), len(ids))] for i, name in enumerate(names)}

    def _place(self, i: int, total: int, count: int) -> int:
        raise NotImplementedError
