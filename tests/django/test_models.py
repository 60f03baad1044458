"""The model's validation is the API's, with each error on the field it belongs to."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from celery_dcron.api import DynamicTasks
from celery_dcron.contrib.django.models import DynamicTask
from celery_dcron.contrib.django.validators import spec_for
from celery_dcron.schedules import AtSchedule, CronSchedule, IntervalSchedule
from tests.django.conftest import make_task

pytestmark = pytest.mark.django_db


def field_errors(task: DynamicTask) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        task.full_clean()
    return info.value.message_dict


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"cron": "61 * * * *"}, "cron", "61"),
        ({"cron": "not a cron"}, "cron", "cron"),
        ({"cron": ""}, "cron", "needs a cron expression"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Mars/Olympus"),
        ({"schedule_kind": "interval", "cron": ""}, "interval_seconds", "seconds"),
        ({"schedule_kind": "interval", "interval_seconds": -5}, "interval_seconds", "positive"),
        ({"schedule_kind": "at", "at": None}, "at", "date and time"),
        (
            {"schedule_kind": "at", "at": datetime(2001, 1, 1, tzinfo=timezone.utc)},
            "at",
            "in the past",
        ),
        ({"task": "no.such.task"}, "task", "not registered"),
        ({"args": {"a": 1}}, "args", "must be a list"),
        ({"kwargs": [1, 2]}, "kwargs", "dict"),
        ({"options": {"queue": 5}}, "options", "queue"),
        ({"options": {"color": "red"}}, "options", "unknown keys"),
        ({"payload": "x" * 70_000}, "payload", "dcron_max_payload_bytes"),
        ({"max_runs": 0}, "max_runs", ""),
        ({"after_run": "delete"}, "after_run", "only entries that end"),
        ({"misfire_grace": 0}, "misfire_grace", "positive"),
        ({"name": "bad{name}"}, "name", "not a valid entry name"),
    ],
)
def test_invalid_fields_are_reported_on_their_field(
    dt: DynamicTasks, fields: dict[str, Any], field: str, words: str
) -> None:
    errors = field_errors(make_task(**fields))
    assert field in errors, errors
    assert words in " ".join(errors[field]), errors


def test_a_valid_task_builds_the_entry_the_api_would(dt: DynamicTasks) -> None:
    task = make_task(
        cron="*/10 * * * * *",
        timezone="Europe/Paris",
        args=[1, 2],
        kwargs={"x": 1},
        options={"queue": "q1", "priority": 3},
        max_runs=5,
        after_run="delete",
        misfire_policy="all",
        misfire_grace=30,
        description="hello",
    )
    task.full_clean()
    spec = spec_for(task)
    assert spec.source == "django"
    assert spec.schedule == CronSchedule(expr="*/10 * * * * *", tz="Europe/Paris")
    assert spec.args == (1, 2) and spec.kwargs == {"x": 1}
    assert spec.options == {"queue": "q1", "priority": 3}
    # "delete" is kept as a tombstone in Redis so a reconcile can tell "finished" from "lost"
    assert spec.after_run == "tombstone" and spec.max_runs == 5
    assert spec.misfire_grace_s == 30.0 and spec.description == "hello"


def test_interval_one_off_and_payload_only(dt: DynamicTasks) -> None:
    every = make_task(name="every", schedule_kind="interval", cron="", interval_seconds=2.5)
    assert spec_for(every).schedule == IntervalSchedule(every_ms=2500)
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    once = make_task(name="once", schedule_kind="at", cron="", at=at, after_run="delete")
    once.full_clean()
    assert isinstance(spec_for(once).schedule, AtSchedule)
    payload = make_task(name="payload", task="", payload={"k": [1, 2]})
    payload.full_clean()
    spec = spec_for(payload)
    assert spec.task == "djtest.receive" and spec.kwargs == {"payload": {"k": [1, 2]}}


def test_an_old_one_off_can_still_be_edited(dt: DynamicTasks) -> None:
    """'at must be in the future' applies to a new or changed time only."""
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    task = make_task(schedule_kind="at", cron="", at=at)
    task.full_clean()
    task.save()
    DynamicTask.objects.filter(pk=task.pk).update(at=datetime(2001, 1, 1, tzinfo=timezone.utc))
    old = DynamicTask.objects.get(pk=task.pk)
    old.description = "edited later"
    old.full_clean()  # no error: the time did not change
    old.at = datetime(2002, 1, 1, tzinfo=timezone.utc)
    assert "at" in field_errors(old)


def test_name_unique_per_namespace_and_clash_with_other_sources(dt: DynamicTasks) -> None:
    make_task(name="same").save()
    assert "name" in field_errors(make_task(name="same"))
    make_task(name="same", namespace="other").full_clean()  # another namespace: fine
    dt.add("from-api", "djtest.ping", every=5)
    errors = field_errors(make_task(name="from-api"))
    assert "Python API or the CLI" in errors["name"][0]
