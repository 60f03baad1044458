"""One validation for the model, the admin form and the sync: the core API's.

A row is turned into the keyword arguments of :meth:`DynamicTasks.build
<celery_dcron.api.DynamicTasks.build>`, so the admin accepts exactly what the Python API
and the CLI accept. The API's errors carry the field they concern
(:attr:`InvalidEntryError.field <celery_dcron.exceptions.InvalidEntryError>`); it is
mapped onto the model field, so the form shows each error under its input.

This module knows no model: it reads the attributes of any object shaped like a
``DynamicTask`` row (:class:`TaskRow`), and :mod:`.models` imports it, never the
reverse. Checks that need the table (a name used by another row) are the model's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from celery_dcron.api import DynamicTasks
from celery_dcron.config import Settings
from celery_dcron.entries import EntrySpec
from celery_dcron.enums import EntrySource
from celery_dcron.exceptions import DcronError, EntryNotFoundError
from celery_dcron.schedules import SolarSchedule
from celery_dcron.taskcheck import argument_mismatch, load_task_modules

__all__ = [
    "SOURCE",
    "TaskRow",
    "celery_app",
    "check_arguments",
    "check_name_free",
    "dynamic_tasks",
    "registered_task",
    "spec_for",
]

#: The ``source`` of the registry entries this app manages.
SOURCE = EntrySource.DJANGO

#: API field name (``InvalidEntryError.field``, or one of its dotted parts) -> model field.
_FIELD_MAP = {
    "every": "interval_seconds",
    "tz": "timezone",
    "schedule": "schedule_kind",
    "lat": "latitude",
    "lon": "longitude",
    "event": "solar_event",
}
_MODEL_FIELDS = frozenset(
    {
        "name", "task", "cron", "interval_seconds", "at", "timezone", "solar_event",
        "latitude", "longitude", "args", "kwargs", "payload", "options", "enabled",
        "start_at", "end_at", "max_runs", "after_run", "misfire_policy", "misfire_grace",
        "description", "schedule_kind", "namespace",
    }
)  # fmt: skip


class TaskRow(Protocol):
    """What this module reads of a ``DynamicTask`` row."""

    name: str
    namespace: str
    task: str
    schedule_kind: str
    cron: str
    interval_seconds: float | None
    at: datetime | None
    timezone: str
    solar_event: str
    latitude: float | None
    longitude: float | None
    args: Any
    kwargs: Any
    payload: Any
    options: Any
    enabled: bool
    start_at: datetime | None
    end_at: datetime | None
    max_runs: int | None
    after_run: str
    misfire_policy: str
    misfire_grace: float | None
    description: str


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
    # The web process may not import every task module: an unknown task name is a
    # warning of the admin (registered_task), not a refusal.
    return DynamicTasks(app, settings=settings, check_tasks=False)


def dynamic_tasks(namespace: str = "") -> DynamicTasks:
    """The :class:`DynamicTasks` of ``namespace`` (blank: the app's ``dcron_namespace``)."""
    return _tasks_for(id(celery_app()), namespace)


def registered_task(name: str) -> Any | None:
    """The task ``name`` of the Celery app (its task modules loaded as a worker loads
    them), or None when this process does not know it."""
    app = celery_app()
    if name not in app.tasks:
        load_task_modules(app)
    return app.tasks.get(name)


def _schedule_fields(row: TaskRow) -> dict[str, Any]:
    """The schedule keyword of :meth:`DynamicTasks.build` for the row's kind."""
    needs = {
        "cron": (("cron", row.cron, "a cron expression such as '*/5 * * * *'"),),
        "interval": (("interval_seconds", row.interval_seconds, "a number of seconds"),),
        "at": (("at", row.at, "a date and time"),),
        "solar": (
            ("solar_event", row.solar_event, "an event such as sunrise"),
            ("latitude", row.latitude, "a latitude (degrees, -90 to 90)"),
            ("longitude", row.longitude, "a longitude (degrees, -180 to 180)"),
        ),
    }
    if row.schedule_kind not in needs:
        raise ValidationError({"schedule_kind": f"unknown schedule kind {row.schedule_kind!r}"})
    missing = {f: f"This schedule needs {what}." for f, v, what in needs[row.schedule_kind]
               if v in (None, "")}  # fmt: skip
    if missing:
        raise ValidationError(missing)
    if row.timezone and row.schedule_kind not in ("cron", "at"):
        raise ValidationError({"timezone": "Only cron and one-off schedules use a timezone."})
    if row.schedule_kind == "cron":
        return {"cron": row.cron}
    if row.schedule_kind == "interval":
        return {"every": row.interval_seconds}
    if row.schedule_kind == "at":
        return {"at": row.at}
    # The API takes solar schedules as schedule=; the value object validates the place.
    return {
        "schedule": SolarSchedule(event=row.solar_event, lat=row.latitude, lon=row.longitude)  # type: ignore[arg-type]
    }


def _fields(row: TaskRow) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "args": row.args if row.args is not None else [],
        "kwargs": row.kwargs if row.kwargs is not None else {},
        "options": row.options or {},
        "enabled": bool(row.enabled),
        "start_at": row.start_at,
        "end_at": row.end_at,
        "max_runs": row.max_runs,
        # "delete" becomes a tombstone in the registry, so that a reconcile can tell a
        # finished one-off (delete the row) from an entry Redis lost (write it back).
        "after_run": {"": None, "delete": "tombstone"}.get(row.after_run, row.after_run),
        "misfire_policy": row.misfire_policy or None,
        "misfire_grace": row.misfire_grace,
        "description": row.description or "",
    }
    if row.payload is not None:
        fields["payload"] = row.payload
    if row.timezone:
        fields["tz"] = row.timezone
    return fields


def model_field(api_field: str | None) -> str | None:
    """The model field of an API error's ``field`` (``"options.queue"`` -> ``options``,
    ``"tz"`` -> ``timezone``), or None when it names no field of the form."""
    if not api_field:
        return None
    for part in reversed(api_field.split(".")):  # the most precise part first
        name = _FIELD_MAP.get(part, part)
        if name in _MODEL_FIELDS:
            return name
    return None


def _validation_error(exc: DcronError) -> ValidationError:
    field = model_field(getattr(exc, "field", None))
    return ValidationError({field: str(exc)} if field else str(exc))


def spec_for(row: TaskRow, *, now_ms: int = 0) -> EntrySpec:
    """The registry entry of a row. Raises :class:`ValidationError` with field errors.

    ``now_ms``: a one-off ``at`` must be after it (0: any time, for the sync)."""
    tasks = dynamic_tasks(row.namespace)
    try:
        fields = {**_fields(row), **_schedule_fields(row)}
        spec = tasks.build(row.name, row.task or None, now_ms=now_ms, **fields)
    except DcronError as exc:
        raise _validation_error(exc) from None
    return spec.with_changes(source=SOURCE)


def check_arguments(spec: EntrySpec, row: TaskRow) -> None:
    """When this process knows the entry's task, its args and kwargs must fit the task's
    signature (the core's rule, :func:`celery_dcron.taskcheck.argument_mismatch`): a
    mismatch is an error on the field to fix. An unknown task is not checked (the admin
    warns about it instead)."""
    task = registered_task(spec.task)
    if task is None:
        return
    mismatch = argument_mismatch(task, spec.args, spec.kwargs)
    if mismatch is None:
        return
    field, reason = mismatch
    if field == "kwargs" and not row.kwargs and row.payload is not None:
        field = "payload"  # the only keyword argument is the payload
    raise ValidationError({field: reason})


def check_name_free(row: TaskRow) -> None:
    """The name must not be taken in the registry by a static or an API entry."""
    try:
        existing = dynamic_tasks(row.namespace).get(row.name)
    except EntryNotFoundError:
        return
    except DcronError:  # Redis away or a malformed entry: the save still goes to the database
        return
    if existing.source != SOURCE:
        where = (
            "the beat_schedule setting (a static entry)"
            if existing.source is EntrySource.STATIC
            else "the Python API or the CLI"
        )
        raise ValidationError(
            {"name": f"An entry with this name was added through {where}; choose another name."}
        )
