"""Protocols between the layers: a clock, an ownership strategy.

Pure module: no I/O. The registry (Redis) is a concrete class in
:mod:`celery_dcron.registry`; the engine depends on the narrow protocols here so
unit tests can inject a :class:`~celery_dcron.clock.ManualClock`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "NodeRef", "Strategy"]


@runtime_checkable
class Clock(Protocol):
    """The cluster clock: milliseconds since the epoch, UTC, shared by all nodes."""

    def now_ms(self) -> int: ...


class NodeRef(Protocol):
    """What a strategy needs of a node: its id and its weight."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


class Strategy(Protocol):
    """Decides which node owns which entry. Pure and deterministic.

    Every instance computes the assignment on its own from the same inputs
    (entry names and working nodes), so equal views give equal answers.
    The claim in Redis, not this answer, prevents a double fire when views differ.
    """

    name: str

    def owner(self, entry: str, nodes: Sequence[NodeRef]) -> str | None:
        """The id of the node that owns ``entry``; ``None`` when ``nodes`` is empty."""
        ...

    def assign(self, entries: Sequence[str], nodes: Sequence[NodeRef]) -> Mapping[str, str]:
        """Owner id of every entry; empty when ``nodes`` is empty."""
        ...
