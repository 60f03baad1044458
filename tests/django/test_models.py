"""The model's validation is the API's, with each error on the field it belongs to."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from celery_dcron.api import DynamicTasks
from celery_dcron.contrib.django.models import DynamicTask
from celery_dcron.contrib.django.validators import spec_for
from celery_dcron.schedules import AtSchedule, CronSchedule, IntervalSchedule, SolarSchedule
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
        ({"task": "djtest.add", "args": [1, 2, 3]}, "args", "too many positional"),
        ({"task": "djtest.add", "args": [1], "kwargs": {"z": 1}}, "kwargs", "z"),
        ({"task": "djtest.add", "args": [], "kwargs": {"y": 1}}, "args", "x"),
        ({"task": "djtest.add", "args": [1], "payload": {"p": 1}}, "payload", "payload"),
        ({"schedule_kind": "solar", "cron": ""}, "solar_event", "needs an event"),
        ({"schedule_kind": "solar", "cron": "", "solar_event": "sunrise"}, "latitude", "needs"),
        (
            {"schedule_kind": "solar", "cron": "", "solar_event": "sunrise", "latitude": 1},
            "longitude",
            "needs",
        ),
        (
            {
                "schedule_kind": "solar",
                "cron": "",
                "solar_event": "sunrise",
                "latitude": 91,
                "longitude": 2,
            },
            "latitude",
            "between -90 and 90",
        ),
        (
            {
                "schedule_kind": "solar",
                "cron": "",
                "solar_event": "sunrise",
                "latitude": 48,
                "longitude": 200,
            },
            "longitude",
            "between -180 and 180",
        ),
        ({"schedule_kind": "solar", "cron": "", "solar_event": "moonrise"}, "solar_event", ""),
        ({"schedule_kind": "interval", "interval_seconds": 5, "timezone": "UTC"}, "timezone", ""),
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


def test_a_task_this_process_does_not_import_is_accepted(dt: DynamicTasks) -> None:
    """The web process may not import every task module: the model does not refuse the
    name (the admin warns), and its arguments are not checked."""
    task = make_task(task="elsewhere.only_on_workers", args=[1, 2, 3])
    task.full_clean()
    assert spec_for(task).task == "elsewhere.only_on_workers"


def test_arguments_that_fit_the_signature_pass(dt: DynamicTasks) -> None:
    make_task(task="djtest.add", args=[1], kwargs={"y": 2}).full_clean()
    make_task(task="djtest.add", args=[], kwargs={"x": 1}).full_clean()
    make_task(task="", payload={"any": "json"}).full_clean()  # djtest.receive(payload=None)


def test_a_solar_schedule_builds_the_api_s_solar_entry(dt: DynamicTasks) -> None:
    task = make_task(
        schedule_kind="solar", cron="", solar_event="sunset", latitude=48.85, longitude=2.35
    )
    task.full_clean()
    assert spec_for(task).schedule == SolarSchedule(event="sunset", lat=48.85, lon=2.35)


def test_validators_import_no_model() -> None:
    """models -> validators, never the reverse (the import circle of issue 10)."""
    import ast
    from pathlib import Path

    from celery_dcron.contrib.django import validators

    tree = ast.parse(Path(validators.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in imported if m.endswith("models")}, imported


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
