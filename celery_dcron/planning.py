"""Planning: when an entry runs next, and what a due pass claims for it. Pure: no I/O.

The one copy of the rules that the engine and the read-only views (``celery dcron
status|ls`` and the Django admin, through :mod:`celery_dcron.status`) share, so that what
they show is what the owner fires:

- :func:`base_tick_ms` the instant an entry's next tick follows;
- :func:`finished` whether an entry ran for the last time; :func:`next_run_ms` its next tick;
- :class:`Rules` the namespace's misfire defaults, and an entry's policy and grace;
- :func:`plan` the ticks to claim for a due entry (anchor it, fire on time, or catch up
  under its misfire policy), as a frozen :class:`Plan`.

What to do about a Redis data loss is :mod:`celery_dcron.engine.recovery`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import ticks as tickmath
from .entries import EntrySpec, EntryState, MisfirePolicy, Tick
from .schedules import IntervalSchedule, Schedule

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["Plan", "Rules", "anchor_ms", "base_tick_ms", "finished", "next_run_ms", "plan"]

#: A tick published at most this late (or one heartbeat interval, if longer) is on time.
MIN_ON_TIME_MS = 1000


def base_tick_ms(spec: EntrySpec, state: EntryState) -> int | None:
    """The instant the entry's next tick follows: its last tick, else its anchor; None
    when it has neither (not anchored yet).

    A later ``start_at`` moves it so that the first tick is the first one from
    ``start_at`` on: an interval entry's grid then starts at ``start_at`` (it fires
    there), a cron, solar or one-off entry fires at its first tick at or after it.
    """
    base = state.last_tick_ms if state.last_tick_ms is not None else state.anchor_ms
    if base is None:
        return None
    if spec.start_ms is not None and spec.start_ms - 1 > base:
        if isinstance(spec.schedule, IntervalSchedule):
            return spec.start_ms - spec.schedule.every_ms
        return spec.start_ms - 1
    return base


def finished(spec: EntrySpec, state: EntryState, next_ms: int | None) -> bool:
    """Whether the entry ran for the last time, ``next_ms`` being its next tick: the
    schedule ended, ``end_at`` is past, or ``max_runs`` is reached."""
    if next_ms is None:
        return True
    if spec.end_ms is not None and next_ms > spec.end_ms:
        return True
    return spec.max_runs is not None and state.run_count >= spec.max_runs


def next_run_ms(
    spec: EntrySpec,
    state: EntryState,
    *,
    step: Callable[[Schedule, int], int | None] = tickmath.next_tick,
) -> int | None:
    """The next tick the owner fires; None when not anchored yet or finished.

    ``step`` is :func:`celery_dcron.ticks.next_tick`, or a cached copy of it.
    """
    base = base_tick_ms(spec, state)
    if base is None:
        return None
    nxt = step(spec.schedule, base)
    return None if finished(spec, state, nxt) else nxt


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """The namespace's defaults that an entry's plan falls back to (``dcron_misfire_*``)."""

    namespace: str = "default"
    misfire_policy: MisfirePolicy = MisfirePolicy.ONCE
    misfire_grace_s: float | None = None
    max_catchup: int = 100
    #: a tick published at most this late is on time: not a catch-up; ``skip`` fires it
    on_time_ms: int = MIN_ON_TIME_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            namespace=settings.namespace,
            misfire_policy=settings.misfire_policy,
            misfire_grace_s=settings.misfire_grace_s,
            max_catchup=settings.misfire_max_catchup,
            on_time_ms=max(MIN_ON_TIME_MS, settings.heartbeat_interval_ms),
        )

    def policy(self, spec: EntrySpec) -> MisfirePolicy:
        """The entry's misfire policy, else the namespace's."""
        return spec.misfire_policy or self.misfire_policy

    def grace_s(self, spec: EntrySpec) -> float | None:
        """The entry's misfire grace, else the namespace's: a missed tick (or an unsent
        claim) older than this is dropped; None: never."""
        return spec.misfire_grace_s if spec.misfire_grace_s is not None else self.misfire_grace_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The ticks to claim for one due entry, oldest first, and what its policy did.

    Ticks with ``fire=False`` only advance the entry's state: its anchor, or the latest
    missed tick when none of them fires.
    """

    ticks: tuple[Tick, ...]
    #: the entry was not anchored: ``ticks`` anchors it
    anchored: bool = False
    #: due ticks not fired (0: nothing was missed)
    missed: int = 0
    policy: MisfirePolicy | None = None
    grace_s: float | None = None
    #: the latest tick fired, or the one the entry skips to (set when ``missed``)
    up_to_ms: int | None = None

    @property
    def fired(self) -> int:
        return sum(1 for tick in self.ticks if tick.fire)

    @property
    def skip_reason(self) -> str:
        """Why the missed ticks were not fired: ``grace`` (all too old), else the policy."""
        if not self.fired and self.grace_s is not None and self.policy is not MisfirePolicy.SKIP:
            return "grace"
        return self.policy.value if self.policy is not None else ""


def anchor_ms(spec: EntrySpec, now_ms: int, namespace: str) -> int:
    """Where an entry is anchored at ``now_ms``: there, or for an interval entry the
    latest instant of its grid (its phase in the namespace) not after it."""
    if not isinstance(spec.schedule, IntervalSchedule):
        return now_ms
    every = spec.schedule.every_ms
    phase = tickmath.interval_phase_ms(namespace, spec.name, every)
    return tickmath.phased_anchor(now_ms, every, phase)


def plan(
    spec: EntrySpec,
    state: EntryState,
    *,
    due_ms: int,
    now_ms: int,
    rules: Rules,
    due_is_tick: bool = True,
) -> Plan:
    """The ticks to claim for ``spec``, whose next tick ``due_ms`` is due at ``now_ms``
    (or is claimed ahead: ``due_ms > now_ms``). ``due_is_tick`` is False when ``due_ms``
    is a time the entry was put off to, not one of its ticks: its due ticks are planned
    from its last one."""
    base = base_tick_ms(spec, state)
    if base is None:
        anchor = Tick(name=spec.name, tick_ms=anchor_ms(spec, now_ms, rules.namespace), fire=False)
        return Plan(ticks=(anchor,), anchored=True)
    if due_ms >= now_ms and due_is_tick:
        # Planned at its next tick, claimed on time or ahead: nothing was missed, and
        # plan_due would say "fire due_ms" (for a cron, at ~3 croniter steps' cost).
        return Plan(ticks=_limit(spec, state, (due_ms,)))
    policy = rules.policy(spec)
    grace_s = rules.grace_s(spec)
    due = tickmath.plan_due(
        spec.schedule,
        last_ms=base,
        now_ms=now_ms,
        policy=policy,
        grace_ms=None if grace_s is None else int(grace_s * 1000),
        max_catchup=rules.max_catchup,
        on_time_ms=rules.on_time_ms,
    )
    ticks = _limit(spec, state, due.fire)
    up_to_ms = ticks[-1].tick_ms if ticks else (due.skip_to or base)
    if not ticks and due.skip_to is not None:
        ticks = (Tick(name=spec.name, tick_ms=due.skip_to, fire=False),)
    return Plan(ticks=ticks, missed=due.missed, policy=policy, grace_s=grace_s, up_to_ms=up_to_ms)


def _limit(spec: EntrySpec, state: EntryState, fire: Sequence[int]) -> tuple[Tick, ...]:
    """The ticks of ``fire`` that ``end_at`` and ``max_runs`` still allow."""
    allowed = [t for t in fire if spec.end_ms is None or t <= spec.end_ms]
    if spec.max_runs is not None:
        allowed = allowed[: max(spec.max_runs - state.run_count, 0)]
    return tuple(Tick(name=spec.name, tick_ms=t) for t in allowed)
