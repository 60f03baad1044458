"""Admin pages: dynamic tasks (with live registry state) and the read-only cluster page."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.apps import apps
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _

from celery_dcron.exceptions import DcronError
from celery_dcron.schedules import datetime_to_ms
from celery_dcron.status import ClusterView
from celery_dcron.ticks import tick_iso

from . import sync
from .forms import DynamicTaskForm
from .live import LiveEntry, app_zone, read_live, when, when_parts
from .models import ClusterStatus, DynamicTask
from .validators import dynamic_tasks, registered_task

__all__ = ["ClusterStatusAdmin", "DynamicTaskAdmin", "DynamicTaskForm"]

RECENT_RUNS = 10
#: The cluster page reloads itself this often (seconds).
CLUSTER_REFRESH_S = 5


def result_link(task_id: str, pk: Any = None) -> SafeString:
    """``task_id`` linked to its django-celery-results row (``pk``, or looked up), or to
    the results list searched for it when there is no row yet; plain without the app."""
    if apps.is_installed("django_celery_results"):
        try:
            if pk is None:
                from django_celery_results.models import TaskResult

                pk = TaskResult.objects.filter(task_id=task_id).values_list("pk", flat=True)
                pk = pk.first()
            if pk is not None:
                url = reverse("admin:django_celery_results_taskresult_change", args=[pk])
            else:
                url = reverse("admin:django_celery_results_taskresult_changelist")
                url += "?" + urlencode({"q": task_id})
        except NoReverseMatch:  # the app's models are not in this admin site
            pass
        else:
            return format_html('<a href="{}"><code>{}</code></a>', url, task_id)
    return format_html("<code>{}</code>", task_id)


def _when(ms: int | None, entry: LiveEntry) -> SafeString | str:
    """``2026-12-04 14:05:00 CET (in 3 min)``, the exact UTC instant on hover."""
    if ms is None:
        return "-"
    moment, distance = when_parts(ms, entry.tz, entry.now_ms)
    return format_html(
        '<span class="dcron-when" title="{}">{} <span class="dcron-rel">({})</span></span>',
        tick_iso(ms),
        moment,
        distance,
    )


def _state(entry: LiveEntry) -> SafeString | str:
    """The registry's state, and under it a mark when its last publish was rejected (the
    whole error on hover)."""
    error = entry.last_error
    if error is None:
        return entry.state
    return format_html(
        '{}<br><span class="dcron-error" style="color: var(--error-fg, #ba2121)" title="{}">'
        "last publish rejected ({})</span>",
        entry.state,
        error.error,
        error.reason,
    )


def breakable(text: str) -> SafeString:
    """``text`` with line-break opportunities after ``. : / _``: long task names and
    node ids wrap instead of widening the list."""
    parts = re.split(r"(?<=[.:/_])", text)
    return format_html_join(mark_safe("<wbr>"), "{}", ((p,) for p in parts))


@admin.register(DynamicTask)
class DynamicTaskAdmin(admin.ModelAdmin):
    form = DynamicTaskForm
    change_list_template = "admin/celery_dcron/dynamictask_change_list.html"
    # "enabled" is in the state column ("paused"): the list fits 1,400 px with both sidebars.
    list_display = (
        "name",
        "task_name",
        "schedule",
        "registry_state",
        "owner",
        "next_run",
        "last_run",
        "runs",
    )
    list_filter = ("enabled", "schedule_kind", "namespace")
    search_fields = ("name", "task", "description")
    actions = ("enable_tasks", "disable_tasks", "run_now", "reset_runs")
    #: Read-only on the change page: live registry state and results, then the row's dates.
    readonly_fields = (
        "registry_state", "owner", "next_run", "last_run", "runs", "last_error", "recent_runs",
        "created_at", "updated_at",
    )  # fmt: skip
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description", "namespace")}),
        (
            _("Schedule"),
            {
                "fields": (
                    "schedule_kind",
                    "cron",
                    "interval_seconds",
                    "at",
                    "timezone",
                    "solar_event",
                    "latitude",
                    "longitude",
                )
            },
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
        (_("Runs (live, from the registry)"), {"fields": readonly_fields}),
    )

    # -- live registry state ---------------------------------------------------------

    def _attach(
        self, request: HttpRequest, tasks: list[DynamicTask], *, with_static: bool = False
    ) -> list[tuple[str, LiveEntry]]:
        """Read the registry for ``tasks`` (one round trip per namespace) and hang each
        row's state on it. Returns the static entries when ``with_static``."""
        live = read_live(tasks, static_of=[""], with_static=with_static)
        for task in tasks:
            task._dcron = live.rows.get((task.namespace, task.name))
        for error in live.errors:
            messages.warning(request, f"Registry unavailable, state not shown: {error}")
        return live.static

    @staticmethod
    def _live(task: DynamicTask) -> LiveEntry | None:
        entry: LiveEntry | None = getattr(task, "_dcron", None)
        return entry

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        cl = context.get("cl") if context else None
        if context is not None and cl is not None:
            page = list(cl.result_list)  # evaluated once; the template reuses these objects
            filtered = bool(cl.query or cl.has_active_filters)
            static = self._attach(request, page, with_static=not filtered)
            context["dcron_filtered"] = filtered
            context["dcron_static"] = [
                {
                    "namespace": namespace,
                    "name": e.name,
                    "task": breakable(e.spec.task) if e.spec else "",
                    "schedule": e.schedule_text,
                    "state": _state(e),
                    "owner": breakable(e.owner) if e.owner else "-",
                    "next": _when(e.next_ms, e),
                    "last": _when(e.last_ms, e),
                    "runs": e.runs,
                }
                for namespace, e in static
            ]
            context["dcron_namespaces"] = len({n for n, _ in static}) > 1
        return response

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        task = super().get_object(request, object_id, from_field)
        if task is not None and request.method == "GET":
            self._attach(request, [task])
        return task

    @admin.display(description=_("schedule"))
    def schedule(self, task: DynamicTask) -> str:
        live = self._live(task)
        if live is not None and live.schedule_text:
            return live.schedule_text
        if task.schedule_kind == "cron":
            return f"cron {task.cron!r} {task.timezone}".strip()
        if task.schedule_kind == "interval":
            return f"every {task.interval_seconds:g}s" if task.interval_seconds else "-"
        if task.schedule_kind == "solar":
            return f"solar {task.solar_event} ({task.latitude}, {task.longitude})"
        return f"at {task.at}"

    @admin.display(description=_("task"), ordering="task")
    def task_name(self, task: DynamicTask) -> SafeString:
        return breakable(task.task or "-")

    @admin.display(description=_("state"))
    def registry_state(self, task: DynamicTask) -> SafeString | str:
        """The registry's state (marked when its last publish was rejected); without the
        registry, the row's enabled flag."""
        live = self._live(task)
        if live is None:
            return "enabled" if task.enabled else "disabled"
        return _state(live)

    @admin.display(description=_("owner"))
    def owner(self, task: DynamicTask) -> SafeString | str:
        live = self._live(task)
        return breakable(live.owner) if live and live.owner else "-"

    @admin.display(description=_("next run"))
    def next_run(self, task: DynamicTask) -> SafeString | str:
        live = self._live(task)
        return "-" if live is None else _when(live.next_ms, live)

    @admin.display(description=_("last run"))
    def last_run(self, task: DynamicTask) -> SafeString | str:
        live = self._live(task)
        return "-" if live is None else _when(live.last_ms, live)

    @admin.display(description=_("runs"))
    def runs(self, task: DynamicTask) -> str:
        """The registry's run count: the one count the list and the change page show."""
        live = self._live(task)
        return "-" if live is None or live.runs is None else str(live.runs)

    @admin.display(description=_("last error"))
    def last_error(self, task: DynamicTask) -> SafeString | str:
        """Its last publish that can never succeed (not retried), until a later tick is
        sent: why, the tick, the task id and the error."""
        live = self._live(task)
        error = None if live is None else live.last_error
        if live is None or error is None:
            return "-"
        return format_html(
            "publish rejected ({}) at {} {}, version {}, task id {}, node {}:<br><code>{}</code>",
            error.reason,
            "run-now" if error.run_now else "tick",
            _when(error.tick_ms, live),
            error.version,
            result_link(error.task_id),
            error.node,
            error.error,
        )

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

    def save_model(self, request: HttpRequest, obj: DynamicTask, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.task and registered_task(obj.task) is None:
            messages.warning(
                request,
                f"Task {obj.task!r} is not registered in this web process's Celery app: "
                "saved anyway. Check the name; a worker that does not know it rejects the runs.",
            )

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        sync.take_failures()
        response = super().delete_view(request, object_id, extra_context)
        for failure in sync.take_failures():
            messages.warning(request, failure)
        return response

    @admin.display(description=_("recent runs"))
    def recent_runs(self, task: DynamicTask) -> SafeString | str:
        """The last results of this task from django-celery-results, if installed."""
        if task.pk is None:
            return "-"
        if not apps.is_installed("django_celery_results"):
            return "django-celery-results is not installed"
        from django_celery_results.models import TaskResult

        results = TaskResult.objects.filter(periodic_task_name=task.name).order_by("-date_created")[
            :RECENT_RUNS
        ]
        if not results:
            return "no results yet (results need result_extended = True)"
        live = self._live(task)

        def shown(date: datetime) -> SafeString | str:
            aware = date.tzinfo is not None and date.utcoffset() is not None
            return _when(datetime_to_ms(date), live) if live and aware else str(date)

        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r.status,
                    shown(r.date_done or r.date_created),
                    (r.result or "")[:200],
                    result_link(r.task_id, r.pk),
                )
                for r in results
            ),
        )
        return format_html(
            '<table class="dcron-runs"><thead><tr><th>status</th><th>date</th>'
            "<th>result</th><th>task id</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    # -- actions ---------------------------------------------------------------------

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[DynamicTask], on: bool) -> None:
        sync.take_failures()
        count = 0
        with transaction.atomic(using=queryset.db):  # one batched write at commit
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

    @admin.action(description=_("Run selected tasks now (once, extra)"))
    def run_now(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        done = []
        for task in queryset:
            try:
                tid = dynamic_tasks(task.namespace).run_now(task.name)
            except DcronError as exc:
                self.message_user(request, f"{task}: {exc}", messages.ERROR)
                continue
            done.append(format_html("{} (task id {})", task, result_link(tid)))
        if done:
            joined = format_html_join(", ", "{}", ((d,) for d in done))
            self.message_user(request, format_html("Sent to run now: {}", joined), messages.SUCCESS)

    @admin.action(description=_("Reset run count and last run"))
    def reset_runs(self, request: HttpRequest, queryset: QuerySet[DynamicTask]) -> None:
        done = []
        for task in queryset:
            try:
                dynamic_tasks(task.namespace).reset(task.name)
            except DcronError as exc:
                self.message_user(request, f"{task}: {exc}", messages.ERROR)
                continue
            DynamicTask.objects.filter(pk=task.pk).update(total_run_count=0, last_run_at=None)
            done.append(str(task))
        if done:
            self.message_user(request, f"Reset: {', '.join(done)}", messages.SUCCESS)


@admin.register(ClusterStatus)
class ClusterStatusAdmin(admin.ModelAdmin):
    """The read-only cluster page: nodes, their status, heartbeat age, entries owned.
    It reloads itself every :data:`CLUSTER_REFRESH_S` seconds."""

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
            tz = app_zone(dt)
            now_ms = view.server_ms
            clusters.append(
                {
                    "namespace": namespace,
                    "strategy": dt.settings.strategy,
                    "paused": view.paused,
                    "reset": None if view.reset_ms is None else when(view.reset_ms, tz, now_ms),
                    "server_time": when_parts(now_ms, tz, now_ms)[0],
                    "nodes": [
                        {**view.node(n), "started": n.started_ms and when(n.started_ms, tz, now_ms)}
                        for n in view.nodes
                    ],
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
            "refresh_s": CLUSTER_REFRESH_S,
            "opts": self.model._meta,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/celery_dcron/cluster.html", context)


def _count_sources(view: ClusterView) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for spec in view.entries.values():
        counts[spec.source] += 1
    return sorted(counts.items())
