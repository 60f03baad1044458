"""Structured fields on the log records of scheduling decisions.

Each decision line (a tick fired or not, a claim lost, a catch-up, a publish failure, an
ownership change, Redis lost or reset) is logged with ``extra`` fields: ``dcron_event``
names the decision, and ``dcron_<field>`` attributes carry its data (``dcron_entry``,
``dcron_tick_ms``, ``dcron_task_id``, ``dcron_node``, ...). The text of the line is
unchanged; a JSON formatter (python-json-logger, structlog's stdlib bridge) adds the
fields to each record. docs/monitoring.rst lists the events and their fields.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EVENTS", "fields"]

#: Every ``dcron_event`` value, with the ``dcron_*`` fields its records carry.
EVENTS: dict[str, tuple[str, ...]] = {
    "fired": ("entry", "tick_ms", "task_id", "node", "run_now"),
    "publish_failed": ("entry", "tick_ms", "task_id", "node", "error"),
    "claim_lost": ("entry", "tick_ms", "node", "last_tick_ms"),
    "taken_over": ("entry", "tick_ms", "node"),
    "catch_up": ("node", "entries", "missed", "fired", "dropped"),
    "republished": ("node", "count"),
    "pending_dropped": ("node", "count"),
    "state_lost": ("entry", "tick_ms", "node"),
    "ownership": ("node", "owned", "entries", "working"),
    "nodes": ("node", "nodes"),
    "registry_reset": ("node",),
    "registry_rebuilt": ("node", "reset_ms"),
    "redis_unreachable": ("node", "attempt", "retry_s", "error"),
    "entry_skipped": ("entry", "node", "reason"),
}


def fields(event: str, **values: Any) -> dict[str, Any]:
    """``extra`` for a log call: ``dcron_event`` and a ``dcron_<name>`` per value."""
    out: dict[str, Any] = {"dcron_event": event}
    for name, value in values.items():
        out[f"dcron_{name}"] = value
    return out
