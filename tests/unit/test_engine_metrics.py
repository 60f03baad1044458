"""The engine's metrics on the in-memory registry: counts that match what happened."""

from __future__ import annotations

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, MisfirePolicy, Tick
from celery_dcron.metrics import Metrics
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.strategies import get_strategy

T0 = 1_800_000_000_000
S = 1000


class Counting(Metrics):
    """Records ``skipped(reason, count)``; refuses negative counts, as prometheus does."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, int]] = []

    def skipped(self, reason: str, count: int = 1) -> None:
        if count < 0:
            raise ValueError(f"Counters can only be incremented by non-negative amounts: {count}")
        self.skips.append((reason, count))


def _engine(
    policy: MisfirePolicy, clock: ManualClock, metrics: Counting
) -> tuple[Engine, list[int]]:
    settings = Settings(node_id="n1", namespace="unit", misfire_max_catchup=3)
    registry = MemoryRegistry.from_settings(settings, clock)
    sent: list[int] = []

    def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        sent.append(tick.tick_ms)

    entry = EntrySpec(
        name="e", task="t", schedule=IntervalSchedule(every_ms=S), misfire_policy=policy
    )
    engine = Engine(
        settings=settings, registry=registry,  # type: ignore[arg-type]
        clock=clock, strategy=get_strategy(settings.strategy), publish=publish,
        static_entries=[entry], listen=False, metrics=metrics,
    )  # fmt: skip
    return engine, sent


def test_skipped_ticks_are_counted_once_each_under_every_policy() -> None:
    """10 ticks due at once: ``once`` fires 1 and skips 9; ``all`` (at most 3) fires 3 and
    skips 7. (The count was ``missed - fired``: 8 for once, and -3 for all, which made
    prometheus raise out of the step and lose the pass.)"""
    for policy, fired, skipped in ((MisfirePolicy.ONCE, 1, 9), (MisfirePolicy.ALL, 3, 7)):
        clock = ManualClock(start_ms=T0)
        metrics = Counting()
        engine, sent = _engine(policy, clock, metrics)
        engine.step()  # joins and anchors
        sent.clear()
        clock.advance(10 * S)  # nobody fired for 10 s
        engine.step()
        assert len(sent) == fired, (policy, sent)
        assert [count for _, count in metrics.skips] == [skipped], (policy, metrics.skips)
