"""Demo tasks. Each one logs and returns which entry and tick it ran for.

Tasks sent by ``DistributedScheduler`` carry two headers, readable on ``self.request``:
``periodic_task_name`` (the entry's name, stored by django-celery-results when
``result_extended`` is on) and ``dcron_tick`` (the scheduled time, ISO 8601 UTC). Their
task id is derived from (namespace, entry, tick), so it is the same on every beat.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from celery import Task, shared_task
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)


def _run_info(task: Task[Any, Any]) -> dict[str, Any]:
    request = task.request
    entry = getattr(request, "periodic_task_name", None)
    tick = getattr(request, "dcron_tick", None)
    now = datetime.now(timezone.utc)
    lag_ms = None
    if isinstance(tick, str):
        try:
            scheduled = datetime.fromisoformat(tick.replace("Z", "+00:00"))
            lag_ms = round((now - scheduled).total_seconds() * 1000)
        except ValueError:
            lag_ms = None
    return {
        "entry": entry,
        "tick": tick,
        "ran_at": now.isoformat(timespec="milliseconds"),
        "lag_ms": lag_ms,
    }


@shared_task(name="demo.heartbeat", bind=True)
def heartbeat(self: Task[Any, Any]) -> dict[str, Any]:
    """A no-op that says it ran."""
    info = _run_info(self)
    logger.info(
        "demo: heartbeat for %s tick=%s lag=%sms", info["entry"], info["tick"], info["lag_ms"]
    )
    return info


@shared_task(name="demo.report", bind=True)
def report(self: Task[Any, Any], name: str) -> dict[str, Any]:
    """Pretend to build the report ``name``."""
    info = _run_info(self)
    logger.info("demo: report %r for %s tick=%s", name, info["entry"], info["tick"])
    return {"report": name, **info}


@shared_task(name="demo.add", bind=True)
def add(self: Task[Any, Any], x: int, y: int) -> dict[str, Any]:
    """Add two numbers (kwargs from the beat entry)."""
    info = _run_info(self)
    logger.info("demo: add(%s, %s) = %s for %s tick=%s", x, y, x + y, info["entry"], info["tick"])
    return {"sum": x + y, **info}
