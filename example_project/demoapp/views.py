"""The demo's status page: dcron nodes, entries and the latest results (refreshes itself)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from django.conf import settings
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django_celery_results.models import TaskResult

from ..celery import app as celery_app

_lock = threading.Lock()
_registry: Any = None


def _get_registry() -> Any:
    """One registry client for the page (read-only: nodes and entry states)."""
    global _registry
    with _lock:
        if _registry is None:
            from celery_dcron.config import Settings
            from celery_dcron.registry import Registry

            _registry = Registry.from_settings(Settings.from_app(celery_app))
        return _registry


def _ms_to_dt(ms: int | None) -> datetime | None:
    return None if not ms else datetime.fromtimestamp(ms / 1000, timezone.utc)


def _cluster() -> tuple[list[dict[str, Any]], dict[str, Any], str | None]:
    try:
        registry = _get_registry()
        nodes, server_ms = registry.nodes()
        states = registry.states()
    except Exception as exc:  # the page must render even with Redis down
        return [], {}, f"{type(exc).__name__}: {exc}"
    rows = [
        {
            "id": n.id,
            "pid": n.pid,
            "status": n.status.value,
            "age_s": round((server_ms - n.heartbeat_ms) / 1000, 1) if n.heartbeat_ms else None,
            "up_s": round((server_ms - n.started_ms) / 1000) if n.started_ms else None,
        }
        for n in nodes
    ]
    return rows, states, None


def index(request: HttpRequest) -> HttpResponse:
    nodes, states, error = _cluster()
    stats = {
        row["periodic_task_name"]: row
        for row in TaskResult.objects.exclude(periodic_task_name=None)
        .values("periodic_task_name")
        .annotate(runs=Count("id"), last=Max("date_done"))
    }
    names = sorted(set(settings.CELERY_BEAT_SCHEDULE) | set(stats) | set(states))
    entries = []
    for name in names:
        spec = settings.CELERY_BEAT_SCHEDULE.get(name, {})
        state = states.get(name)
        entries.append(
            {
                "name": name,
                "task": spec.get("task", ""),
                "schedule": spec.get("schedule", ""),
                "runs": stats.get(name, {}).get("runs", 0),
                "last_done": stats.get(name, {}).get("last"),
                "last_tick": _ms_to_dt(getattr(state, "last_tick_ms", None)),
                "last_node": getattr(state, "last_node", None),
                "claims": getattr(state, "run_count", None),
            }
        )
    latest = TaskResult.objects.exclude(periodic_task_name=None).order_by("-date_done")[:15]
    return render(
        request,
        "demoapp/index.html",
        {
            "nodes": nodes,
            "entries": entries,
            "latest": latest,
            "error": error,
            "namespace": settings.CELERY_DCRON_NAMESPACE,
        },
    )
