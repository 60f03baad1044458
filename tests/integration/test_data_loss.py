"""Redis loses its data while instances run: the ones that reconnect late must not replay.

Both tests come from the chaos suite (tests/chaos/test_registry_loss.py).

1. An instance noticed a data loss only when the membership or entries version it read
   was *lower* than the last one it had seen. After a recent loss those versions are
   small, and instances that reconnect first (joins, status changes, the static sync)
   push them back up before a slower instance reconnects: that one took the rebuilt
   registry for the one it knew, never restored its entries' last ticks, and replayed
   ticks it had already sent (G1). Fixed: the registry's ``epoch`` (set once per life
   of the data) changes with a loss, whatever the versions do.
2. A *new* instance that starts after a loss and before the previous owners reconnect
   saw entries with an anchor (restored by the others) and no last tick, and replayed
   their ticks from the anchor, ticks the old owner had already sent (G1). Fixed: the
   first instance that rebuilds the registry records the reset time in it, and a new
   instance applies the same rule as those that saw the loss.

And the rebuild on a real Redis, in pages (G8): with a page per pass of the loop, the
instance heartbeats between pages (it stays alive), and every anchor and last tick is
back at the end.
"""

from __future__ import annotations

from itertools import pairwise

import pytest

from celery_dcron import signals
from celery_dcron.clock import ManualClock
from celery_dcron.engine import Engine, loading, recovery
from celery_dcron.entries import EntrySpec, MisfirePolicy, NodeStatus
from celery_dcron.enums import EntrySource
from tests.integration.test_engine import (
    Cluster,
    Recorder,
    S,
    _server_ms,
    assert_each_tick_once,
    entries,
    ticks_of,
)
from tests.servers import RedisServer

ALL = MisfirePolicy.ALL


def two_instances(server: RedisServer) -> tuple[Cluster, Engine, Engine, list[EntrySpec]]:
    """Instances a and b, both firing some of 6 entries every second."""
    c = Cluster(server.url, ManualClock(start_ms=_server_ms(server.url)), Recorder())
    static = entries(6)
    a = c.add("a", static, misfire_policy=ALL)
    b = c.add("b", static, misfire_policy=ALL)
    c.step_all(3)
    c.align()
    c.advance(2 * S)
    assert {n for _, _, _, n in c.recorder.sent} == {"a", "b"}, "both must own entries"
    return c, a, b, static


def lose_data(server: RedisServer, *engines: Engine) -> None:
    """SIGKILL Redis (each engine tries a step meanwhile), restart it empty."""
    server.kill()
    for e in engines:
        e._next_beat = 0.0
        e.step()
    server.restart()


def assert_every_tick_once(c: Cluster, static: list[EntrySpec]) -> None:
    assert_each_tick_once(c.recorder)
    for spec in static:
        ts = ticks_of(c.recorder, spec.name)
        assert all(y - x == S for x, y in pairwise(ts)), (spec.name, ts)


def test_a_data_loss_is_noticed_after_the_others_pushed_the_versions_back_up(
    redis_server: RedisServer,
) -> None:
    c, a, b, static = two_instances(redis_server)
    for loss in (1, 2):
        lose_data(redis_server, a, b)
        b._next_beat = 0.0
        b.step()  # b reconnects first and rebuilds
        # instances join and leave meanwhile: the membership version climbs past a's
        for i in range(5):
            joiner = c.add(f"j{loss}-{i}", static, misfire_policy=ALL)
            joiner.membership.beat()
            joiner.membership.set_status(NodeStatus.WORKING)
            joiner.membership.beat()
            joiner.membership.leave()
            c.engines.remove(joiner)
        c.step_all(2)
        assert a._reset_at_ms is not None, f"a did not notice data loss #{loss}"
        c.advance(3 * S)
    assert_every_tick_once(c, static)


def test_a_new_instance_after_a_data_loss_does_not_replay_the_ticks_of_a_late_owner(
    redis_server: RedisServer,
) -> None:
    c, a, b, static = two_instances(redis_server)
    lose_data(redis_server, a, b)
    b._next_beat = 0.0
    b.step()  # b reconnects, restores the anchors of every entry and the last ticks of its own
    fresh = c.add("fresh", static, misfire_policy=ALL)  # e.g. a restarted pod
    c.engines.remove(a)  # a is still backing off
    c.step_all(2)
    c.advance(2 * S)
    c.engines.append(a)
    c.advance(2 * S)
    assert fresh.owned
    assert_every_tick_once(c, static)


def test_a_paged_rebuild_restores_everything_while_the_instance_heartbeats(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 3_000
    dynamic = [
        spec.with_changes(name=f"d{spec.name}", source=EntrySource.DYNAMIC) for spec in entries(n)
    ]
    c = Cluster(redis_server.url, ManualClock(start_ms=_server_ms(redis_server.url)), Recorder())
    static = entries(4)
    a = c.add("a", static, misfire_policy=ALL)
    a.registry.put_entries(dynamic)
    c.step_all(5)
    c.advance(2 * S)
    before = a.registry.states()
    assert len(before) == n + 4 and all(st.last_tick_ms for st in before.values())

    def rewrite(sender: object, reason: str = "", **kw: object) -> None:
        if reason == "reset":  # as the Django app does: the dynamic entries, written again
            a.registry.put_entries(dynamic)

    monkeypatch.setattr(recovery, "ANCHOR_PAGE", 500)
    monkeypatch.setattr(recovery, "TICK_PAGE", 500)
    signals.reconcile.connect(rewrite, weak=False)
    try:
        lose_data(redis_server, a)
        monkeypatch.setattr(loading, "BUDGET_S", 0.0)  # one page per pass
        passes = 0
        while passes == 0 or a.recovery.rebuilding:
            c.advance(100)
            passes += 1
            assert "a" in {node.id for node in a.registry.nodes()[0]}  # never expired
        assert passes >= 2 * n // 500
        monkeypatch.setattr(loading, "BUDGET_S", 0.05)
        c.advance(2 * S)
    finally:
        signals.reconcile.disconnect(rewrite)
    after = a.registry.states()
    assert {k: st.anchor_ms for k, st in after.items()} == {
        k: st.anchor_ms for k, st in before.items()
    }
    assert all((after[k].last_tick_ms or 0) >= (st.last_tick_ms or 0) for k, st in before.items())
    assert_every_tick_once(c, [*static, *dynamic])
