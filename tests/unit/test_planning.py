"""planning: the pure rules the engine, ``dcron ls``/``status`` and the admin share."""

from __future__ import annotations

from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec, EntryState, MisfirePolicy, Tick
from celery_dcron.planning import Rules, base_tick_ms, finished, next_run_ms, plan
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.ticks import interval_phase_ms

T0 = 1_800_000_000_000
S = 1000


def spec(**kw: object) -> EntrySpec:
    return EntrySpec(name="e", task="t", schedule=IntervalSchedule(every_ms=10 * S), **kw)  # type: ignore[arg-type]


def test_an_entrys_misfire_grace_falls_back_to_the_namespace_default() -> None:
    rules = Rules(misfire_grace_s=30.0)
    assert rules.grace_s(spec()) == 30.0
    assert rules.grace_s(spec(misfire_grace_s=5.0)) == 5.0
    assert Rules().grace_s(spec()) is None


def test_an_entrys_misfire_policy_falls_back_to_the_namespace_default() -> None:
    rules = Rules(misfire_policy=MisfirePolicy.ALL)
    assert rules.policy(spec()) is MisfirePolicy.ALL
    assert rules.policy(spec(misfire_policy=MisfirePolicy.SKIP)) is MisfirePolicy.SKIP


def test_rules_from_settings() -> None:
    s = Settings(namespace="ns", misfire_grace_s=2.0, heartbeat_interval_s=3.0, node_ttl_s=9.0)
    rules = Rules.from_settings(s)
    assert (rules.namespace, rules.misfire_grace_s, rules.on_time_ms) == ("ns", 2.0, 3000)
    assert Rules.from_settings(Settings(heartbeat_interval_s=0.1)).on_time_ms == 1000


def test_the_base_tick_is_the_last_tick_else_the_anchor_moved_up_to_start_at() -> None:
    assert base_tick_ms(spec(), EntryState()) is None
    assert base_tick_ms(spec(), EntryState(anchor_ms=T0)) == T0
    assert base_tick_ms(spec(), EntryState(anchor_ms=T0, last_tick_ms=T0 + 20 * S)) == T0 + 20 * S
    later = spec(start_ms=T0 + 95 * S)
    assert base_tick_ms(later, EntryState(anchor_ms=T0)) == T0 + 85 * S  # fires at start_at
    assert next_run_ms(later, EntryState(anchor_ms=T0)) == T0 + 95 * S


def test_an_entry_is_finished_past_its_end_or_its_runs() -> None:
    assert finished(spec(), EntryState(), None)
    assert finished(spec(end_ms=T0), EntryState(), T0 + 1)
    assert not finished(spec(end_ms=T0), EntryState(), T0)
    assert finished(spec(max_runs=2), EntryState(run_count=2), T0)
    assert next_run_ms(spec(max_runs=2), EntryState(anchor_ms=T0, run_count=2)) is None


def test_an_entry_without_anchor_is_anchored_on_its_grid_not_fired() -> None:
    p = plan(spec(), EntryState(), due_ms=0, now_ms=T0, rules=Rules(namespace="ns"))
    (anchor,) = p.ticks
    assert p.anchored and not anchor.fire and T0 - 10 * S < anchor.tick_ms <= T0
    assert anchor.tick_ms % (10 * S) == interval_phase_ms("ns", "e", 10 * S)


def test_a_tick_on_time_is_fired_within_end_at_and_max_runs() -> None:
    state = EntryState(anchor_ms=T0)
    p = plan(spec(), state, due_ms=T0 + 10 * S, now_ms=T0 + 10 * S, rules=Rules())
    assert p.ticks == (Tick(name="e", tick_ms=T0 + 10 * S),) and p.missed == 0
    ended = plan(spec(end_ms=T0), state, due_ms=T0 + 10 * S, now_ms=T0 + 10 * S, rules=Rules())
    assert ended.ticks == ()


def test_a_catch_up_follows_the_policy_and_drops_ticks_past_the_grace() -> None:
    state = EntryState(anchor_ms=T0)
    now = T0 + 55 * S  # five ticks due, the latest 5 s ago
    once = plan(spec(), state, due_ms=T0 + 10 * S, now_ms=now, rules=Rules())
    assert [t.tick_ms for t in once.ticks] == [T0 + 50 * S]
    assert (once.missed, once.fired, once.up_to_ms) == (4, 1, T0 + 50 * S)
    every = plan(
        spec(misfire_policy=MisfirePolicy.ALL), state, due_ms=T0 + 10 * S, now_ms=now, rules=Rules()
    )
    assert len(every.ticks) == 5 and every.missed == 0
    late = plan(spec(), state, due_ms=T0 + 10 * S, now_ms=now, rules=Rules(misfire_grace_s=2.0))
    assert late.ticks == (Tick(name="e", tick_ms=T0 + 50 * S, fire=False),)
    assert (late.missed, late.fired, late.skip_reason, late.grace_s) == (5, 0, "grace", 2.0)


def test_a_time_the_entry_was_put_off_to_is_planned_as_a_catch_up_not_fired_as_a_tick() -> None:
    state = EntryState(anchor_ms=T0, last_tick_ms=T0 + 10 * S)
    put_off_to = T0 + 13 * S  # not on the grid: no tick there
    p = plan(spec(), state, due_ms=put_off_to, now_ms=put_off_to, rules=Rules(), due_is_tick=False)
    assert p.ticks == ()
