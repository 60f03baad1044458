"""Ownership strategies: which node owns which entry. Pure: no I/O.

Every strategy is deterministic, independent of the order of the ``nodes``
sequence and of Python's hash randomisation (stable BLAKE2b / CRC16 hashes), so
instances with the same view compute the same assignment. Each module's
docstring states the balance and movement bounds its tests assert.

==================  =======================================  =====================
name                how                                      a join / leave moves
==================  =======================================  =====================
``consistent_hash``  ring, ``virtual_nodes`` points per node   ~1/(N+1), only to /
(default)           (scaled by weight), bisect lookup        from that node
``rendezvous``      highest random weight per entry          ~1/(N+1), idem
``hash_slot``       CRC16 mod 16384 slots, slots by HRW      ~1/(N+1), idem
``weighted``        weighted HRW, share = weight / total     its share, idem
``modulo``          hash mod N over sorted ids               ~N/(N+1)
``round_robin``     sorted names dealt over sorted ids       ~N/(N+1); ``assign`` only
``range``           sorted names cut into N ranges           ~1/2; ``assign`` only
==================  =======================================  =====================

``round_robin`` and ``range`` place an entry by its rank among *all* entries, so
their ``owner()`` raises :class:`NotImplementedError` (``needs_all_entries = True``);
the engine calls ``assign(entries, nodes)``.

Choose one with the ``dcron_strategy`` setting: one of the names above, or a
dotted path (``"pkg.module:Class"`` or ``"pkg.module.Class"``) to a class that is
built without arguments and implements :class:`celery_dcron.interfaces.Strategy`.
"""

from __future__ import annotations

import importlib
from typing import cast

from ..enums import StrategyName
from ..exceptions import ConfigurationError
from ..interfaces import Strategy
from .consistent_hash import DEFAULT_VIRTUAL_NODES, ConsistentHashStrategy
from .hash_slot import HashSlotStrategy
from .modulo import ModuloStrategy
from .ranges import RangeStrategy
from .rendezvous import RendezvousStrategy
from .round_robin import RoundRobinStrategy
from .weighted import WeightedStrategy

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "ConsistentHashStrategy",
    "HashSlotStrategy",
    "ModuloStrategy",
    "RangeStrategy",
    "RendezvousStrategy",
    "RoundRobinStrategy",
    "StrategyName",
    "WeightedStrategy",
    "get_strategy",
    "parse_strategy",
]

DEFAULT_STRATEGY = StrategyName.CONSISTENT_HASH

#: Strategy name (the value of ``dcron_strategy``) -> class.
STRATEGIES: dict[StrategyName, type] = {
    cls.name: cls
    for cls in (
        ConsistentHashStrategy,
        RendezvousStrategy,
        HashSlotStrategy,
        ModuloStrategy,
        WeightedStrategy,
        RoundRobinStrategy,
        RangeStrategy,
    )
}


def parse_strategy(value: object) -> StrategyName | str:
    """The ``dcron_strategy`` setting: a built-in name (any case, ``-`` for ``_``) as a
    :class:`~celery_dcron.enums.StrategyName`, or a dotted path kept as a string (imported
    by :func:`get_strategy`). Raises ConfigurationError naming the setting."""
    if isinstance(value, StrategyName):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"dcron_strategy: {value!r} is not a strategy name; use one of {_choices()}"
        )
    key = value.strip()
    try:
        return StrategyName(key.lower().replace("-", "_"))
    except ValueError:
        pass
    if "." in key or ":" in key:
        return key
    raise ConfigurationError(f"dcron_strategy: unknown strategy {value!r}; use one of {_choices()}")


def get_strategy(
    name: StrategyName | str, *, virtual_nodes: int = DEFAULT_VIRTUAL_NODES
) -> Strategy:
    """The strategy called ``name`` (``dcron_strategy``), ready to use.

    ``virtual_nodes`` (``dcron_virtual_nodes``) applies to ``consistent_hash``.
    Raises :class:`~celery_dcron.exceptions.ConfigurationError` naming the setting
    for an unknown name, a dotted path that does not import, or an object without
    ``assign``.
    """
    parsed = parse_strategy(name)
    if parsed is StrategyName.CONSISTENT_HASH:
        try:
            return ConsistentHashStrategy(virtual_nodes=virtual_nodes)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"dcron_virtual_nodes: {exc}") from None
    if isinstance(parsed, StrategyName):
        return cast(Strategy, STRATEGIES[parsed]())
    return _load(parsed)


def _choices() -> str:
    return ", ".join(n.value for n in StrategyName) + ", or a dotted path 'pkg.module:Class'"


def _load(path: str) -> Strategy:
    """Import ``pkg.module:Class`` or ``pkg.module.Class`` and build it without arguments."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(
            f"dcron_strategy: {path!r} is not a dotted path; use 'pkg.module:Class'"
        )
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise ConfigurationError(f"dcron_strategy: cannot import {path!r}: {exc}") from None
    except AttributeError:
        raise ConfigurationError(
            f"dcron_strategy: {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    strategy: object = obj
    if isinstance(obj, type):
        try:
            strategy = obj()
        except Exception as exc:
            raise ConfigurationError(
                f"dcron_strategy: {path!r} must be a class built without arguments: {exc!r}"
            ) from None
    if not callable(getattr(strategy, "assign", None)):
        raise ConfigurationError(
            f"dcron_strategy: {path!r} has no assign(entries, nodes) method; implement "
            "celery_dcron.interfaces.Strategy"
        )
    return cast(Strategy, strategy)
