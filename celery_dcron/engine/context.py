"""What the parts of the engine share: settings, registry, cluster clock, membership,
metrics, and a way to send a signal (the engine is its sender).

:class:`Context` is built once by the :class:`~celery_dcron.engine.Engine`; each part
(:class:`Part`) takes it and whatever else it needs explicitly, never the engine itself.
:class:`Delegated` keeps an engine attribute that lives on a part readable and settable on
the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast, overload

from ..clock import ManualClock, RedisClock
from ..config import Settings
from ..membership import Membership
from ..metrics import Metrics
from ..registry import Registry

__all__ = ["Context", "Delegated", "Notify", "Part"]

#: ``notify(signal, **kwargs)`` sends a signal with the engine as its sender.
Notify = Callable[..., None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    settings: Settings
    registry: Registry
    clock: RedisClock | ManualClock
    membership: Membership
    metrics: Metrics
    notify: Notify


class Part:
    """A part of the engine: the context's members as its attributes."""

    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.registry = ctx.registry
        self.clock = ctx.clock
        self.membership = ctx.membership
        self.metrics = ctx.metrics
        self.notify = ctx.notify

    @property
    def node_id(self) -> str:
        return self.membership.node.id


T = TypeVar("T")


class Delegated(Generic[T]):
    """An attribute of the engine that lives on one of its parts (callers and tests read
    and set it on the engine: ``engine.publish = ...``)."""

    def __init__(self, part: str, attr: str = "") -> None:
        self.part = part
        self.attr = attr

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = self.attr or name

    @overload
    def __get__(self, engine: None, owner: type) -> Delegated[T]: ...
    @overload
    def __get__(self, engine: object, owner: type) -> T: ...
    def __get__(self, engine: object | None, owner: type) -> Delegated[T] | T:
        if engine is None:
            return self
        return cast(T, getattr(getattr(engine, self.part), self.attr))

    def __set__(self, engine: object, value: T) -> None:
        setattr(getattr(engine, self.part), self.attr, value)
