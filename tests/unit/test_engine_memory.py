"""The engine on the in-memory registry: no Redis, one manual clock for everything.

A pass (due entries fire once, at their tick, with their task id, claimed before and
marked sent after), catch-up under each misfire policy and the grace window, and Redis
unavailable (G5). Failover is in test_engine_failover.py, a data loss in
test_engine_recovery.py; the cluster helpers are in tests/enginekit.py.
"""

from __future__ import annotations

import logging
from itertools import pairwise

import pytest

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, MisfirePolicy, NodeStatus, Tick
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import task_id
from tests.enginekit import (
    T0,
    MemoryCluster,
    S,
    assert_each_tick_once,
    decisions,
    entries,
    ticks_of,
)

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


# -- one pass --------------------------------------------------------------------------------


def test_a_pass_fires_each_due_entry_once_at_its_tick_with_its_id_then_marks_it_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = MemoryCluster()
    e = c.add("a", entries(5, every_s=60))
    c.step_all(2)  # joins, anchors each entry on its own phase of its grid: apart
    pending_at_publish: list[list[tuple[str, int]]] = []
    publish = e.publish

    def publish_and_look(spec: EntrySpec, tick: Tick, tid: str) -> None:
        pending_at_publish.append(sorted((p.name, p.tick_ms) for p in c.registry.pending()))
        publish(spec, tick, tid)

    e.publish = publish_and_look
    firsts = {
        name: st.anchor_ms + 60 * S
        for name, st in c.registry.states().items()
        if st.anchor_ms is not None
    }
    assert len(set(firsts.values())) == 5 and c.recorder.sent == []
    caplog.set_level(logging.INFO, logger="celery_dcron")
    for name, first in sorted(firsts.items(), key=lambda item: item[1]):
        c.clock.set(first - 1)
        e.step()
        assert ticks_of(c.recorder, name) == [], "fired before its tick"
        c.clock.set(first)
        e.step()
        e.step()  # the same instant again: nothing more
        assert ticks_of(c.recorder, name) == [first]
        assert pending_at_publish[-1] == [(name, first)]  # claimed before it was published
        assert c.registry.pending() == []  # and marked sent after
        state = c.registry.states()[name]
        assert (state.last_tick_ms, state.run_count, state.last_node) == (first, 1, "a")
    assert_each_tick_once(c.recorder)
    assert sorted((n, t, tid) for n, t, tid, _ in c.recorder.sent) == sorted(
        (n, t, task_id("default", n, t)) for n, t in firsts.items()
    )
    fired = {
        (d["entry"], d["tick_ms"], d["task_id"], d["node"], d["run_now"])
        for d in decisions(caplog, "fired")
    }
    assert fired == {(n, t, tid, "a", False) for n, t, tid, _ in c.recorder.sent}
    assert decisions(caplog, "catch_up") == []  # all on time


# -- catch-up: misfire policies and the grace window ------------------------------------------


#: the period of the entry the catch-up tests miss ticks of
P = 10 * S


def _one_entry_fired_once(**settings: object) -> tuple[MemoryCluster, Engine, int]:
    """One engine, one entry every ``P`` (``settings`` for the engine), fired once on
    time; returns the cluster, the engine and that tick (the entry's last)."""
    c = MemoryCluster()
    e = c.add("a", entries(1, every_s=P / S), **settings)
    c.step_all(2)
    c.align()
    c.advance(P, step_ms=P)
    (last,) = ticks_of(c.recorder, "e0")
    return c, e, last


@pytest.mark.parametrize(
    ("policy", "late_ms", "fired"),
    [
        (MisfirePolicy.ONCE, 500, [10]),  # the latest of the missed ticks
        (MisfirePolicy.ALL, 500, [8, 9, 10]),  # each, at most misfire_max_catchup: the newest
        (MisfirePolicy.SKIP, 1000, [10]),  # the latest is still on time (at most 1 s late)
        (MisfirePolicy.SKIP, 1001, []),  # it is not: nothing
    ],
)
def test_missed_ticks_are_caught_up_by_the_misfire_policy(
    caplog: pytest.LogCaptureFixture, policy: MisfirePolicy, late_ms: int, fired: list[int]
) -> None:
    c, e, last = _one_entry_fired_once(misfire_policy=policy, misfire_max_catchup=3)
    c.clock.set(last + 10 * P + late_ms)  # nobody fired for 10 ticks
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        e.step()
    assert ticks_of(c.recorder, "e0") == [last] + [last + k * P for k in fired]
    (summary,) = decisions(caplog, "catch_up")
    assert summary["level"] == logging.WARNING
    assert (summary["node"], summary["entries"], summary["missed"], summary["fired"]) == (
        "a", 1, 10, len(fired),
    )  # fmt: skip
    assert summary["dropped"] == (not fired)
    (entry,) = decisions(caplog, "catch_up_entry")
    assert {k: entry[k] for k in ("entry", "node", "missed", "fired", "dropped", "policy")} == {
        "entry": "e0", "node": "a", "missed": 10, "fired": len(fired), "dropped": not fired,
        "policy": policy.value,
    }  # fmt: skip
    assert entry["tick_ms"] == last + 10 * P and entry["grace_s"] is None
    assert c.registry.states()["e0"].last_tick_ms == last + 10 * P  # moved past them all
    # and on the grid again: the next tick fires on time, no catch-up
    caplog.clear()
    c.clock.set(last + 11 * P)
    e.step()
    assert ticks_of(c.recorder, "e0")[-1] == last + 11 * P
    assert decisions(caplog, "catch_up") == []
    assert_each_tick_once(c.recorder)


@pytest.mark.parametrize(
    ("policy", "grace_s", "late_ms", "fired"),
    [
        (MisfirePolicy.ONCE, 2.0, 2001, []),  # the latest missed tick is past the grace
        (MisfirePolicy.ONCE, 2.0, 2000, [10]),  # it is not, yet
        (MisfirePolicy.ALL, 12.0, 500, [9, 10]),  # 0.5 and 10.5 s old fire, 20.5 s old not
    ],
)
def test_the_grace_window_drops_missed_ticks_older_than_it(
    caplog: pytest.LogCaptureFixture,
    policy: MisfirePolicy,
    grace_s: float,
    late_ms: int,
    fired: list[int],
) -> None:
    c, e, last = _one_entry_fired_once(misfire_policy=policy, misfire_grace_s=grace_s)
    c.clock.set(last + 10 * P + late_ms)
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        e.step()
    assert ticks_of(c.recorder, "e0") == [last] + [last + k * P for k in fired]
    (summary,) = decisions(caplog, "catch_up")
    assert (summary["missed"], summary["fired"], summary["dropped"]) == (
        10, len(fired), not fired,
    )  # fmt: skip
    (entry,) = decisions(caplog, "catch_up_entry")
    assert (entry["entry"], entry["grace_s"], entry["policy"], entry["tick_ms"]) == (
        "e0", grace_s, policy.value, last + 10 * P,
    )  # fmt: skip
    c.clock.set(last + 11 * P)
    e.step()
    assert ticks_of(c.recorder, "e0")[-1] == last + 11 * P  # the next tick is on time
    assert_each_tick_once(c.recorder)


def test_a_catch_up_of_every_missed_tick_is_logged_too(caplog: pytest.LogCaptureFixture) -> None:
    """``all`` fires each of the 3 missed ticks (under its bound), 30, 20 and 10 s late: a
    gap all the same, and "every gap is logged" (docs/concepts.rst, catch-up), as it is
    under ``once`` and ``skip``; ``missed`` counts "the ones fired late included"
    (docs/monitoring.rst)."""
    c, e, last = _one_entry_fired_once(misfire_policy=MisfirePolicy.ALL)
    c.clock.set(last + 3 * P + 500)
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        e.step()
    assert ticks_of(c.recorder, "e0") == [last + k * P for k in range(4)]
    (summary,) = decisions(caplog, "catch_up")
    assert (summary["missed"], summary["fired"], summary["dropped"]) == (3, 3, False)
    (entry,) = decisions(caplog, "catch_up_entry")
    assert (entry["policy"], entry["missed"], entry["fired"]) == ("all", 3, 3)


# -- Redis unavailable (G5) ----------------------------------------------------------------------


def test_without_redis_nothing_is_published_the_engine_backs_off_and_catches_up_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = MemoryCluster()
    a = c.add("a", entries(6), misfire_policy=MisfirePolicy.ALL)
    b = c.add("b", entries(6), misfire_policy=MisfirePolicy.ALL)
    c.step_all(3)
    c.align()
    c.advance(2 * S, step_ms=250)
    assert a.owned and b.owned
    sent_before = len(c.recorder.sent)
    down_at = c.clock.now_ms()
    c.registry.available = False
    waits: dict[str, list[float]] = {"a": [], "b": []}
    with caplog.at_level(logging.DEBUG, logger="celery_dcron"):
        for _ in range(6):  # 1.5 s: every entry has ticks due meanwhile
            c.clock.advance(250)
            for e in (a, b):
                e._next_beat = 0.0  # heartbeat now: each step tries Redis
                waits[e.node_id].append(e.step())
    assert len(c.recorder.sent) == sent_before  # nothing without Redis: no claim, no publish
    assert waits["a"] == waits["b"] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]  # backs off, capped
    unreachable = [
        (d["node"], d["attempt"], d["retry_s"]) for d in decisions(caplog, "redis_unreachable")
    ]
    assert [u for u in unreachable if u[0] == "a"] == [
        ("a", n, w) for n, w in enumerate(waits["a"], start=1)
    ]
    c.registry.available = True
    c.step_all()  # both reconnect and catch up (policy all: each missed tick)
    up_at = c.clock.now_ms()
    c.advance(2 * S, step_ms=250)
    assert_each_tick_once(c.recorder)
    for name in (f"e{i}" for i in range(6)):
        ts = ticks_of(c.recorder, name)
        assert all(y - x == S for x, y in pairwise(ts)), (name, ts)  # no tick lost either
        assert any(down_at < t <= up_at for t in ts)


def test_a_tick_published_as_redis_went_away_is_marked_sent_on_its_return_not_sent_again() -> None:
    """The broker took the message; then Redis stopped answering before "mark sent". The
    engine keeps the tick as published, marks it sent once Redis is back, and neither it
    nor the janitor's look at unsent claims publishes it again."""
    c = MemoryCluster()
    e = c.add("a", entries(1))
    c.step_all(2)
    c.align()
    publish = e.publish

    def publish_then_lose_redis(spec: EntrySpec, tick: Tick, tid: str) -> None:
        publish(spec, tick, tid)
        c.registry.available = False

    e.publish = publish_then_lose_redis
    c.clock.advance(S)
    assert e.step() > 0  # backing off
    (tick,) = ticks_of(c.recorder, "e0")
    e.publish = publish
    c.clock.advance(100)
    e.step()  # still down
    c.registry.available = True
    c.step_all()
    assert c.registry.pending() == []  # marked sent
    c.advance(3 * c.ttl_ms, step_ms=250)  # past the unsent-claims look, more ticks
    assert_each_tick_once(c.recorder)
    ts = ticks_of(c.recorder, "e0")
    assert ts[0] == tick and all(y - x == S for x, y in pairwise(ts))


def test_synced_static_entries_keep_no_text_and_owned_entries_share_their_names() -> None:
    """What an instance holds per entry, at 100,000 static entries: a synced static entry
    lets go of its JSON text (made again for a later sync), and an entry read back
    keeps the name string the instance has anyway, not a copy decoded from its text."""
    clock = ManualClock(start_ms=T0)
    settings = Settings(node_id="n1", namespace="unit")
    registry = MemoryRegistry.from_settings(settings, clock)
    static = [
        EntrySpec(name=f"s{i}", task="t.add", schedule=IntervalSchedule(every_ms=EVERY_MS))
        for i in range(3)
    ]
    engine = Engine(
        settings=settings,
        registry=registry,  # type: ignore[arg-type]  # Engine still names the Redis class
        clock=clock,
        strategy=get_strategy(settings.strategy),
        publish=lambda spec, tick, tid: None,
        static_entries=static,
        listen=False,
    )
    engine.step()
    assert engine.owned == {"s0", "s1", "s2"}
    assert all(spec._text is None for spec in engine.view.static_entries)
    assert registry.get_entry("s1") == static[1]  # written
    # a sync again (after a Redis data loss) makes the same texts again: nothing changes
    assert registry.sync_static(static).changed == 0
    for name, spec in engine.view.entries.items():
        assert spec.name is name
