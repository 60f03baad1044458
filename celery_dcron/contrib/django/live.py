"""What the admin pages show of the registry: state, owner, next and last run, run count,
last publish error.

Read live, one :class:`~celery_dcron.status.ClusterView` per namespace on the page; the
``DynamicTask`` row's copies (``last_run_at``, ``total_run_count``) are never shown, so
the list and the change page give the same, current, run count. Times are shown in the
entry's own time zone (a cron entry's zone, else the row's or the Celery ``timezone``)
with how far they are from the cluster clock (Redis server time):
``2026-12-04 14:05:00 CET (in 3 min)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery_dcron.api import DynamicTasks
from celery_dcron.entries import EntrySpec, EntryState, PublishRejection
from celery_dcron.exceptions import DcronError
from celery_dcron.schedules import CronSchedule
from celery_dcron.status import ClusterView, describe_schedule, next_run_ms
from celery_dcron.ticks import task_id, tick_iso

from .validators import SOURCE, dynamic_tasks

__all__ = ["Live", "LiveEntry", "app_zone", "read_live", "relative", "when", "when_parts"]

_UNITS = ((86_400, "day"), (3_600, "h"), (60, "min"))


def relative(delta_ms: int) -> str:
    """``in 3 min``, ``12 s ago``, ``in 2 h 5 min``, ``3 days ago``, ``now``."""
    seconds = round(abs(delta_ms) / 1000)
    if seconds == 0:
        return "now"
    if seconds < 60:
        text = f"{seconds} s"
    elif seconds < 3_600:
        text = f"{round(seconds / 60)} min"
    elif seconds < 86_400:
        hours, minutes = divmod(round(seconds / 60), 60)
        text = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days = round(seconds / 86_400)
        text = f"{days} day{'s' if days != 1 else ''}"
    return f"in {text}" if delta_ms > 0 else f"{text} ago"


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def app_zone(tasks: DynamicTasks) -> str:
    """The Celery ``timezone`` (what entries without a zone of their own are shown in)."""
    return str(getattr(tasks.app.conf, "timezone", None) or "UTC")


def when_parts(tick_ms: int, tz: str, now_ms: int) -> tuple[str, str]:
    """``("2026-12-04 14:05:00 CET", "in 3 min")``: see :func:`when`."""
    local = datetime.fromtimestamp(tick_ms / 1000, tz=timezone.utc).astimezone(zone(tz))
    return f"{local:%Y-%m-%d %H:%M:%S %Z}", relative(tick_ms - now_ms)


def when(tick_ms: int, tz: str, now_ms: int) -> str:
    """``2026-12-04 14:05:00 CET (in 3 min)``: ``tick_ms`` in the zone ``tz``, and its
    distance from ``now_ms`` (the cluster clock)."""
    moment, distance = when_parts(tick_ms, tz, now_ms)
    return f"{moment} ({distance})"


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveEntry:
    """One entry as the registry has it now."""

    name: str
    state: str
    spec: EntrySpec | None = None
    owner: str | None = None
    next_ms: int | None = None
    last_ms: int | None = None
    runs: int | None = None
    #: the zone its times are shown in
    tz: str = "UTC"
    #: the cluster clock when read
    now_ms: int = 0
    #: the Celery task id of the last tick
    last_task_id: str | None = None
    #: its last publish that can never succeed (cleared by a later tick sent)
    last_error: PublishRejection | None = None

    @property
    def schedule_text(self) -> str | None:
        return None if self.spec is None else describe_schedule(self.spec.schedule)

    def next_text(self) -> str | None:
        return None if self.next_ms is None else when(self.next_ms, self.tz, self.now_ms)

    def last_text(self) -> str | None:
        return None if self.last_ms is None else when(self.last_ms, self.tz, self.now_ms)

    def next_iso(self) -> str | None:
        return None if self.next_ms is None else tick_iso(self.next_ms)

    def last_iso(self) -> str | None:
        return None if self.last_ms is None else tick_iso(self.last_ms)


@dataclass
class Live:
    """The registry's view of a page of rows: by ``(namespace, name)``, and the static
    (``beat_schedule``) entries of the namespaces read."""

    rows: dict[tuple[str, str], LiveEntry]
    static: list[tuple[str, LiveEntry]]
    errors: list[str]


def _entry(view: ClusterView, name: str, namespace: str, fallback_tz: str) -> LiveEntry:
    spec = view.entries.get(name)
    if spec is None:
        return LiveEntry(name=name, state="missing")
    state = view.states.get(name) or EntryState()
    tz = spec.schedule.tz if isinstance(spec.schedule, CronSchedule) else fallback_tz
    last = state.last_tick_ms
    return LiveEntry(
        name=name,
        state=view.state_of(name),
        spec=spec,
        owner=view.owner.get(name),
        next_ms=next_run_ms(spec, state),
        last_ms=last,
        runs=state.run_count,
        tz=tz,
        now_ms=view.server_ms,
        last_task_id=None if last is None else task_id(namespace, name, last),
        last_error=view.errors.get(name),
    )


def read_live(
    rows: Iterable[Any], *, static_of: Sequence[str] = (), with_static: bool = False
) -> Live:
    """Registry state of ``rows`` (``DynamicTask`` objects), one read per namespace.

    ``with_static``: also the static entries of the rows' namespaces and of
    ``static_of`` (namespaces as in a row: blank is the app's)."""
    groups: dict[str, list[Any]] = defaultdict(list)  # by registry namespace
    tasks_of: dict[str, DynamicTasks] = {}
    for namespace, row in [(r.namespace, r) for r in rows] + [(n, None) for n in static_of]:
        if row is None and not with_static:
            continue
        tasks = dynamic_tasks(namespace)
        real = tasks_of.setdefault(tasks.settings.namespace, tasks).settings.namespace
        group = groups[real]
        if row is not None:
            group.append(row)
    live = Live(rows={}, static=[], errors=[])
    for real, group in groups.items():
        tasks = tasks_of[real]
        app_tz = app_zone(tasks)
        names = [r.name for r in group]
        try:
            view = ClusterView.read(tasks.registry, tasks.settings, names)
            static = sorted(view.static)
            if with_static and not set(static) <= set(view.entries) | set(view.bad):
                view = ClusterView.read(tasks.registry, tasks.settings, names + static)
        except DcronError as exc:
            live.errors.append(f"{real}: {exc}")
            continue
        for row in group:
            entry = _entry(view, row.name, real, row.timezone or app_tz)
            if entry.spec is not None and entry.spec.source != SOURCE:
                entry = LiveEntry(name=row.name, state=f"clash ({entry.spec.source} entry)")
            live.rows[(row.namespace, row.name)] = entry
        if with_static:
            live.static += [(real, _entry(view, name, real, app_tz)) for name in static
                            if name in view.entries]  # fmt: skip
    return live
