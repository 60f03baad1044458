"""A Redis data loss while engines run, on the in-memory registry (engine/recovery.py).

``MemoryRegistry.lose_data()`` is a Redis restart without persistence: every key gone,
a new epoch. The engines put back the anchors (the grid holds) and the last ticks of
the entries each owned (no tick replayed); an entry whose last tick nobody restores
waits one node TTL for its absent owner, then skips its ticks up to the loss.
Node TTL 3 s, entries every second, policy ``all`` (which would replay every tick from
the anchor if a last tick were forgotten).
"""

from __future__ import annotations

import logging
from itertools import pairwise

import pytest

from celery_dcron.engine import Engine
from celery_dcron.entries import MisfirePolicy
from tests.enginekit import (
    MemoryCluster,
    S,
    assert_each_tick_once,
    decisions,
    entries,
    ticks_of,
)

NAMES = [f"e{i}" for i in range(8)]


def _two_running() -> tuple[MemoryCluster, Engine, Engine, dict[str, int]]:
    """Engines a and b firing 8 entries (policy all) for 2 s; and the entries' anchors."""
    c = MemoryCluster()
    a = c.add("a", entries(len(NAMES)), misfire_policy=MisfirePolicy.ALL)
    b = c.add("b", entries(len(NAMES)), misfire_policy=MisfirePolicy.ALL)
    c.step_all(3)
    c.align()
    c.advance(2 * S, step_ms=250)
    assert a.owned and b.owned
    anchors = {n: st.anchor_ms for n, st in c.registry.states().items()}
    assert set(anchors) == set(NAMES) and None not in anchors.values()
    return c, a, b, anchors  # type: ignore[return-value]


def _on_the_grid(c: MemoryCluster, anchors: dict[str, int], since: int = 0) -> None:
    """Every tick published is on its entry's grid (anchor + k s), and after ``since``
    none of them is missing."""
    for name, anchor in anchors.items():
        ts = ticks_of(c.recorder, name)
        assert all((t - anchor) % S == 0 for t in ts), (name, anchor, ts)
        later = [t for t in ts if t > since]
        assert all(y - x == S for x, y in pairwise(later)), (name, later)


def test_a_data_loss_with_every_owner_running_keeps_the_grid_and_fires_no_tick_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c, _, _, anchors = _two_running()
    last = {name: ticks_of(c.recorder, name)[-1] for name in NAMES}
    c.registry.lose_data()
    lost_at = c.clock.now_ms()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.advance(4 * S, step_ms=250)
    assert {d["node"] for d in decisions(caplog, "registry_reset")} == {"a", "b"}
    assert decisions(caplog, "state_lost") == []  # each owner put its last ticks back
    assert {n: st.anchor_ms for n, st in c.registry.states().items()} == anchors
    assert set(c.registry.entries()[0]) == set(NAMES)  # the static schedule, rewritten
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, anchors)  # no tick missed, none replayed, the grid held
    for name in NAMES:
        assert ticks_of(c.recorder, name)[-1] >= last[name] + 4 * S
    assert any(t > lost_at for n, t, _, node in c.recorder.sent if node == "a")
    assert any(t > lost_at for n, t, _, node in c.recorder.sent if node == "b")


def test_an_owner_absent_at_the_loss_has_one_node_ttl_to_put_its_last_ticks_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """b is frozen when Redis loses its data. a rebuilds the registry and owns every entry
    meanwhile, but b's entries have no last tick: a puts them off for one node TTL. b
    comes back within it and restores them: no tick replayed, none lost (policy all)."""
    c, a, b, anchors = _two_running()
    theirs = b.owned
    c.engines.remove(b)  # frozen
    c.registry.lose_data()
    lost_at = c.clock.now_ms()
    c.advance(c.ttl_ms // 2, step_ms=250)
    assert a.owned == set(NAMES)  # b is not in the rebuilt registry
    assert not [t for n, t, *_ in c.recorder.sent if n in theirs and t > lost_at]  # put off
    c.engines.append(b)
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.advance(3 * S, step_ms=250)
    assert decisions(caplog, "state_lost") == []
    assert b.owned == theirs
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, anchors)  # b's entries caught up every tick they missed


def test_an_owner_that_never_comes_back_loses_the_ticks_before_the_loss_not_replays_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """b dies; before its TTL runs out, Redis loses its data. Whether b sent its entries'
    ticks up to the loss is unknown: after one node TTL, a skips them (logged per entry,
    never replayed: G1 before G2) and fires the rest."""
    c, a, b, anchors = _two_running()
    theirs = b.owned
    sent_by_b = {name: ticks_of(c.recorder, name)[-1] for name in theirs}
    c.engines.remove(b)  # dead; a still takes it for alive
    c.advance(c.ttl_ms // 2, step_ms=250)
    assert not a.owned & theirs
    c.registry.lose_data()
    lost_at = c.clock.now_ms()
    c.clock.advance(250)
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.step_all()  # a sees the loss here, and rebuilds
        reset_at = c.clock.now_ms()
        c.advance(c.ttl_ms - 250, step_ms=250)
        assert not [t for n, t, *_ in c.recorder.sent if n in theirs and t > sent_by_b[n]]
        c.advance(250)  # settled: b did not come back
    lost = {d["entry"]: d for d in decisions(caplog, "state_lost")}
    assert set(lost) == theirs and {d["node"] for d in lost.values()} == {"a"}
    c.advance(2 * S, step_ms=250)
    assert_each_tick_once(c.recorder)
    for name in theirs:
        skipped_to = lost[name]["tick_ms"]
        assert reset_at - S < skipped_to <= reset_at  # the latest tick before the loss
        assert skipped_to > sent_by_b[name]  # b died with ticks unsent: they stay unsent
        ts = ticks_of(c.recorder, name)
        after = [t for t in ts if t > sent_by_b[name]]
        # nothing up to the loss is replayed; from there on, each tick (policy all)
        assert after and after[0] == skipped_to + S, (name, sent_by_b[name], skipped_to, ts)
    _on_the_grid(c, anchors, since=reset_at)
    assert {n for _, t, _, n in c.recorder.sent if t > lost_at} == {"a"}


def test_an_engine_that_starts_after_the_loss_follows_the_same_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new engine (a restarted pod) meets a registry that a rebuilt, with anchors and no
    last tick for b's entries: it learns the reset time from the registry, and waits for
    b too, instead of replaying those entries from their anchors."""
    c, a, b, anchors = _two_running()
    theirs = b.owned
    c.engines.remove(b)
    c.registry.lose_data()
    lost_at = c.clock.now_ms()
    c.advance(250, step_ms=250)  # a rebuilds
    reset_ms = c.registry.snapshot().reset_ms
    assert reset_ms == c.clock.now_ms()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        fresh = c.add("fresh", entries(len(NAMES)), misfire_policy=MisfirePolicy.ALL)
        c.advance(c.ttl_ms // 2, step_ms=250)
    assert [(d["node"], d["reset_ms"]) for d in decisions(caplog, "registry_rebuilt")] == [
        ("fresh", reset_ms)
    ]
    assert fresh.owned & theirs  # it owns some of b's entries, and waits for b with them
    assert not [t for n, t, *_ in c.recorder.sent if n in theirs and t > lost_at]
    c.engines.append(b)
    c.advance(3 * S, step_ms=250)
    assert b.owned and a.owned and fresh.owned
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, anchors)  # b restored its last ticks: every tick once, none lost
