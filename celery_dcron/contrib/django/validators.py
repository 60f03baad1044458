"""One validation for the model, the admin form and the sync: the core API's.

A row is turned into the keyword arguments of :meth:`DynamicTasks.build
<celery_dcron.api.DynamicTasks.build>`, so the admin accepts exactly what the Python API
and the CLI accept. The API's errors name their field (``entry 'x': cron: ...``); they
are mapped back onto the form field they belong to.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from celery_dcron.api import DynamicTasks
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec
from celery_dcron.exceptions import DcronError

if TYPE_CHECKING:
    from .models import DynamicTask

__all__ = ["SOURCE", "celery_app", "dynamic_tasks", "spec_for", "validate_task"]

#: The ``source`` of the registry entries this app manages.
SOURCE = "django"

#: API field name -> model field name, where they differ.
_FIELD_MAP = {
    "every": "interval_seconds",
    "tz": "timezone",
    "schedule": "schedule_kind",
}
_MODEL_FIELDS = {
    "name",
    "task",
    "cron",
    "interval_seconds",
    "at",
    "timezone",
    "args",
    "kwargs",
    "payload",
    "options",
    "enabled",
    "start_at",
    "end_at",
    "max_runs",
    "after_run",
    "misfire_policy",
    "misfire_grace",
    "description",
    "schedule_kind",
    "namespace",
}
_PREFIX = re.compile(r"^entry '.*?': ")
_FIELD = re.compile(r"^([a-z_]+)(?:\.[a-z_]+)?[: ]")


def celery_app() -> Any:
    """The Celery app: the ``DCRON_CELERY_APP`` Django setting (``"proj.celery:app"`` or
    ``"proj.celery.app"``), else Celery's current app (the project's, when its
    ``__init__`` imports it as Celery's Django guide recommends)."""
    path = getattr(django_settings, "DCRON_CELERY_APP", None)
    if path:
        return import_string(path.replace(":", "."))
    from celery import current_app

    return current_app._get_current_object()  # type: ignore[attr-defined]


@lru_cache(maxsize=32)
def _tasks_for(app_id: int, namespace: str) -> DynamicTasks:
    app = celery_app()
    base = Settings.from_app(app)
    settings = base if not namespace else replace(base, namespace=namespace)
    return DynamicTasks(app, settings=settings)


def dynamic_tasks(namespace: str = "") -> DynamicTasks:
    """The :class:`DynamicTasks` of ``namespace`` (blank: the app's ``dcron_namespace``)."""
    return _tasks_for(id(celery_app()), namespace)


def _fields(task: DynamicTask) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "args": task.args if task.args is not None else [],
        "kwargs": task.kwargs if task.kwargs is not None else {},
        "options": task.options or {},
        "enabled": bool(task.enabled),
        "start_at": task.start_at,
        "end_at": task.end_at,
        "max_runs": task.max_runs,
        # "delete" becomes a tombstone in the registry, so that a reconcile can tell a
        # finished one-off (delete the row) from an entry Redis lost (write it back).
        "after_run": {"": None, "delete": "tombstone"}.get(task.after_run, task.after_run),
        "misfire_policy": task.misfire_policy or None,
        "misfire_grace": task.misfire_grace,
        "description": task.description or "",
    }
    if task.payload is not None:
        fields["payload"] = task.payload
    if task.timezone:
        fields["tz"] = task.timezone
    kind = task.schedule_kind
    if kind == "cron":
        fields["cron"] = task.cron or None
    elif kind == "interval":
        fields["every"] = task.interval_seconds
    elif kind == "at":
        fields["at"] = task.at
    else:
        raise ValidationError({"schedule_kind": f"unknown schedule kind {kind!r}"})
    return fields


def spec_for(task: DynamicTask, *, now_ms: int = 0, check_tasks: bool | None = None) -> EntrySpec:
    """The registry entry of a row. Raises :class:`ValidationError` with field errors.

    ``now_ms``: a one-off ``at`` must be after it (0: any time, for the sync)."""
    tasks = dynamic_tasks(task.namespace)
    if check_tasks is not None and check_tasks != tasks.check_tasks:
        tasks = DynamicTasks(
            tasks.app, settings=tasks.settings, registry=tasks.registry, check_tasks=check_tasks
        )
    fields = _fields(task)
    _require_schedule(task, fields)
    try:
        spec = tasks.build(task.name, task.task or None, now_ms=now_ms, **fields)
    except DcronError as exc:
        raise _validation_error(str(exc)) from None
    return spec.with_changes(source=SOURCE)


def _require_schedule(task: DynamicTask, fields: dict[str, Any]) -> None:
    missing = {
        "cron": ("cron", "a cron expression such as '*/5 * * * *'"),
        "every": ("interval_seconds", "a number of seconds"),
        "at": ("at", "a date and time"),
    }
    for key, (field, what) in missing.items():
        if key in fields and fields[key] in (None, ""):
            raise ValidationError({field: f"This schedule needs {what}."})
    if task.schedule_kind != "cron" and task.timezone and task.schedule_kind != "at":
        raise ValidationError({"timezone": "Only cron and one-off schedules use a timezone."})


def _validation_error(message: str) -> ValidationError:
    """``entry 'x': cron: bad field`` -> ValidationError({"cron": "cron: bad field"})."""
    text = _PREFIX.sub("", message)
    match = _FIELD.match(text)
    if match:
        field = _FIELD_MAP.get(match.group(1), match.group(1))
        if "unknown timezone" in text:
            field = "timezone"
        if field in _MODEL_FIELDS:
            return ValidationError({field: text})
    return ValidationError(text)


def validate_task(task: DynamicTask) -> None:
    """Model/form validation: the API's checks, plus name clashes with other entries.

    A one-off ``at`` must be in the future only when it is new or changed, so that an
    old one-off can still be edited (for its description, say)."""
    from .models import DynamicTask as Model

    changed_at = True
    if task.pk is not None:
        old = Model.objects.filter(pk=task.pk).values_list("at", flat=True).first()
        changed_at = old != task.at
    now_ms = int(time.time() * 1000) if changed_at else 0
    spec_for(task, now_ms=now_ms)
    clash = (
        Model.objects.filter(namespace=task.namespace, name=task.name).exclude(pk=task.pk).exists()
    )
    if clash:
        raise ValidationError({"name": "A dynamic task with this name exists in this namespace."})
    try:
        existing = dynamic_tasks(task.namespace).registry.get_entry(task.name)
    except DcronError:  # Redis away or a malformed entry: the save still goes to the database
        return
    if existing is not None and existing.source != SOURCE:
        where = (
            "the beat_schedule setting (a static entry)"
            if existing.source == "static"
            else "the Python API or the CLI"
        )
        raise ValidationError(
            {"name": f"An entry with this name was added through {where}; choose another name."}
        )
