"""A decision is one log call: its text and its structured fields come from the same values."""

from __future__ import annotations

import logging

import pytest

from celery_dcron.logfields import EVENTS, SUMMARY_DETAILS, Summary, log_event
from celery_dcron.ticks import tick_iso

T0 = 1_800_000_000_000
logger = logging.getLogger("celery_dcron.tests")


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    return {k[6:]: v for k, v in vars(record).items() if k.startswith("dcron_")}


def test_one_call_logs_the_text_and_the_fields_from_the_same_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="celery_dcron")
    log_event(
        logger, logging.INFO, "fired", "dcron: fired %(entry)s tick=%(tick)s id=%(task_id)s",
        entry="e", tick_ms=T0, task_id="x", node="n", run_now=False,
    )  # fmt: skip
    (record,) = caplog.records
    assert fields_of(record) == {
        "event": "fired", "entry": "e", "tick_ms": T0, "task_id": "x", "node": "n",
        "run_now": False,
    }  # fmt: skip
    assert record.getMessage() == f"dcron: fired e tick={tick_iso(T0)} id=x"
    assert record.funcName == "test_one_call_logs_the_text_and_the_fields_from_the_same_values"


def test_nothing_is_built_below_the_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="celery_dcron")
    log_event(logger, logging.INFO, "fired", "dcron: %(entry)s", entry="e")
    assert caplog.records == []


def test_a_summary_is_one_warning_and_one_debug_record_per_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_dcron")
    summary = Summary(logger, "catch_up", node="n", totals=("missed", "fired", "dropped"))
    n = SUMMARY_DETAILS + 2
    for i in range(n):
        summary.add(
            "catch_up_entry", "%(entry)s missed %(missed)d ticks",
            entry=f"e{i}", node="n", missed=2, fired=1, dropped=False, policy="once",
            grace_s=None, tick_ms=T0,
        )  # fmt: skip
    summary.log("dcron: catch-up of %(entries)d entries: %(missed)d missed")
    details = [r for r in caplog.records if getattr(r, "dcron_event", None) == "catch_up_entry"]
    assert [r.levelno for r in details] == [logging.DEBUG] * n
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert fields_of(warning) == {
        "event": "catch_up",
        "node": "n",
        "entries": n,
        "missed": 2 * n,
        "fired": n,
        "dropped": 0,
    }
    assert warning.getMessage().endswith(" | and 2 more (each logged at DEBUG)")
    for record in [*details, warning]:
        event = fields_of(record).pop("event")
        assert set(fields_of(record)) - {"event"} <= set(EVENTS[str(event)])
