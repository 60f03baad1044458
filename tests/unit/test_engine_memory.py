"""The engine on the in-memory registry: no Redis, one manual clock for everything."""

from __future__ import annotations

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, NodeStatus, Tick
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import task_id

T0 = 1_800_000_000_000
EVERY_MS = 5000


def test_an_engine_on_the_memory_registry_fires_each_due_tick_once() -> None:
    clock = ManualClock(start_ms=T0)
    settings = Settings(node_id="n1", namespace="unit")
    registry = MemoryRegistry.from_settings(settings, clock)
    sent: list[tuple[str, int, str]] = []

    def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        sent.append((spec.name, tick.tick_ms, tid))

    entry = EntrySpec(name="every5", task="t.add", schedule=IntervalSchedule(every_ms=EVERY_MS))
    engine = Engine(
        settings=settings,
        registry=registry,  # type: ignore[arg-type]  # Engine still names the Redis class
        clock=clock,
        strategy=get_strategy(settings.strategy),
        publish=publish,
        static_entries=[entry],
        listen=False,
    )

    engine.step()  # joins, syncs the static entry, anchors it: nothing due yet
    assert engine.membership.status is NodeStatus.WORKING
    assert engine.owned == {"every5"} and sent == []
    anchor = registry.states()["every5"].anchor_ms
    assert anchor is not None and T0 - EVERY_MS < anchor <= T0

    first = anchor + EVERY_MS
    clock.set(first)
    engine.step()
    assert sent == [("every5", first, task_id("unit", "every5", first))]
    engine.step()  # the same instant again: nothing more
    assert len(sent) == 1 and registry.pending() == []  # published and marked sent

    clock.advance(EVERY_MS)
    engine.step()
    assert [tick for _, tick, _ in sent] == [first, first + EVERY_MS]
    state = registry.states()["every5"]
    assert (state.last_tick_ms, state.run_count, state.last_node) == (first + EVERY_MS, 2, "n1")

    engine.stop()  # leaves at once
    assert registry.nodes()[0] == []
