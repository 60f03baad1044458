"""Structured fields on the log records of scheduling decisions, and the one way to log one.

Each decision line (a tick fired or not, a claim lost, a catch-up, a publish failure, an
ownership change, Redis lost or reset) is logged with ``extra`` fields: ``dcron_event``
names the decision, and ``dcron_<field>`` attributes carry its data (``dcron_entry``,
``dcron_tick_ms``, ``dcron_task_id``, ``dcron_node``, ...). A JSON formatter
(python-json-logger, structlog's stdlib bridge) adds the fields to each record.
docs/monitoring.rst lists the events and their fields.

:func:`log_event` logs a decision with one call that passes each value once: the text is
formatted from the same values that become the fields. :class:`Summary` logs many similar
decisions of one pass as one warning, each of them also on its own at DEBUG.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .ticks import tick_iso

__all__ = ["EVENTS", "SUMMARY_DETAILS", "Summary", "fields", "log_event"]

#: Every ``dcron_event`` value, with the ``dcron_*`` fields its records carry.
EVENTS: dict[str, tuple[str, ...]] = {
    "fired": ("entry", "tick_ms", "task_id", "node", "run_now"),
    "publish_failed": ("entry", "tick_ms", "task_id", "node", "error"),
    "publish_rejected": ("entry", "tick_ms", "task_id", "node", "reason", "error", "run_now"),
    "claim_lost": ("entry", "tick_ms", "node", "last_tick_ms"),
    "taken_over": ("entry", "tick_ms", "node"),
    "catch_up": ("node", "entries", "missed", "fired", "dropped"),
    "catch_up_entry": (
        "entry",
        "tick_ms",
        "node",
        "missed",
        "fired",
        "dropped",
        "policy",
        "grace_s",
    ),
    "republished": ("node", "count"),
    "republished_claim": ("entry", "tick_ms", "node"),
    "pending_dropped": ("node", "count"),
    "pending_dropped_claim": ("entry", "tick_ms", "node", "claimed_by"),
    "state_lost": ("entry", "tick_ms", "node"),
    "ownership": ("node", "owned", "entries", "working"),
    "reload": ("node", "reason"),
    "moved_here": ("node", "count", "hot", "hot_s", "hints_s", "by", "seconds"),
    "feed_gap": ("node", "seq", "head"),
    "nodes": ("node", "nodes"),
    "node_reclaimed": ("node", "previous", "previous_host", "previous_pid"),
    "node_superseded": ("node",),
    "node_crashed": ("node", "crashed"),
    "crash_detection_off": ("node", "reason"),
    "registry_reset": ("node",),
    "registry_rebuilt": ("node", "reset_ms"),
    "redis_unreachable": ("node", "attempt", "retry_s", "error"),
    "entry_skipped": ("entry", "node", "reason"),
}

#: A :class:`Summary` shows this many decisions in full.
SUMMARY_DETAILS = 10


def fields(event: str, **values: Any) -> dict[str, Any]:
    """``extra`` for a log call: ``dcron_event`` and a ``dcron_<name>`` per value."""
    out: dict[str, Any] = {"dcron_event": event}
    for name, value in values.items():
        out[f"dcron_{name}"] = value
    return out


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    template: str,
    /,
    *,
    text: Mapping[str, object] | None = None,
    **values: Any,
) -> None:
    """Log one decision: the line is ``template`` formatted from ``values``
    (``%(entry)s``), and each value is a field ``dcron_<name>`` of the record.

    A time ``<name>_ms`` also gives ``%(<name>)s``, its ISO form for the text
    (``tick_ms``: ``%(tick)s``); ``text`` holds what only the text shows (a detail list).
    Nothing is built when the level is off.
    """
    if logger.isEnabledFor(level):
        args = _text_args(template, values, text)
        logger.log(level, template, args, extra=fields(event, **values), stacklevel=2)


def _text_args(
    template: str, values: Mapping[str, Any], text: Mapping[str, object] | None
) -> dict[str, object]:
    args: dict[str, object] = {**(text or {}), **values}
    for name, value in values.items():
        if name.endswith("_ms") and isinstance(value, int) and f"%({name[:-3]})" in template:
            args[name[:-3]] = tick_iso(value)
    return args


class Summary:
    """Similar decisions of one pass, logged as one warning (event ``event``) that shows
    the first :data:`SUMMARY_DETAILS` in full; each decision is also logged on its own at
    DEBUG, with its fields. The warning's fields are ``node`` and ``count``, or with
    ``totals`` ``entries`` (the count) and the sum of each of those fields."""

    def __init__(
        self, logger: logging.Logger, event: str, *, node: str, totals: Sequence[str] = ()
    ) -> None:
        self.logger = logger
        self.event = event
        self.node = node
        self.count = 0
        self.totals: Counter[str] = Counter({name: 0 for name in totals})
        self.shown: list[str] = []

    def add(
        self,
        event: str,
        template: str,
        /,
        *,
        text: Mapping[str, object] | None = None,
        **values: Any,
    ) -> None:
        """One decision: ``log_event(logger, DEBUG, event, "dcron: " + template, ...)``."""
        self.count += 1
        for name in self.totals:
            self.totals[name] += int(values[name])
        if len(self.shown) < SUMMARY_DETAILS:
            self.shown.append(template % _text_args(template, values, text))
        log_event(self.logger, logging.DEBUG, event, "dcron: " + template, text=text, **values)

    def log(self, template: str) -> None:
        """The warning: ``template`` formatted from the counts, then the details."""
        if not self.count:
            return
        counts = {"entries": self.count, **self.totals} if self.totals else {"count": self.count}
        more = self.count - len(self.shown)
        log_event(
            self.logger, logging.WARNING, self.event, template + ": %(details)s%(more)s",
            text={
                "details": " | ".join(self.shown),
                "more": f" | and {more} more (each logged at DEBUG)" if more else "",
            },
            node=self.node, **counts,
        )  # fmt: skip
