"""Admin pages: dynamic tasks (with live registry state) and the read-only cluster page."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from celery_dcron.exceptions import DcronError
from celery_dcron.status import ClusterView
from celery_dcron.ticks import tick_iso

from . import sync
from .models import ClusterStatus, DynamicTask
from .validators import celery_app, dynamic_tasks

__all__ = ["ClusterStatusAdmin", "DynamicTaskAdmin", "DynamicTaskForm"]

RECENT_RUNS = 10


def registered_tasks() -> list[str]:
    """Task names of the Celery app, without Celery's own (as django-celery-beat lists)."""
    app = celery_app()
    app.loader.import_default_modules()
    return sorted(name for name in app.tasks if not name.startswith("celery."))


class DynamicTaskForm(forms.ModelForm):
    task = forms.ChoiceField(
        label=_("task"),
        required=False,
        help_text=_(
            "A task registered in the Celery app. Blank: send the payload to dcron_default_task."
        ),
    )

    class Meta:
        model = DynamicTask
        exclude = ("last_run_at", "total_run_count")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = registered_tasks()
        current = self.initial.get("task") or (self.instance.task if self.instance else "")
        if current and current not in names:
            names.append(current)
        task_field = self.fields["task"]
        assert isinstance(task_field, forms.ChoiceField)
        task_field.choices = [("", "---------")] + [(n, n) for n in names]


def _registry_rows(tasks: Iterable[DynamicTask]) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Registry data of each row (by pk): one snapshot per namespace on the page."""
    by_namespace: dict[str, list[DynamicTask]] = defaultdict(list)
    for task in tasks:
        by_namespace[task.namespace].append(task)
    rows: dict[int, dict[str, Any]] = {}
    errors = []
    for namespace, group in by_namespace.items():
        dt = dynamic_tasks(namespace)
        try:
            view = ClusterView.read(dt.registry, dt.settings, [t.name for t in group])
        except DcronError as exc:
            errors.append(f"{dt.settings.namespace}: {exc}")
            continue
        for task in group:
            spec = view.entries.get(task.name)
            if spec is None:
                rows[task.pk] = {"state": "missing"}
                continue
            if spec.source != "django":
                rows[task.pk] = {"state": f"clash ({spec.source} entry)"}
                continue
            data = view.entry(task.name)
            rows[task.pk] = data
    return rows, errors


@admin.register(DynamicTask)
class DynamicTaskAdmin(admin.ModelAdmin):
    form = DynamicTaskForm
    list_display = (
        "name",
        "task",
        "schedule",
        "enabled",
        "registry_state",
        "owner",
        "next_run",
        "last_run",
        "runs",
    )
    list_filter = ("enabled", "schedule_kind", "namespace")
    search_fields = ("name", "task", "description")
    actions = ("enable_tasks", "disable_tasks", "run_now", "reset_runs")
    readonly_fields = ("recent_runs", "total_run_count", "last_run_at", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description", "namespace")}),
        (
            _("Schedule"),
            {"fields": ("schedule_kind", "cron", "interval_seconds", "at", "timezone")},
        ),
        (_("Arguments"), {"fields": ("args", "kwargs", "payload", "options")}),
        (
            _("Limits"),
            {
                "fields": (
                    "start_at",
                    "end_at",
                    "max_runs",
                    "after_run",
                    "misfire_policy",
                    "misfire_grace",
                )
            },
        ),
        (
            _("Runs"),
            {
                "fields": (
                    "recent_runs",
                    "total_run_count",
                    "last_run_at",
                    "created_at",
                    "updated_at",
                )
            },
        ),
    )

    # -- list ----------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        cl = context.get("cl") if context else None
        if cl is not None:
            page = list(cl.result_list)  # evaluated once; the template reuses these objects
            rows, errors = _registry_rows(page)
            for task in page:
                task._dcron = rows.get(task.pk, {})
            for error in errors:
                messages.warning(request, f"Registry unavailable, state not shown: {error}")
        return response

    @staticmethod
    def _reg(task: DynamicTask) -> dict[str, Any]:
        return getattr(task, "_dcron", {})

    @admin.display(description=_("schedule"))
    def schedule(self, task: DynamicTask) -> str:
        text = self._reg(task).get("schedule_text")
        if text:
            return str(text)
        if task.schedule_kind == "cron":
            return f"cron {task.cron!r} {task.timezone}".strip()
        if task.schedule_kind == "interval":
            return f"every {task.interval_seconds:g}s" if task.interval_seconds else "-"
        return f"at {task.at}"

    @admin.display(description=_("state"))
    def registry_state(self, task: DynamicTask) -> str:
        return str(self._reg(task).get("state", "-"))

    @admin.display(description=_("owner"))
    def owner(self, task: DynamicTask) -> str:
        return str(self._reg(task).get("owner") or "-")

    @admin.display(description=_("next run"))
    def next_run(self, task: DynamicTask) -> str:
        return str(self._reg(task).get("next_tick") or "-")

    @admin.display(description=_("last run"))
    def last_run(self, task: DynamicTask) -> str:
        return str(self._reg(task).get("last_tick") or "-")

    @admin.display(description=_("runs"))
    def runs(self, task: DynamicTask) -> str:
        runs = self._reg(task).get("runs")
        return "-" if runs is None else str(runs)

    # -- change form -----------------------------------------------------------------

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        sync.take_failures()
        response = super().changeform_view(request, object_id, form_url, extra_context)
        for failure in sync.take_failures():
            messages.warning(request, failure)
        return response

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        sync.take_failures()
        response = super().delete_view(request, object_id, extra_context)
        for failure in sync.take_failures():
            messages.warning(request, failure)
        return response

    @admin.display(description=_("recent runs"))
    def recent_runs(self, task: DynamicTask) -> str:  # a SafeString
        """The last results of this task from django-celery-results, if installed."""
        if task.pk is None:
            return "-"
        from django.apps import apps

        if not apps.is_installed("django_celery_results"):
            return "django-celery-results is not installed"
        from django_celery_results.models import TaskResult

        results = TaskResult.objects.filter(periodic_task_name=task.name).order_by("-date_created")[
            :RECENT_RUNS
        ]
        if not results:
            return "no results yet (results need result_extended = True)"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (
                    r.status,
                    r.date_done or r.date_created,
                    (r.result or "")[:200],
                    r.task_id,
                )
                for r in results
            ),
        )
        return str(
            format_html(
                '<table class="dcron-runs"><thead><tr><th>status</th><th>date</th>'
                "<th>result</th><th>task id</th></tr></thead><tbody>{}</tbody></table>",
                rows,
            )
        )

    # -- actions ---------------------------------------------------------------------

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[DynamicTask], on: bool) -> None:
        sync.take_failures()
        count = 0
        for task in queryset:
            if task.enabled != on:
                task.enabled = on
                task.save(update_fields=["enabled", "updated_at"])
                count += 1
        word = "enabled" if on else "disabled"
        self.message_user(request, f"{count} tasks {word}.", messages.SUCCESS)

    @admin.action(description=_("Enable selected tasks"))
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description=_("Disable (pause) selected tasks"))
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        self._set_enabled(request, queryset, False)

    def _each(
        self, request: HttpRequest, queryset: QuerySet[DynamicTask], verb: str, fn: Any
    ) -> None:
        done = []
        for task in queryset:
            try:
                result = fn(dynamic_tasks(task.namespace), task)
            except DcronError as exc:
                self.message_user(request, f"{task}: {exc}", messages.ERROR)
                continue
            done.append(f"{task}" + (f" (task id {result})" if result else ""))
        if done:
            self.message_user(request, f"{verb}: {', '.join(done)}", messages.SUCCESS)

    @admin.action(description=_("Run selected tasks now (once, extra)"))
    def run_now(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        self._each(request, queryset, "Sent to run now", lambda dt, task: dt.run_now(task.name))

    @admin.action(description=_("Reset run count and last run"))
    def reset_runs(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        def reset(dt: Any, task: DynamicTask) -> None:
            dt.reset(task.name)
            DynamicTask.objects.filter(pk=task.pk).update(total_run_count=0, last_run_at=None)

        self._each(request, queryset, "Reset", reset)


@admin.register(ClusterStatus)
class ClusterStatusAdmin(admin.ModelAdmin):
    """The read-only cluster page: nodes, their status, heartbeat age, entries owned."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        namespaces = sorted(
            {
                dynamic_tasks(ns).settings.namespace
                for ns in DynamicTask.objects.values_list("namespace", flat=True).distinct()
            }
            | {dynamic_tasks("").settings.namespace}
        )
        clusters: list[dict[str, Any]] = []
        for namespace in namespaces:
            dt = dynamic_tasks(namespace)
            try:
                view = ClusterView.read(dt.registry, dt.settings)
            except DcronError as exc:
                clusters.append({"namespace": namespace, "error": str(exc)})
                continue
            owned = {n.id for n in view.nodes}
            clusters.append(
                {
                    "namespace": namespace,
                    "strategy": dt.settings.strategy,
                    "paused": view.paused,
                    "reset": None if view.reset_ms is None else tick_iso(view.reset_ms),
                    "server_time": tick_iso(view.server_ms),
                    "nodes": [view.node(n) for n in view.nodes],
                    "entries": len(view.snapshot.names),
                    "unowned": sum(
                        1 for n in view.snapshot.names if view.owner.get(n) not in owned
                    ),
                    "broken": sorted(view.bad.items()),
                    "by_source": _count_sources(view),
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Cluster",
            "clusters": clusters,
            "opts": self.model._meta,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/celery_dcron/cluster.html", context)


def _count_sources(view: ClusterView) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for spec in view.entries.values():
        counts[spec.source] += 1
    return sorted(counts.items())
