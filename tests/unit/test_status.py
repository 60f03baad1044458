"""What ``celery dcron ls|status`` and the admin show: the engine's own tick rule."""

from __future__ import annotations

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, EntryState, Tick
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import CronSchedule, IntervalSchedule
from celery_dcron.status import next_run_ms
from celery_dcron.strategies import get_strategy

T0 = 1_800_000_000_000
EVERY_MS = 5000


def test_the_next_run_of_an_interval_entry_with_a_future_start_is_its_start() -> None:
    start = T0 + 3_600_000
    spec = EntrySpec(
        name="later", task="t", schedule=IntervalSchedule(every_ms=60_000), start_ms=start
    )
    assert next_run_ms(spec, EntryState(anchor_ms=T0)) == start


def test_the_next_run_of_a_cron_entry_with_a_future_start_is_its_first_tick_from_then() -> None:
    start = T0 + 3_600_000 + 30_000  # between two whole minutes
    spec = EntrySpec(name="c", task="t", schedule=CronSchedule(expr="* * * * *"), start_ms=start)
    assert next_run_ms(spec, EntryState(anchor_ms=T0)) == start + 30_000


def test_status_shows_the_tick_the_engine_fires_for_a_future_start() -> None:
    clock = ManualClock(start_ms=T0)
    settings = Settings(node_id="n1", namespace="unit")
    registry = MemoryRegistry.from_settings(settings, clock)
    start = T0 + 12_345  # off the entry's grid
    entry = EntrySpec(
        name="later", task="t", schedule=IntervalSchedule(every_ms=EVERY_MS), start_ms=start
    )
    sent: list[int] = []

    def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        sent.append(tick.tick_ms)

    engine = Engine(
        settings=settings,
        registry=registry,  # type: ignore[arg-type]
        clock=clock,
        strategy=get_strategy(settings.strategy),
        publish=publish,
        static_entries=[entry],
        listen=False,
    )
    engine.step()  # joins and anchors the entry
    shown = next_run_ms(registry.entries()[0]["later"], registry.states()["later"])
    clock.set(start)
    engine.step()
    assert sent == [start]
    assert shown == start
