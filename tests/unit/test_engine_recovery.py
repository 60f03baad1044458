"""A Redis data loss while engines run, on the in-memory registry (engine/recovery.py).

``MemoryRegistry.lose_data()`` is a Redis restart without persistence: every key gone,
a new epoch. The engines put back the anchors (the grid holds) and the last ticks of
the entries each owned (no tick replayed); an entry whose last tick nobody restores
waits one node TTL for its absent owner, then skips its ticks up to the loss.
Node TTL 3 s, entries every second, policy ``all`` (which would replay every tick from
the anchor if a last tick were forgotten).

The rebuild is paged (G8): with many owned entries, small pages and one page per pass,
it runs over many passes with a heartbeat and the due ticks between its pages, restores
every anchor and last tick, and nothing fires early, twice, or not at all meanwhile; a
second loss, or Redis unreachable, in the middle of it starts it again or resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import pytest

from celery_dcron import signals
from celery_dcron.engine import Engine, loading, recovery, view
from celery_dcron.entries import EntrySpec, EntryState, MisfirePolicy, Tick
from celery_dcron.exceptions import RegistryUnavailableError
from tests.enginekit import (
    MemoryCluster,
    Recorder,
    S,
    assert_each_tick_once,
    decisions,
    dynamic,
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


@pytest.mark.parametrize("static_page", [1000, 3])
def test_a_data_loss_with_every_owner_running_keeps_the_grid_and_fires_no_tick_twice(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, static_page: int
) -> None:
    """(static_page 3: the static schedule of 8 entries is written again in 3 passes.)"""
    monkeypatch.setattr(view, "STATIC_PAGE", static_page)
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


def test_redis_failing_right_after_the_loss_was_seen_does_not_skip_the_rebuild(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat that sees the loss succeeds, the anchors' write after it fails (on
    both engines): the next heartbeat sees no new loss, but the rebuild and the static
    sync still happen."""
    c, _, _, anchors = _two_running()
    restore = c.registry.restore_anchors
    failed: list[int] = []

    def flaky(anchors: dict[str, int], *, reset_ms: int) -> None:
        if len(failed) < 2:  # a's, then b's
            failed.append(reset_ms)
            raise RegistryUnavailableError("dcron: down for a moment")
        restore(anchors, reset_ms=reset_ms)

    monkeypatch.setattr(c.registry, "restore_anchors", flaky)
    c.registry.lose_data()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.advance(4 * S, step_ms=250)
    assert len(failed) == 2
    assert decisions(caplog, "state_lost") == []
    assert {n: st.anchor_ms for n, st in c.registry.states().items()} == anchors
    assert set(c.registry.entries()[0]) == set(NAMES)
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, anchors)


# -- the paged rebuild -----------------------------------------------------------------

MANY = 20_000
EVERY_S = 60  # phased: about a sixtieth of the entries is due each second
PAGE = 1_000
#: after the rebuild, each reload in one pass (their paging is test_engine_feed.py's)
ONE_PASS = 60.0


class TimedRecorder(Recorder):
    """Also records the cluster time of each publish."""

    def __init__(self, now: Callable[[], int]) -> None:
        super().__init__()
        self.now = now
        self.early: list[tuple[str, int, int]] = []

    def __call__(self, node: str) -> object:
        inner: Any = super().__call__(node)

        def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
            inner(spec, tick, tid)
            if tick.tick_ms > self.now():
                self.early.append((spec.name, tick.tick_ms, self.now()))

        return publish


class Calls:
    """The registry calls of one engine that matter here, in order: ``beat`` (a
    heartbeat, light or full), ``anchors`` / ``ticks`` (a page of the rebuild, with its
    size), ``claim`` (ticks fired)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, c: MemoryCluster) -> None:
        self.log: list[tuple[str, int]] = []
        reg = c.registry
        touch, heartbeat = reg.touch, reg.heartbeat
        restore, claim = reg.restore_anchors, reg.claim

        def beat(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kw: Any) -> Any:
                self.log.append(("beat", 0))
                return fn(*args, **kw)

            return call

        def restore_anchors(anchors: dict[str, int], *, reset_ms: int) -> None:
            self.log.append(("anchors", len(anchors)))
            restore(anchors, reset_ms=reset_ms)

        def claim_ticks(ticks: list[Tick], **kw: Any) -> Any:
            fired = any(t.fire for t in ticks)
            self.log.append(("claim" if fired else "ticks", len(ticks)))
            return claim(ticks, **kw)

        monkeypatch.setattr(reg, "touch", beat(touch))
        monkeypatch.setattr(reg, "heartbeat", beat(heartbeat))
        monkeypatch.setattr(reg, "restore_anchors", restore_anchors)
        monkeypatch.setattr(reg, "claim", claim_ticks)

    def pages(self) -> list[tuple[str, int]]:
        return [(kind, n) for kind, n in self.log if kind in ("anchors", "ticks")]


@contextmanager
def rewrite_on_reset(c: MemoryCluster, specs: list[EntrySpec]) -> Iterator[list[int]]:
    """A receiver of the ``reconcile`` signal that writes the dynamic entries again after
    a loss (as the Django app does); yields, per call, the anchors in the registry then."""
    seen: list[int] = []

    def receiver(sender: object, reason: str = "", **kw: object) -> None:
        if reason == "reset":
            seen.append(sum(1 for st in c.registry.states().values() if st.anchor_ms))
            c.registry.put_entries(specs)

    signals.reconcile.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.reconcile.disconnect(receiver)


def _many_running(
    monkeypatch: pytest.MonkeyPatch, n: int = MANY
) -> tuple[MemoryCluster, Engine, list[EntrySpec], dict[str, EntryState], Calls]:
    """Engine a alone, owning ``n`` dynamic entries (every minute) that have each fired
    once; the registry's states then; a recorder of the registry calls."""
    c = MemoryCluster()
    c.recorder = TimedRecorder(c.clock.now_ms)
    specs = dynamic(n, every_s=EVERY_S)
    c.registry.put_entries(specs)
    a = c.add("a", entries(4))
    c.step_all(3)
    c.advance(EVERY_S * S + S, step_ms=500)
    assert len(a.owned) == n + 4
    before = c.registry.states()
    assert all(st.last_tick_ms for st in before.values())
    monkeypatch.setattr(recovery, "ANCHOR_PAGE", PAGE)
    monkeypatch.setattr(recovery, "TICK_PAGE", PAGE)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)  # one page per pass
    return c, a, specs, before, Calls(monkeypatch, c)


def _assert_restored(c: MemoryCluster, before: dict[str, EntryState]) -> None:
    after = c.registry.states()
    assert {n: st.anchor_ms for n, st in after.items()} == {
        n: st.anchor_ms for n, st in before.items()
    }
    assert all((after[n].last_tick_ms or 0) >= (st.last_tick_ms or 0) for n, st in before.items())


def _assert_every_tick_once_on_time(c: MemoryCluster, before: dict[str, EntryState]) -> None:
    """No tick twice, none early, none missed: each entry's ticks from its last one before
    the loss to now are consecutive on its grid."""
    rec = c.recorder
    assert isinstance(rec, TimedRecorder) and rec.early == []
    assert_each_tick_once(rec)
    by_name: dict[str, list[int]] = {}
    for name, tick, _, _ in rec.sent:
        by_name.setdefault(name, []).append(tick)
    now = c.clock.now_ms()
    for name, st in before.items():
        every = EVERY_S * S if name.startswith("d") else S
        last = st.last_tick_ms or 0
        ts = sorted(t for t in by_name[name] if t >= last)
        assert ts[0] == last and ts[-1] > now - every, (name, st, ts[:3], ts[-3:])
        gaps = [(x, y) for x, y in pairwise(ts) if y - x != every]
        assert not gaps, (name, gaps)


def test_a_rebuild_of_many_owned_entries_goes_in_pages_between_heartbeats_and_ticks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, a, specs, before, calls = _many_running(monkeypatch)
    with rewrite_on_reset(c, specs) as anchors_at_reconcile:
        c.registry.lose_data()
        lost_at = c.clock.now_ms()
        passes = 0
        while passes == 0 or a.recovery.rebuilding:
            c.advance(250, step_ms=250)  # one pass, heartbeat first
            passes += 1
            assert passes < 200
            # entries known locally fire at their ticks meanwhile; the reload waits
            assert a.jobs.busy and a.recovery.settling
        rebuilt_at = c.clock.now_ms()
        monkeypatch.setattr(loading, "BUDGET_S", ONE_PASS)
        c.advance(c.ttl_ms + EVERY_S * S, step_ms=500)
    pages = calls.pages()
    assert pages[0] == ("anchors", 4)  # the static entries', before the static sync
    owned = pages[1:]
    assert [k for k, _ in owned] == ["anchors"] * (MANY // PAGE + 1) + ["ticks"] * (
        MANY // PAGE + 1
    )
    assert all(0 < n <= PAGE for _, n in owned)
    assert sum(n for k, n in owned if k == "ticks") == MANY + 4
    assert passes >= 2 * MANY // PAGE
    # a heartbeat between any two pages of owned entries (one page per pass, and each
    # pass beats first; the static entries' page went with the heartbeat of the loss)
    start = calls.log.index(pages[0]) + 1
    end = len(calls.log) - calls.log[::-1].index(pages[-1])
    kinds = [k for k, _ in calls.log[start:end] if k != "claim"]
    assert all(x == "beat" or y == "beat" for x, y in pairwise(kinds)), kinds
    # the owners' writes came back once every anchor was: onto the old anchors
    assert anchors_at_reconcile == [MANY + 4]
    _assert_restored(c, before)
    fired_meanwhile = [t for _, t, _, _ in c.recorder.sent if lost_at < t <= rebuilt_at]
    assert len(fired_meanwhile) > MANY * (rebuilt_at - lost_at) // (EVERY_S * S) // 2
    _assert_every_tick_once_on_time(c, before)


def test_a_second_loss_in_the_middle_of_a_rebuild_starts_it_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c, a, specs, before, calls = _many_running(monkeypatch, n=5_000)
    with rewrite_on_reset(c, specs) as anchors_at_reconcile, caplog.at_level(logging.INFO):
        c.registry.lose_data()
        c.advance(250 * 8, step_ms=250)  # 5,004 anchors at 1,000 a page, then 2 ticks pages
        first = a.recovery.rebuild
        assert first is not None and first.restored == 2 * PAGE
        c.registry.lose_data()
        c.advance(250, step_ms=250)
        second = a.recovery.rebuild
        assert second is not None and second is not first
        assert a._reset_at_ms == second.reset_ms == c.clock.now_ms()
        assert c.registry.snapshot().reset_ms == second.reset_ms  # the second loss's
        while a.recovery.rebuilding:
            c.advance(250, step_ms=250)
        monkeypatch.setattr(loading, "BUDGET_S", ONE_PASS)
        c.advance(c.ttl_ms + EVERY_S * S, step_ms=500)
    assert [d["node"] for d in decisions(caplog, "registry_reset")] == ["a", "a"]
    assert decisions(caplog, "state_lost") == []
    assert anchors_at_reconcile == [5_004, 5_004]  # each rebuild's, every anchor back
    assert sum(n for k, n in calls.pages() if k == "ticks") == 2 * PAGE + 5_004
    _assert_restored(c, before)
    _assert_every_tick_once_on_time(c, before)


def test_a_rebuild_page_that_fails_is_done_again(monkeypatch: pytest.MonkeyPatch) -> None:
    c, a, specs, before, _ = _many_running(monkeypatch, n=5_000)
    with rewrite_on_reset(c, specs):
        c.registry.lose_data()
        c.advance(250 * 8, step_ms=250)
        rb = a.recovery.rebuild
        assert rb is not None and 0 < rb.restored < 5_004
        c.registry.available = False  # Redis unreachable: nothing claimed, no page
        c.advance(c.ttl_ms // 2, step_ms=250)
        assert a.recovery.rebuild is rb
        c.registry.available = True
        while a.recovery.rebuilding:
            c.advance(250, step_ms=250)
        assert a.recovery.rebuild is None and rb.restored == 5_004
        monkeypatch.setattr(loading, "BUDGET_S", ONE_PASS)
        c.advance(c.ttl_ms + EVERY_S * S, step_ms=500)
    _assert_restored(c, before)
    assert_each_tick_once(c.recorder)


def test_the_settling_covers_the_whole_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the heartbeat that saw the loss, an entry whose last tick is unknown is put
    off, however long the rebuild takes; the settling ends one node TTL after its last
    page, not before."""
    monkeypatch.setattr(recovery, "ANCHOR_PAGE", 1)
    monkeypatch.setattr(recovery, "TICK_PAGE", 1)
    c = MemoryCluster()
    a = c.add("a", [])
    c.step_all(2)
    rec = a.recovery
    known = {f"e{i}": EntryState(anchor_ms=1, last_tick_ms=2) for i in range(3)}
    rec.start_rebuild(known)
    start = c.clock.now_ms()
    assert rec.rebuilding and rec.settling and rec.reset_at_ms == start
    unknown = EntryState(anchor_ms=1)
    for _ in range(6):  # three pages of anchors, three of last ticks
        c.clock.advance(10 * c.ttl_ms)  # a long stall between pages
        now = c.clock.now_ms()
        assert not rec.settled(now)
        until = rec.put_off_ms(unknown, now)
        assert until is not None and until > now
        assert rec.put_off_ms(known["e0"], now) is None  # known: fires at its next tick
        rec.run(budget_s=0.0)
    assert not rec.rebuilding
    end = c.clock.now_ms()
    assert rec.put_off_ms(unknown, end + c.ttl_ms - 1) == end + c.ttl_ms
    assert not rec.settled(end + c.ttl_ms - 1)
    assert rec.settled(end + c.ttl_ms)


def test_a_tick_whose_publish_failed_as_redis_lost_its_data_is_still_published() -> None:
    """The broker fails (it is the Redis that goes away): the ticks claimed meanwhile wait
    to be published again. Redis then comes back without its data: their claims went
    with it, and the last ticks their owners restore cover them. Each owner claims them
    again first, and publishes them with their ids (G2; policy all: no tick missing)."""
    c, _, _, anchors = _two_running()
    c.recorder.fail = True
    c.advance(S, step_ms=250)
    failed = {(p.name, p.tick_ms) for p in c.registry.pending()}
    assert failed
    c.registry.lose_data()
    c.recorder.fail = False
    c.advance(4 * S, step_ms=250)
    sent = set(c.recorder.counts())
    assert failed <= sent, sorted(failed - sent)
    assert_each_tick_once(c.recorder)
    _on_the_grid(c, anchors)
