"""``round_robin``: sorted entry names dealt in turn over the sorted node ids.

The i-th entry name in sorted order belongs to ``sorted_ids[i % N]``. Loads are
as even as they can be (max - min <= 1 entry), but every owner depends on the
whole entry list, so:

* :meth:`RoundRobinStrategy.owner` cannot answer for one entry alone and raises
  :class:`NotImplementedError`; the engine always calls :meth:`~RoundRobinStrategy.assign`
  with every entry (``needs_all_entries = True`` says so);
* a membership change re-deals almost everything (N to N+1 nodes moves about
  N/(N+1) of the entries), and adding or removing one entry moves every entry
  that sorts after it (each shifts to the next node).

Prefer ``consistent_hash`` unless entries and nodes rarely change. Weights are
ignored. Bounds asserted by ``tests/unit/test_strategies.py``:

* balance: max load - min load <= 1 (exact, any entries and nodes);
* join of node N+1 (10,000 entries, 3..10 nodes): moved fraction >= 0.7
  (N/(N+1): 0.75 at least), not only to the new node;
* adding one entry that sorts first (N >= 2): every other entry moves (exact).
"""

from __future__ import annotations

from ..enums import StrategyName
from ._common import WholeListStrategy

__all__ = ["RoundRobinStrategy"]


class RoundRobinStrategy(WholeListStrategy):
    """Sorted entries dealt over sorted node ids; only :meth:`assign` is exact."""

    name = StrategyName.ROUND_ROBIN

    def _place(self, i: int, total: int, count: int) -> int:
        return i % count
