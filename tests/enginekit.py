"""Engines stepped by hand on one manual clock, a recording publisher, and the checks the
engine tests share, on the Redis registry (tests/integration) and the in-memory one
(tests/unit).

:class:`Cluster` holds the engines and steps them; a subclass says which registry each
engine gets (:meth:`Cluster.registry_for`). :func:`decisions` reads the structured log
fields of one decision: tests match those, never the wording.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, Tick
from celery_dcron.enums import EntrySource
from celery_dcron.registry import Registry
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import task_id

__all__ = [
    "T0",
    "Cluster",
    "MemoryCluster",
    "Recorder",
    "S",
    "assert_each_tick_once",
    "decisions",
    "entries",
    "ticks_of",
]

S = 1000
#: where a :class:`MemoryCluster`'s clock starts (2027-01-15)
T0 = 1_800_000_000_000


class Recorder:
    """A publisher that records (entry, tick, task id, node) and can be told to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str, str]] = []
        self.fail = False

    def __call__(self, node: str) -> object:
        def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
            if self.fail:
                raise ConnectionError("broker down")
            self.sent.append((spec.name, tick.tick_ms, tid, node))

        return publish

    def counts(self) -> Counter[tuple[str, int]]:
        return Counter((name, tick) for name, tick, _, _ in self.sent)


def entries(n: int, every_s: float = 1, **kw: object) -> list[EntrySpec]:
    return [
        EntrySpec(
            name=f"e{i}", task="t", schedule=IntervalSchedule(every_ms=int(every_s * S)), **kw
        )  # type: ignore[arg-type]
        for i in range(n)
    ]


def dynamic(n: int, every_s: int = 3600, prefix: str = "d") -> list[EntrySpec]:
    """``n`` dynamic interval entries ``<prefix>00000``..., every ``every_s`` seconds."""
    return [
        EntrySpec(
            name=f"{prefix}{i:05d}",
            task="t",
            schedule=IntervalSchedule(every_ms=every_s * S),
            source=EntrySource.DYNAMIC,
        )
        for i in range(n)
    ]


class Cluster:
    """Engines on one namespace, stepped in turn on one manual clock; each heartbeats at
    every step, so membership converges within a step."""

    #: settings of every engine, before those given to :meth:`add`
    base_settings: Mapping[str, object] = {}

    def __init__(self, clock: ManualClock, recorder: Recorder) -> None:
        self.clock = clock
        self.recorder = recorder
        self.engines: list[Engine] = []

    def registry_for(self, settings: Settings) -> Registry:
        raise NotImplementedError

    def add(
        self,
        node_id: str,
        static: list[EntrySpec],
        *,
        engine_kw: Mapping[str, Any] | None = None,
        **settings: object,
    ) -> Engine:
        conf: dict[str, object] = {**self.base_settings, "node_id": node_id, **settings}
        s = Settings(**conf)  # type: ignore[arg-type]
        engine = Engine(
            settings=s,
            registry=self.registry_for(s),
            clock=self.clock,
            strategy=get_strategy(s.strategy),
            publish=self.recorder(node_id),  # type: ignore[arg-type]
            static_entries=static,
            **{"listen": False, **(engine_kw or {})},
        )
        self.engines.append(engine)
        return engine

    def step_all(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for e in self.engines:
                if not e.stopped:
                    e._next_beat = 0.0  # heartbeat every step: membership converges fast
                    e.step()

    def align(self) -> None:
        """Set the clock to the entries' anchor, so ticks fall on whole seconds from now."""
        states = self.engines[0].registry.states()
        self.clock.set(max(st.anchor_ms or 0 for st in states.values()))

    def advance(self, ms: int, step_ms: int = 100) -> None:
        end = self.clock.now_ms() + ms
        while self.clock.now_ms() < end:
            self.clock.advance(min(step_ms, end - self.clock.now_ms()))
            self.step_all()


class MemoryCluster(Cluster):
    """Engines sharing one in-memory registry whose time is the cluster's manual clock:
    node TTLs, fire locks and catch-ups follow that clock alone (no sleeping, no Redis).

    ``registry.available = False`` is Redis down for every engine, ``registry.lose_data()``
    a Redis restart without persistence; an engine removed from :attr:`engines` stops
    stepping (no heartbeat, no leave: a crash or a freeze), put back it wakes up.
    """

    #: a node TTL of 3 s (heartbeats every 1 s): three ticks of a 1 s entry
    base_settings: Mapping[str, object] = {"node_ttl_s": 3.0}

    def __init__(self, clock: ManualClock | None = None, recorder: Recorder | None = None) -> None:
        super().__init__(clock or ManualClock(start_ms=T0), recorder or Recorder())
        self.registry = MemoryRegistry(self.clock)

    @property
    def ttl_ms(self) -> int:
        return int(float(self.base_settings["node_ttl_s"]) * S)  # type: ignore[arg-type]

    def registry_for(self, settings: Settings) -> Registry:
        assert settings.namespace == self.registry.namespace
        return self.registry  # type: ignore[return-value]  # Engine still names the Redis class


def assert_each_tick_once(rec: Recorder, namespace: str = "default") -> None:
    dup = [k for k, v in rec.counts().items() if v > 1]
    assert not dup, f"ticks published more than once: {dup[:5]}"
    for name, tick, tid, _ in rec.sent:
        assert tid == task_id(namespace, name, tick)


def decisions(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The structured fields (``dcron_*``, without the prefix) and the level of each log
    record of one decision (``dcron_event``): tests match these, never the wording."""
    return [
        {"level": r.levelno, **{k[6:]: v for k, v in vars(r).items() if k.startswith("dcron_")}}
        for r in caplog.records
        if getattr(r, "dcron_event", None) == event
    ]


def ticks_of(rec: Recorder, name: str) -> list[int]:
    return sorted(t for n, t, _, _ in rec.sent if n == name)
