"""``range``: sorted entry names split into N contiguous, near-equal ranges.

With M distinct entry names in sorted order and N sorted node ids, the i-th
name belongs to ``sorted_ids[i * N // M]``: node k owns one contiguous run of
names (handy to read: "node-b owns report-* to sync-*"), and loads differ by at
most one entry. Every owner depends on the whole entry list, so:

* :meth:`RangeStrategy.owner` cannot answer for one entry alone and raises
  :class:`NotImplementedError`; the engine always calls :meth:`~RangeStrategy.assign`
  with every entry (``needs_all_entries = True`` says so);
* a membership change shifts every range boundary: N to N+1 nodes moves between
  about 1/4 (new id sorts in the middle) and 1/2 (it sorts first or last) of the
  entries whatever N is, not 1/(N+1); adding or removing an entry moves at most
  N - 1 others (one per shifted boundary).

Prefer ``consistent_hash`` unless nodes rarely change. Weights are ignored.
Bounds asserted by ``tests/unit/test_strategies.py``:

* balance: max load - min load <= 1 (exact, any entries and nodes);
* join of node N+1 (10,000 entries, 3..10 nodes): moved fraction >= 0.25
  (measured 0.27 .. 0.50 over every position of the new id), not only to the new node;
* adding one entry: at most N - 1 other entries move (exact).
"""

from __future__ import annotations

from ..enums import StrategyName
from ._common import WholeListStrategy

__all__ = ["RangeStrategy"]


class RangeStrategy(WholeListStrategy):
    """Contiguous ranges of sorted entry names over sorted node ids; only :meth:`assign`."""

    name = StrategyName.RANGE

    def _place(self, i: int, total: int, count: int) -> int:
        return i * count // total
