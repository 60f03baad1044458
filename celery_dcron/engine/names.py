"""Every entry name an instance knows, indexed by ring arc for the default strategy."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ..interfaces import NodeRef, Strategy
from ..strategies.consistent_hash import ConsistentHashStrategy, RingIndex

__all__ = ["Names"]


class Names(set[str]):
    """The set of every entry name, plus, with :class:`ConsistentHashStrategy`, a
    :class:`~celery_dcron.strategies.consistent_hash.RingIndex` of them kept in step by
    :meth:`add`, :meth:`discard` and :meth:`update` (the only changes made to it): then
    the names a node owns are found by arcs of the ring, not one hash per name.
    Membership tests are the set's own."""

    def __init__(self, names: Iterable[str] = (), *, strategy: Strategy | None = None) -> None:
        super().__init__()
        # the class itself: a subclass may place entries otherwise
        self.index = RingIndex(strategy) if type(strategy) is ConsistentHashStrategy else None
        self.update(names)

    def add(self, name: str) -> None:
        if name not in self:
            super().add(name)
            if self.index is not None:
                self.index.add(name)

    def discard(self, name: object) -> None:
        if name in self:
            super().discard(name)
            if self.index is not None and isinstance(name, str):
                self.index.discard(name)

    def update(self, *names: Iterable[str]) -> None:
        for group in names:
            for name in group:
                self.add(name)

    def owned(self, nodes: Sequence[NodeRef], me: str, into: list[str]) -> Iterator[None] | None:
        """With a ring index, a paged job that appends the names ``me`` owns on ``nodes``
        to ``into`` (see :meth:`RingIndex.owned`); None without one."""
        return None if self.index is None else self.index.owned(nodes, me, into)
