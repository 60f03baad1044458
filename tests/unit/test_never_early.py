"""Never before T: a tick goes out at T plus the clock's error bound (engine/dispatch.py).

Cluster time (Redis server time through a local offset) can be ahead of the server's own
clock by up to :attr:`RedisClock.error_ms`; the dispatcher waits that much more, so that no
message reaches the broker before its tick on the server's clock.
"""

from __future__ import annotations

from celery_dcron.clock import ManualClock
from celery_dcron.entries import EntrySpec, Tick
from tests.enginekit import MemoryCluster, S, entries


class AheadClock(ManualClock):
    """A clock that says it may be up to 7 ms ahead of the server's."""

    error_ms = 7


def test_each_tick_is_published_at_its_tick_plus_the_error_bound() -> None:
    clock = AheadClock(start_ms=1_800_000_000_000)
    c = MemoryCluster(clock=clock)
    published: list[tuple[int, int]] = []

    def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        published.append((tick.tick_ms, clock.now_ms()))

    engine = c.add("a", entries(5))
    engine.publish = publish
    c.step_all(4)
    c.align()
    c.advance(3 * S, step_ms=1)
    assert len(published) >= 10
    assert all(at >= tick + 7 for tick, at in published), published
    assert all(at <= tick + 7 + 1 for tick, at in published[5:]), published  # and no later
