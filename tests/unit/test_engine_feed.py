"""Owned-only state and the change feed (G8), on the in-memory registry.

Each engine sees the registry through a :class:`Spy` that counts the entry definitions it
reads: a change is read by the entry's owner alone, one entry at a time; a membership
change reads only the entries that moved; a full reload happens at start and after a gap
in the feed, never for a change, and is paged so that the loop runs between its pages.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from celery_dcron import signals
from celery_dcron.engine import Engine, loading, timeline, view
from celery_dcron.entries import EntrySpec, EntryState, NodeStatus, Tick
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import RegistryUnavailableError
from celery_dcron.planning import next_run_ms
from celery_dcron.registry.memory import MemoryRegistry
from celery_dcron.schedules import AtSchedule, CronSchedule, IntervalSchedule
from tests.enginekit import (
    T0,
    MemoryCluster,
    S,
    assert_each_tick_once,
    decisions,
    dynamic,
    entries,
    ticks_of,
)


class Spy:
    """One engine's registry: the shared memory registry, counting what the engine reads."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner
        self.read: list[str] = []
        self.scans = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_entries(self, names: Iterable[str]) -> Any:
        names = list(names)
        self.read.extend(names)
        return self.inner.get_entries(names)

    def load(self, names: Sequence[str]) -> Any:
        self.read.extend(names)
        return self.inner.load(names)

    def scan_entries(self, cursor: int, count: int, want: Callable[[str], bool]) -> Any:
        self.scans += 1
        return self.inner.scan_entries(cursor, count, want)

    def reset(self, *args: Any) -> Any:  # the registry's reset(name), not the spy's
        return self.inner.reset(*args)

    def clear(self) -> None:
        self.read, self.scans = [], 0


def start(c: MemoryCluster, ids: str, n: int) -> tuple[list[Engine], dict[str, Spy]]:
    """``n`` dynamic entries, then one engine per id in ``ids``, each behind a spy."""
    c.registry.put_entries(dynamic(n))
    engines = [c.add(node_id, []) for node_id in ids]
    spies = {}
    for e in engines:
        spies[e.node_id] = spy = Spy(c.registry)
        e.view.registry = spy  # type: ignore[assignment]
    c.step_all(6)
    for spy in spies.values():
        spy.clear()
    return engines, spies


def owner_of(engines: list[Engine], name: str) -> Engine:
    (owner,) = [e for e in engines if name in e.owned]
    return owner


def test_each_instance_keeps_every_name_and_only_its_own_definitions() -> None:
    c = MemoryCluster()
    engines, _ = start(c, "abc", 600)
    names = {s.name for s in dynamic(600)}
    owned = [e.owned for e in engines]
    assert set().union(*owned) == names and sum(map(len, owned)) == 600  # each once
    for e in engines:
        assert 100 < len(e.owned) < 350  # about a third each
        assert e.view.names == names
        assert set(e.view.entries) == e.owned and set(e.view.states) <= e.owned


def test_a_change_is_read_by_its_owner_alone_one_entry_at_a_time() -> None:
    c = MemoryCluster()
    engines, spies = start(c, "abc", 600)
    reg = c.registry
    name = "d00007"
    owner = owner_of(engines, name)
    old = reg.get_entry(name)
    assert old is not None
    reg.put_entry(
        old.with_changes(schedule=IntervalSchedule(every_ms=2 * S)), expected_version=old.version
    )
    c.step_all(2)
    assert {e.node_id: spies[e.node_id].read for e in engines} == {
        e.node_id: [name] if e is owner else [] for e in engines
    }
    assert owner.view.entries[name].schedule == IntervalSchedule(every_ms=2 * S)

    # An add and a removal: every instance learns the name, only the owner reads it.
    for spy in spies.values():
        spy.clear()
    reg.put_entry(dynamic(1, prefix="new")[0], expected_version=None)
    c.step_all(2)
    new_owner = owner_of(engines, "new00000")
    assert sorted(spy.read for spy in spies.values()) == [[], [], ["new00000"]]
    assert all("new00000" in e.view.names for e in engines)
    reg.remove_entry("new00000", tombstone=False)
    c.step_all(2)
    assert all("new00000" not in e.view.names for e in engines)
    assert "new00000" not in new_owner.view.entries
    assert not any(spy.scans for spy in spies.values())  # no full reload for any of it


def test_a_paused_entry_leaves_its_owners_timeline_and_comes_back_on_resume() -> None:
    c = MemoryCluster()
    reg = c.registry
    reg.put_entries(dynamic(30, every_s=1))
    engines = [c.add(node_id, []) for node_id in "ab"]
    c.step_all(4)
    c.align()
    c.advance(2 * S, step_ms=250)
    name = "d00003"
    reg.set_enabled(name, False)
    paused_at = c.clock.now_ms()
    c.advance(3 * S, step_ms=250)
    assert not [t for t in ticks_of(c.recorder, name) if t > paused_at]
    assert owner_of(engines, name).view.entries[name].enabled is False
    reg.set_enabled(name, True)
    resumed_at = c.clock.now_ms()
    c.advance(3 * S, step_ms=250)
    assert [t for t in ticks_of(c.recorder, name) if t > resumed_at]
    assert_each_tick_once(c.recorder)


def test_a_feed_gap_makes_each_instance_reload_once(caplog: pytest.LogCaptureFixture) -> None:
    c = MemoryCluster()
    engines, spies = start(c, "ab", 300)
    c.registry.trim_feed(0)
    c.registry.put_entry(dynamic(1, prefix="late")[0], expected_version=None)
    c.registry.trim_feed(0)  # the record of the add is lost too
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.step_all(4)
    assert sorted(d["node"] for d in decisions(caplog, "feed_gap")) == ["a", "b"]
    assert sorted((d["node"], d["reason"]) for d in decisions(caplog, "reload")) == [
        ("a", "feed gap"), ("b", "feed gap"),
    ]  # fmt: skip
    assert all(spy.scans for spy in spies.values())
    assert all("late00000" in e.view.names for e in engines)  # the reload found it
    assert "late00000" in owner_of(engines, "late00000").view.entries
    # And the feed is followed again afterwards, without another reload.
    c.registry.put_entry(dynamic(1, prefix="later")[0], expected_version=None)
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.step_all(2)
    assert len(decisions(caplog, "reload")) == 2
    assert all("later00000" in e.view.names for e in engines)


def test_a_membership_change_reads_only_the_entries_that_moved() -> None:
    c = MemoryCluster()
    engines, spies = start(c, "abc", 900)
    a, b, dead = engines
    moved = set(dead.owned)
    c.engines.remove(dead)  # a crash: no leave, its heartbeat runs out
    c.advance(c.ttl_ms + S, step_ms=250)
    read = spies["a"].read + spies["b"].read
    assert sorted(read) == sorted(moved)  # each moved entry read once, nothing else
    assert a.owned | b.owned == {s.name for s in dynamic(900)}
    assert not spies["a"].scans and not spies["b"].scans


def spread(n: int, every_s: Callable[[int], int]) -> dict[str, EntrySpec]:
    """``n`` dynamic entries ``e00000``..., entry ``i`` due every ``every_s(i)`` seconds."""
    specs = [
        EntrySpec(
            name=f"e{i:05d}", task="t", source=EntrySource.DYNAMIC,
            schedule=IntervalSchedule(every_ms=every_s(i) * S),
        )
        for i in range(n)
    ]  # fmt: skip
    return {s.name: s for s in specs}


def without_due_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's due index is incomplete (entries written before it existed): a large
    reassignment falls back on last ticks and due hints."""
    monkeypatch.setattr(MemoryRegistry, "due_index_complete", lambda self: False)


@pytest.mark.parametrize("index", [True, False], ids=["due-index", "hints"])
def test_a_large_reassignment_loads_the_entries_that_ran_last_first(
    monkeypatch: pytest.MonkeyPatch, index: bool
) -> None:
    """A crashed node's entries are read in pages, the frequent ones first (they are due
    soon: by the due index, or, without it, found as the ones that fired in the last
    minute): they are back on a timeline before the rest is read."""
    if not index:
        without_due_index(monkeypatch)
    monkeypatch.setattr(loading, "LOAD_PAGE", 50)
    monkeypatch.setattr(loading, "STATE_PAGE", 100)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    c.registry.put_entries(dynamic(30, every_s=1, prefix="fast"))
    engines, spies = start(c, "abc", 900)
    c.align()
    c.advance(3 * S, step_ms=100)  # the fast entries fire; the hourly ones never did
    dead = engines[2]
    fast = {n for n in dead.owned if n.startswith("fast")}
    assert fast and len(dead.owned) > 50
    for spy in spies.values():
        spy.clear()
    c.engines.remove(dead)
    c.advance(c.ttl_ms + 2 * S, step_ms=100)
    for node_id in "ab":
        read = spies[node_id].read
        mine = [n for n in read if n.startswith("fast")]
        assert read[: len(mine)] == mine, read[:10]  # every fast entry before any other
    assert fast <= engines[0].owned | engines[1].owned
    assert_each_tick_once(c.recorder)


def test_without_the_due_index_a_large_reassignment_decodes_the_rest_earliest_due_first(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a complete due index, past the frequent ones, a crashed node's entries
    are read in the order they are due (estimated from hints: each one's schedule text
    and last tick): whatever comes due while the rest is read is on a timeline first."""
    without_due_index(monkeypatch)
    monkeypatch.setattr(loading, "LOAD_PAGE", 50)
    monkeypatch.setattr(loading, "STATE_PAGE", 100)
    monkeypatch.setattr(loading, "HINT_PAGE", 100)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    specs = spread(900, lambda i: 600 + (i * 7919) % 900)
    c.registry.put_entries(list(specs.values()))
    engines = [c.add(node_id, []) for node_id in "abc"]
    c.advance(3 * S, step_ms=100)  # each loads its share, a page per pass
    decoded: dict[str, list[str]] = {"a": [], "b": []}
    for engine in engines[:2]:
        adopt, into = engine.view.adopt, decoded[engine.node_id]

        def spy(names: Any, loaded: Any, *, notify: bool, adopt: Any = adopt, into: Any = into):
            into.extend(n for n in names if n in loaded.specs)
            adopt(names, loaded, notify=notify)

        monkeypatch.setattr(engine.view, "adopt", spy)
    dead = engines[2]
    moved = set(dead.owned)
    states = c.registry.states(moved)
    caplog.set_level(logging.INFO, logger="celery_dcron")
    due = {n: next_run_ms(specs[n], states[n]) or 0 for n in moved}
    soon_ms = c.clock.now_ms() + c.ttl_ms + 2 * S + loading.SOON_MS  # decoded as found
    c.engines.remove(dead)
    c.advance(c.ttl_ms + 2 * S, step_ms=100)
    assert sorted(decoded["a"] + decoded["b"]) == sorted(moved)
    for names in decoded.values():
        later = [due[n] // loading.DUE_BUCKET_MS for n in names if due[n] > soon_ms]
        assert len(later) > 50  # more than a page: the large reassignment
        assert later == sorted(later)  # by buckets of their next tick
    assert engines[0].owned | engines[1].owned == set(specs)
    told = {
        r.dcron_node: r for r in caplog.records if getattr(r, "dcron_event", "") == "moved_here"
    }
    assert sorted(told) == ["a", "b"]
    assert {n: r.dcron_count for n, r in told.items()} == {n: len(d) for n, d in decoded.items()}
    assert all(0 <= r.dcron_hot_s <= r.dcron_hints_s <= r.dcron_seconds for r in told.values())
    assert {r.dcron_by for r in told.values()} == {"hints"}


def test_a_reassignment_under_way_is_not_started_again_for_the_same_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node that takes a crashed one's entries hears of that membership change twice (its
    own expiry of the dead node is published to it too): the reassignment under way goes
    on instead of starting over, as long as it places on the same nodes."""
    monkeypatch.setattr(loading, "PLACE_PAGE", 100)
    c = MemoryCluster()
    (a, _), _ = start(c, "ab", 900)
    a.jobs.reassign()
    job = a.jobs._job
    assert job is not None and a.jobs.kind == "reassign"
    a.jobs.run(budget_s=0.0)
    a.jobs.reassign()
    assert a.jobs._job is job
    a.view.nodes = a.view.nodes[:1]  # as if it had placed on other nodes: start over
    a.jobs.reassign()
    assert a.jobs._job is not job
    while not a.jobs.run(budget_s=0.0):
        pass
    assert a.owned | c.engines[1].owned == {s.name for s in dynamic(900)}


def test_the_due_index_holds_each_owned_entrys_next_tick() -> None:
    """Each owner writes the next tick it computed to the registry's due index: once it
    has read its entries, and after each fire; a change to an entry sets 0 (unknown)
    until its owner computes the new one; a removed entry leaves the index."""
    c = MemoryCluster()
    specs = dynamic(40, every_s=7) + dynamic(40, every_s=3600, prefix="h")
    c.registry.put_entries(specs)
    anchors = {n: st.anchor_ms or 0 for n, st in c.registry.states().items()}
    every = {s.name: s.schedule.every_ms for s in specs}  # type: ignore[attr-defined]
    # as written: the first tick of each (a new interval entry), before any owner
    assert dict(c.registry.due_range(None, 2**62)) == {n: anchors[n] + every[n] for n in every}
    engines = [c.add(node_id, []) for node_id in "ab"]
    c.advance(20 * S, step_ms=100)  # the 7 s entries fire twice or more

    def index() -> dict[str, int]:
        return dict(c.registry.due_range(None, 2**62))

    def expected() -> dict[str, int]:
        return {n: due for e in engines for n, due in e.timeline._next.items()}

    assert index() == expected() and len(index()) == 80
    assert all(due > c.clock.now_ms() for due in index().values())
    assert c.registry.due_index_complete()
    name = specs[0].name
    spec = c.registry.get_entry(name)
    assert spec is not None
    c.registry.put_entry(spec.with_changes(schedule=IntervalSchedule(every_ms=11 * S)),
                         expected_version=spec.version)  # fmt: skip
    assert index()[name] == 0
    c.step_all(2)
    assert index() == expected() and index()[name] > c.clock.now_ms()
    c.registry.remove_entry(name, tombstone=False)
    c.step_all(2)
    assert name not in index() and len(index()) == 79


def names_written_to_the_index(c: MemoryCluster, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names each ``set_due`` call writes to the due index from now on, in order."""
    written: list[str] = []
    set_due = c.registry.set_due

    def spy(due: Any) -> None:
        written.extend(due)
        set_due(due)

    monkeypatch.setattr(c.registry, "set_due", spy)
    return written


def test_a_bulk_add_of_cron_entries_needs_no_owner_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk write gives each new cron and one-off entry its first tick in the due index
    (computed once per schedule from the registry's time), as it gives interval entries
    theirs: the owners that read them find the tick they compute there, and write none
    (1,000,000 cron entries used to cost their owners ~35 s of paced writes)."""
    c = MemoryCluster()
    written = names_written_to_the_index(c, monkeypatch)
    crons = [
        EntrySpec(name=f"c{i}", task="t", source=EntrySource.DYNAMIC,
                  schedule=CronSchedule(expr=f"{i % 7} {i % 5} * * *"))
        for i in range(60)
    ]  # fmt: skip
    once = EntrySpec(name="once", task="t", source=EntrySource.DYNAMIC,
                     schedule=AtSchedule(at_ms=c.clock.now_ms() + 3600 * S))  # fmt: skip
    c.registry.put_entries([*crons, once])
    engines = [c.add(node_id, []) for node_id in "ab"]
    c.step_all(20)
    assert sum(len(e.owned) for e in engines) == 61
    expected = {n: due for e in engines for n, due in e.timeline._next.items()}
    assert dict(c.registry.due_range(None, 2**62)) == expected and written == []


def test_a_reload_or_a_move_writes_only_the_due_times_that_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The due times are read with the entries: an owner that reads entries whose time in
    the index is already the next tick it computes writes none of them (a restart, or a
    dead node's entries taken over, cost no writes but for the entries that fired)."""
    c = MemoryCluster()
    engines, _ = start(c, "abc", 900)  # hourly: nothing fires
    c.step_all(10)
    assert sorted(dict(c.registry.due_range(None, 2**62)).values())[0] > c.clock.now_ms()
    written = names_written_to_the_index(c, monkeypatch)
    for e in engines:
        e.jobs.reload("test")
    c.step_all(40)
    assert not any(e.jobs.busy for e in engines) and written == []
    c.engines.remove(engines[2])
    since = c.clock.now_ms()
    c.advance(c.ttl_ms + 2 * S, step_ms=100)
    assert len(engines[0].owned) + len(engines[1].owned) == 900
    fired = {n for n, t, _, _ in c.recorder.sent if t >= since}
    assert set(written) == fired  # only the entries that fired meanwhile: a new next tick


def test_a_finished_entry_goes_last_in_the_due_index() -> None:
    """An entry that never runs again is written as due last (NEVER_MS): a node that takes
    it over reads it after every entry that can still come due."""
    c = MemoryCluster()
    done = EntrySpec(
        name="once", task="t", source=EntrySource.DYNAMIC,
        schedule=IntervalSchedule(every_ms=2 * S), max_runs=1,
    )  # fmt: skip
    c.registry.put_entries([done, *dynamic(5, every_s=60)])
    c.add("a", [])
    c.advance(6 * S, step_ms=100)
    assert ticks_of(c.recorder, "once")  # ran its one run
    assert dict(c.registry.due_range(None, 2**62))["once"] == timeline.NEVER_MS


@pytest.mark.parametrize("seed", range(3))
def test_by_the_due_index_each_moved_entry_is_read_before_it_is_due(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """A crashed node's entries are read by the due index: those due soon first, then the
    rest, looking at the index again before each page. Reading them all takes far longer
    here than the time to their next ticks (a page of 5 per 100 ms pass), yet each entry
    is on a timeline before it is due, and none fires late."""
    monkeypatch.setattr(loading, "LOAD_PAGE", 5)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    monkeypatch.setattr(loading, "SOON_MS", 1000)
    monkeypatch.setattr(loading, "INDEX_PAGE", 7)  # the index read in many pages
    c = MemoryCluster()
    specs = spread(900, lambda i: 20 + (i * 7 + seed) % 60)
    c.registry.put_entries(list(specs.values()))
    engines = [c.add(node_id, []) for node_id in "abc"]
    c.advance(90 * S, step_ms=100)
    read_at: dict[str, int] = {}
    reads: Counter[str] = Counter()
    for engine in engines[:2]:
        adopt = engine.view.adopt

        def spy(names: Any, loaded: Any, *, notify: bool, adopt: Any = adopt) -> None:
            for n in names:
                read_at.setdefault(n, c.clock.now_ms())
                reads[n] += 1
            adopt(names, loaded, notify=notify)

        monkeypatch.setattr(engine.view, "adopt", spy)
    dead = engines[2]
    moved = set(dead.owned)
    assert len(moved) > 10 * loading.LOAD_PAGE
    due = {n: next_run_ms(specs[n], st) or 0 for n, st in c.registry.states(moved).items()}
    caplog.set_level(logging.INFO, logger="celery_dcron")
    c.engines.remove(dead)
    c.advance(c.ttl_ms + 30 * S, step_ms=100)
    assert set(read_at) >= moved and max(reads[n] for n in moved) == 1  # each read once
    first_read = min(read_at[n] for n in moved)
    slow = max(read_at[n] for n in moved) - first_read
    assert slow > 3 * S  # reading them all took many of their intervals' worth
    # (those due within SOON_MS of the first read are read first, in the order they are due)
    later = [n for n in moved if due[n] > first_read + loading.SOON_MS]
    assert len(later) > len(moved) / 2
    late = {n: read_at[n] - due[n] for n in later if read_at[n] > due[n]}
    assert not late
    told = [r for r in caplog.records if getattr(r, "dcron_event", "") == "moved_here"]
    assert {r.dcron_by for r in told} == {"index"} and len(told) == 2
    assert_each_tick_once(c.recorder)
    for n in moved:  # and each one's next tick was sent, as itself (no catch-up)
        if first_read < due[n] <= c.clock.now_ms():
            assert due[n] in ticks_of(c.recorder, n), n


def test_a_reload_keeps_the_timeline_whole_until_it_swaps_even_when_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next ticks of a reload are computed aside and swapped in at once: at no page
    of a reload (nor of one dropped for another: a reset, a second gap) does an owned
    entry leave the timeline."""
    for page in ("SCAN_PAGE", "LOAD_PAGE", "PLACE_PAGE"):
        monkeypatch.setattr(loading, page, 100)
    c = MemoryCluster()
    c.registry.put_entries(dynamic(3000))
    a = c.add("a", [])
    c.step_all(80)
    assert a.membership.status is NodeStatus.WORKING and len(a.view.timeline) == 3000
    pages = 0
    for reason in ("gap", "reset"):  # the second one drops the first one part-way
        a.jobs.reload(reason)
        for _ in range(75 if reason == "gap" else 1000):
            if a.jobs.run(budget_s=0.0):
                break
            pages += 1
            assert len(a.view.timeline) == 3000
    assert not a.jobs.busy and pages > 75 and len(a.view.timeline) == 3000


def test_a_reload_tells_of_finished_entries_once_it_owns_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry found to have run for the last time is told of after the swap, when the
    instance owns it (its after-run action needs it), even when the reload yields
    between its pages."""
    monkeypatch.setattr(loading, "PLACE_PAGE", 2)
    c = MemoryCluster()
    done = EntrySpec(
        name="done",
        task="t",
        schedule=IntervalSchedule(every_ms=S),
        max_runs=1,
        source=EntrySource.DYNAMIC,
    )  # fmt: skip (no after-run action: it stays, and each reload finds it finished)
    c.registry.put_entries([*dynamic(10), done])
    c.registry.claim([Tick(name="done", tick_ms=c.clock.now_ms())], node_id="x", lock_ttl_ms=S)
    a = c.add("a", [])
    c.step_all(10)
    told: list[bool] = []
    real = a.view.timeline.on_finished

    def finished(spec: EntrySpec, state: EntryState) -> None:
        told.append(spec.name in a.view.owned)
        real(spec, state)

    a.view.timeline.on_finished = finished
    a.view.drop("done", removed=False)  # owned anew by the reload (as after a gap)
    a.jobs.reload("gap")
    while not a.jobs.run(budget_s=0.0):
        pass
    assert told == [True]


def test_a_starting_instance_loads_in_pages_while_the_others_fire_and_then_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One page of 100 entries per pass of the loop: the heartbeat and due ticks go out
    between pages. The new instance says it works only once its share is loaded."""
    monkeypatch.setattr(loading, "SCAN_PAGE", 100)
    monkeypatch.setattr(loading, "LOAD_PAGE", 100)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    c.registry.put_entries(dynamic(3000) + dynamic(5, every_s=1, prefix="fast"))
    a = c.add("a", [])
    c.step_all(120)
    assert a.membership.status is NodeStatus.WORKING and len(a.owned) == 3005
    c.align()
    b = c.add("b", [])
    steps = 0
    while b.membership.status is not NodeStatus.WORKING:
        c.advance(100, step_ms=100)  # one pass of each loop
        steps += 1
        assert steps < 200
        live = {n.id: n.status for n in c.registry.nodes()[0]}
        assert live.get("b") in (NodeStatus.STARTING, NodeStatus.WORKING)  # never dead
    assert steps >= 30  # 3,005 names at 100 a page: the reload was paged
    c.advance(2 * S, step_ms=100)
    assert 1000 < len(b.owned) < 2000 and a.owned.isdisjoint(b.owned)
    for i in range(5):  # the fast entries kept firing every second while b loaded
        ts = ticks_of(c.recorder, f"fast{i:05d}")
        assert len(ts) >= steps // 10
    assert_each_tick_once(c.recorder)


def test_a_beat_process_keeps_what_a_load_read_out_of_the_full_gc_scans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full collection of a process holding many entries holds the loop (0.2-1 s at
    1,000,000 entries): the beat moves what each paged job loaded out of the cyclic GC's
    scans once the job is over, and runs no collection inside a slice of a job; an engine
    in someone else's process does neither."""
    import gc

    c = MemoryCluster()
    c.registry.put_entries(dynamic(50))
    plain, beat = c.add("a", []), c.add("b", [])
    beat.jobs.freeze_gc = True
    collecting: list[bool] = []  # at each page of their reloads (one page each)
    scan = c.registry.scan_entries

    def spy(*args: Any) -> Any:
        collecting.append(gc.isenabled())
        return scan(*args)

    monkeypatch.setattr(c.registry, "scan_entries", spy)
    gc.unfreeze()
    try:
        plain.step()
        while plain.jobs.busy:
            plain.step()
        assert gc.get_freeze_count() == 0
        beat.step()
        while beat.jobs.busy:
            beat.step()
        assert beat.owned and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    # and the collector waits for the end of each of the beat's slices, not longer
    assert collecting == [True, False] and gc.isenabled()


def test_the_timeline_writes_finished_and_unknown_entries_it_still_holds_and_no_others() -> None:
    """What the due index is told of an entry off the timeline: NEVER_MS for one found
    finished, 0 for one that cannot run here and has no time there yet (so that the index
    holds every entry), nothing for one dropped since (it moved away: its new owner
    writes it) or for one that had a time already."""
    tl = timeline.Timeline(on_finished=lambda spec, state: None)
    every = IntervalSchedule(every_ms=S)
    done = EntrySpec(name="done", task="t", schedule=every, max_runs=1)
    ran = EntryState(anchor_ms=T0, last_tick_ms=T0 + S, run_count=1)
    tl.schedule(done, ran)
    tl.discard("off", unindexed=True)
    tl.discard("had")
    assert tl.take_dirty(10) == {"done": timeline.NEVER_MS, "off": 0}
    tl.schedule(done, ran)
    tl.discard("done")  # dropped before its time was written
    tl.discard("off", unindexed=True)
    tl.schedule(EntrySpec(name="off", task="t", schedule=every), EntryState(anchor_ms=T0))
    assert tl.take_dirty(10) == {"off": T0 + S} and tl.dirty == 0


def test_no_due_time_is_written_while_a_job_runs_or_the_feed_is_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a reload or a reassignment runs the feed waits, so a definition may have
    changed since its owner read it: the next ticks computed meanwhile go to the index
    only once the job is over and the feed applied (as the timeline is then)."""
    monkeypatch.setattr(loading, "LOAD_PAGE", 50)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    c.registry.put_entries(dynamic(40, every_s=1) + dynamic(400))
    (a,) = [c.add("a", [])]
    c.advance(3 * S, step_ms=100)
    assert not a.jobs.busy
    written: list[bool] = []
    set_due = c.registry.set_due

    def spy(due: Any) -> None:
        written.append(a.jobs.busy)
        set_due(due)

    monkeypatch.setattr(c.registry, "set_due", spy)
    a.jobs.reload("test")
    c.advance(2 * S, step_ms=100)  # the 1 s entries fire while it reloads, page by page
    assert written and not any(written)
    assert dict(c.registry.due_range(None, 2**62)) == dict(a.timeline._next)


def test_a_large_beat_schedule_is_synced_a_page_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat_schedule of more than one page is written a page (one script call) per
    pass of the loop, so that no pass holds the loop or Redis for long. The pages before
    the last remove nothing; the last removes the static entries no longer listed. The
    reload follows, and the adapters' reconcile is told once, after the last page."""
    monkeypatch.setattr(view, "STATIC_PAGE", 100)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)  # one page a pass
    c = MemoryCluster()
    gone = [s.with_changes(name=f"gone{i}") for i, s in enumerate(entries(3, every_s=60))]
    c.registry.sync_static(gone)  # what an earlier beat_schedule wrote
    busy = entries(2, every_s=1)
    schedule = [*busy, *[s.with_changes(name=f"s{i:03d}") for i, s in enumerate(entries(448))]]
    calls: list[tuple[str, int]] = []
    reg = c.registry
    sync_static, scan_static, drop_static = reg.sync_static, reg.scan_static, reg.drop_static

    def sync(specs: Any, *, final: bool = True) -> Any:
        calls.append(("sync final" if final else "sync", len(specs)))
        return sync_static(specs, final=final)

    def scan(cursor: int, count: int) -> Any:
        calls.append(("scan", count))
        return scan_static(cursor, count)

    def drop(names: Any) -> Any:
        calls.append(("drop", len(names)))
        return drop_static(names)

    monkeypatch.setattr(reg, "sync_static", sync)
    monkeypatch.setattr(reg, "scan_static", scan)
    monkeypatch.setattr(reg, "drop_static", drop)
    reasons: list[str] = []

    def receiver(sender: object, reason: str = "", **kw: object) -> None:
        reasons.append(reason)

    signals.reconcile.connect(receiver, weak=False)
    try:
        e = c.add("a", schedule)
        for n in range(1, 7):
            e.step()
            assert len(calls) == n and reasons == []
            assert c.registry.snapshot().static >= {g.name for g in gone}  # not removed yet
        e.step()
        assert calls == [("sync", 100)] * 4 + [("sync", 50), ("scan", 10_000), ("drop", 3)]
        assert reasons == ["start"]
        assert c.registry.snapshot().static == {s.name for s in schedule}
        c.advance(5 * S, step_ms=100)
    finally:
        signals.reconcile.disconnect(receiver)
    assert e.owned == {s.name for s in schedule} and len(calls) == 7
    assert ticks_of(c.recorder, busy[0].name)


def test_a_static_sync_step_cut_off_by_a_redis_error_is_done_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each step of a paged static sync (a page written, a scan, a removal) that Redis
    refused is done again at the next pass: the static entries no longer listed are all
    removed in the end."""
    monkeypatch.setattr(view, "STATIC_PAGE", 100)
    monkeypatch.setattr(loading, "BUDGET_S", 0.0)
    c = MemoryCluster()
    c.registry.sync_static([s.with_changes(name=f"gone{i}") for i, s in enumerate(entries(150))])
    reg = c.registry
    failed: list[str] = []
    for method in ("sync_static", "scan_static", "drop_static"):
        real = getattr(reg, method)

        def once(*args: Any, _real: Any = real, _method: str = method, **kw: Any) -> Any:
            if _method not in failed:
                failed.append(_method)
                raise RegistryUnavailableError("dcron: Redis unreachable: test")
            return _real(*args, **kw)

        monkeypatch.setattr(reg, method, once)
    schedule = entries(250)
    e = c.add("a", schedule)
    for _ in range(30):
        e.step()
    assert failed == ["sync_static", "scan_static", "drop_static"]
    assert not e._syncing and c.registry.snapshot().static == {s.name for s in schedule}
