"""The error tree: fields and subclasses that callers decide by (never the message)."""

from __future__ import annotations

import pickle

from celery_dcron.exceptions import (
    ConflictError,
    DcronError,
    InvalidEntryError,
    InvalidScheduleError,
    VersionConflictError,
)


def test_invalid_entry_error_names_its_field() -> None:
    exc = InvalidEntryError("entry 'e': task: must be a task name", field="task")
    assert exc.field == "task" and str(exc) == "entry 'e': task: must be a task name"
    assert InvalidEntryError("entry 'e': malformed").field is None
    assert InvalidScheduleError("entry 'e': cron: bad", field="schedule").field == "schedule"
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.field == "task" and str(copy) == str(exc)


def test_a_version_conflict_is_a_conflict() -> None:
    exc = VersionConflictError("entry 'e': version: changed by someone else")
    assert isinstance(exc, ConflictError) and isinstance(exc, DcronError)
    assert not isinstance(ConflictError("tombstoned"), VersionConflictError)
