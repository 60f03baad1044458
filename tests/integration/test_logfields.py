"""Decision log lines carry structured fields (``dcron_event``, ``dcron_*``) for JSON logs.

Real engines against a real redis-server, a manual clock; the records are those a JSON
formatter would serialise.
"""

from __future__ import annotations

import json
import logging

import pytest

from celery_dcron.logfields import EVENTS
from celery_dcron.ticks import task_id
from tests.integration.test_engine import Cluster, S, entries


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "dcron_event", None) == name]


def dcron_fields(record: logging.LogRecord) -> dict[str, object]:
    return {
        k[6:]: v for k, v in vars(record).items() if k.startswith("dcron_") and k != "dcron_event"
    }


def test_decisions_carry_their_fields(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_dcron")
    a = cluster.add("a", entries(3))
    cluster.step_all(2)
    cluster.align()
    cluster.advance(2 * S)

    (ownership, *_) = events(caplog, "ownership")
    assert dcron_fields(ownership) == {"node": "a", "owned": 3, "entries": 3, "working": 1}
    fired = events(caplog, "fired")
    assert len(fired) == len(cluster.recorder.sent) > 0
    for record in fired:
        f = dcron_fields(record)
        assert f["node"] == "a" and f["run_now"] is False
        assert f["task_id"] == task_id("default", str(f["entry"]), int(str(f["tick_ms"])))
        assert f"id={f['task_id']}" in record.getMessage()

    # The broker fails: each failure is a record with the entry, tick, id and error.
    cluster.recorder.fail = True
    cluster.advance(1 * S)
    failed = events(caplog, "publish_failed")
    assert failed and all(
        dcron_fields(r)["error"] == "ConnectionError('broker down')" for r in failed
    )
    cluster.recorder.fail = False

    # A gap: the catch-up summary counts what the misfire policy did.
    a.stopped = True
    cluster.clock.advance(5 * S)
    a.stopped = False
    caplog.clear()
    cluster.step_all()
    (catch_up,) = events(caplog, "catch_up")
    summary = dcron_fields(catch_up)
    assert summary["node"] == "a" and summary["entries"] == 3
    assert summary["missed"] >= 3 * 4 and summary["fired"] == 3  # type: ignore[operator]


def test_every_record_is_json_serialisable_with_only_the_documented_fields(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_dcron")
    cluster.add("a", entries(4))
    cluster.add("b", entries(4))
    cluster.step_all(3)
    cluster.align()
    cluster.advance(3 * S)
    seen = set()
    for record in caplog.records:
        event = getattr(record, "dcron_event", None)
        if event is None:
            continue
        seen.add(event)
        assert event in EVENTS, event
        assert set(dcron_fields(record)) <= set(EVENTS[event]), (event, dcron_fields(record))
        json.dumps(dcron_fields(record))
    assert {"fired", "ownership", "nodes"} <= seen
