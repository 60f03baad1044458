"""What the Django reconcile copies between a row and the registry: the run state mirrored
into the row, and the microsecond timestamps its watermark is kept in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from django.conf import settings as django_settings
from django.utils import timezone as dj_timezone

from celery_dcron.entries import EntrySpec, EntryState
from celery_dcron.status import next_run_ms

from .models import AfterRun, DynamicTask

__all__ = ["from_ms", "from_us", "mirror_state", "now_us", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def mirror_state(
    task: DynamicTask, existing: EntrySpec, state: EntryState, *, apply: bool
) -> tuple[str, ...]:
    """The columns to copy from the registry into the row: run count and last run, and
    ``enabled`` when a finished ``disable`` task was disabled. With ``apply``, they are
    set on ``task`` (saved by the caller, without touching ``updated_at``)."""
    updates: dict[str, Any] = {}
    last = None if state.last_tick_ms is None else from_ms(state.last_tick_ms)
    if state.last_tick_ms is not None and state.run_count != task.total_run_count:
        updates["total_run_count"] = state.run_count
    if last is not None and last != task.last_run_at:
        updates["last_run_at"] = last
    still_due = next_run_ms(existing.with_changes(enabled=True), state) is not None
    finished = state.run_count > 0 and not still_due
    if task.after_run == AfterRun.DISABLE and finished and not existing.enabled and task.enabled:
        updates["enabled"] = False
    if apply:
        for key, value in updates.items():
            setattr(task, key, value)
    return tuple(sorted(updates))


# -- times -------------------------------------------------------------------------


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of a column's datetime (naive: Django's zone)."""
    if dj_timezone.is_naive(value):
        value = dj_timezone.make_aware(value)
    return (value - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The column value of ``us`` microseconds since the epoch (naive without USE_TZ)."""
    value = _EPOCH + us * _US
    return value if django_settings.USE_TZ else dj_timezone.make_naive(value)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def now_us() -> int:
    """Microseconds since the epoch, now."""
    return (datetime.now(timezone.utc) - _EPOCH) // _US
