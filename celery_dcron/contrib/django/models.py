"""The durable copy of admin-managed dynamic tasks.

A :class:`DynamicTask` row is the source of truth for its registry entry (source
``"django"``): saving or deleting the row writes or removes the entry when the
transaction commits, and :func:`~celery_dcron.contrib.django.sync.reconcile` repairs the
registry from these rows (incrementally: the rows whose ``updated_at`` changed, so a
change made without ``save()``, by ``QuerySet.update()`` or raw SQL, should set it too,
or waits for the next full reconcile). Run state (owner, last tick, run count) lives in
Redis; the ``last_run_at`` / ``total_run_count`` columns are a copy refreshed by each
full reconcile, and by any reconcile that reads the row (the admin shows the registry's
values, never this copy).

Validation is :mod:`.validators` (the core API's rules), which imports no model.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from celery_dcron.schedules import SOLAR_EVENTS

from .validators import check_arguments, check_name_free, spec_for

__all__ = ["ClusterStatus", "DynamicTask"]


class ScheduleKind(models.TextChoices):
    CRON = "cron", _("cron (with optional seconds field)")
    INTERVAL = "interval", _("interval")
    AT = "at", _("one-off (at a date and time)")
    SOLAR = "solar", _("solar event (sunrise, sunset... at a place)")


class AfterRun(models.TextChoices):
    NOTHING = "", _("nothing (keep it, finished)")
    DISABLE = "disable", _("disable it")
    DELETE = "delete", _("delete it")
    TOMBSTONE = "tombstone", _("delete it and keep the name reserved")


class Misfire(models.TextChoices):
    DEFAULT = "", _("the dcron_misfire_policy setting")
    ONCE = "once", _("once: missed ticks run once")
    ALL = "all", _("all: every missed tick runs")
    SKIP = "skip", _("skip: missed ticks are dropped")


class DynamicTask(models.Model):
    """A scheduled entry managed in the Django admin."""

    name = models.CharField(
        _("name"),
        max_length=200,
        help_text=_("Unique in its namespace. Also the periodic_task_name of its results."),
    )
    namespace = models.CharField(
        _("namespace"),
        max_length=100,
        blank=True,
        default="",
        help_text=_("dcron_namespace of the cluster that runs it; blank: the app's setting."),
    )
    task = models.CharField(
        _("task"),
        max_length=200,
        blank=True,
        help_text=_("Registered Celery task. Blank: the payload goes to dcron_default_task."),
    )
    schedule_kind = models.CharField(
        _("schedule"), max_length=10, choices=ScheduleKind.choices, default=ScheduleKind.CRON
    )
    cron = models.CharField(
        _("cron expression"),
        max_length=120,
        blank=True,
        help_text=_(
            "5 fields (min hour day month weekday) or 6 with seconds first: "
            "'*/10 * * * * *' is every 10 seconds."
        ),
    )
    interval_seconds = models.FloatField(
        _("every (seconds)"), null=True, blank=True, help_text=_("For interval schedules.")
    )
    at = models.DateTimeField(_("run at"), null=True, blank=True, help_text=_("For one-offs."))
    solar_event = models.CharField(
        _("solar event"),
        max_length=24,
        blank=True,
        default="",
        choices=[(event, event.replace("_", " ")) for event in SOLAR_EVENTS],
        help_text=_("For solar schedules: Celery's solar events."),
    )
    latitude = models.FloatField(
        _("latitude"),
        null=True,
        blank=True,
        help_text=_("For solar schedules: degrees, -90 (south) to 90 (north)."),
    )
    longitude = models.FloatField(
        _("longitude"),
        null=True,
        blank=True,
        help_text=_("For solar schedules: degrees, -180 (west) to 180 (east)."),
    )
    timezone = models.CharField(
        _("timezone"),
        max_length=64,
        blank=True,
        default="",
        help_text=_("IANA name such as Europe/Paris, for cron; blank: the Celery timezone."),
    )
    args = models.JSONField(_("args"), default=list, blank=True, help_text=_("A JSON list."))
    kwargs = models.JSONField(_("kwargs"), default=dict, blank=True, help_text=_("A JSON object."))
    payload = models.JSONField(
        _("payload"),
        null=True,
        blank=True,
        help_text=_("Any JSON, passed as the payload keyword argument."),
    )
    options = models.JSONField(
        _("options"),
        default=dict,
        blank=True,
        help_text=_("apply_async options: queue, routing_key, exchange, priority, expires."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    start_at = models.DateTimeField(_("start at"), null=True, blank=True)
    end_at = models.DateTimeField(_("end at"), null=True, blank=True)
    max_runs = models.PositiveIntegerField(_("max runs"), null=True, blank=True)
    after_run = models.CharField(
        _("after the last run"),
        max_length=10,
        choices=AfterRun.choices,
        blank=True,
        default=AfterRun.NOTHING,
        help_text=_("For one-offs and tasks with max runs or an end."),
    )
    misfire_policy = models.CharField(
        _("missed ticks"), max_length=10, choices=Misfire.choices, blank=True, default=""
    )
    misfire_grace = models.FloatField(
        _("misfire grace (seconds)"),
        null=True,
        blank=True,
        help_text=_("A tick missed by more than this is dropped; blank: the setting."),
    )
    description = models.TextField(_("description"), blank=True)
    last_run_at = models.DateTimeField(_("last run (copy)"), null=True, editable=False)
    total_run_count = models.PositiveIntegerField(_("runs (copy)"), default=0, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("dynamic task")
        verbose_name_plural = _("dynamic tasks")
        ordering = ("namespace", "name")
        constraints = (
            models.UniqueConstraint(fields=("namespace", "name"), name="dcron_unique_name"),
        )
        # An incremental reconcile reads the rows of a namespace changed since a time.
        indexes = (models.Index(fields=("namespace", "updated_at"), name="dcron_changed"),)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Where the registry holds this row's entry now (a rename or a namespace change
        # removes the old entry after commit).
        self._stored_key: tuple[str, str] | None = (
            (self.namespace, self.name) if self.pk is not None else None
        )

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def clean(self) -> None:
        """The API's validation (:func:`~.validators.spec_for`), the task's signature
        when this process knows the task, and the name free in the table and the registry.

        A one-off ``at`` must be in the future only when it is new or changed, so that an
        old one-off can still be edited (for its description, say)."""
        changed_at = True
        if self.pk is not None:
            old = type(self)._default_manager.filter(pk=self.pk).values_list("at", flat=True)
            changed_at = old.first() != self.at
        spec = spec_for(self, now_ms=int(time.time() * 1000) if changed_at else 0)
        check_arguments(spec, self)
        others = type(self)._default_manager.filter(namespace=self.namespace, name=self.name)
        if others.exclude(pk=self.pk).exists():
            raise ValidationError(
                {"name": _("A dynamic task with this name exists in this namespace.")}
            )
        check_name_free(self)


class ClusterStatus(DynamicTask):
    """Not stored: gives the read-only cluster page its place in the admin index."""

    class Meta:
        proxy = True
        verbose_name = _("cluster")
        verbose_name_plural = _("cluster")
