"""The admin's form for a dynamic task: a task-name input that suggests the registered
tasks but takes any name (a task the web process does not import gets a warning)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from celery_dcron.taskcheck import load_task_modules

from .models import DynamicTask
from .validators import celery_app

__all__ = ["DynamicTaskForm", "TaskNameInput", "registered_tasks"]


def registered_tasks() -> list[str]:
    """Task names of the Celery app, without Celery's own (as django-celery-beat lists)."""
    app = celery_app()
    load_task_modules(app)
    return sorted(name for name in app.tasks if not name.startswith("celery."))


class TaskNameInput(forms.TextInput):
    """A text input suggesting the registered task names (``<datalist>``): a task the
    web process does not import can still be typed."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__({"list": "dcron-task-names", "size": 40, **(attrs or {})})
        self.names: list[str] = []

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        options = format_html_join("", '<option value="{}">', ((n,) for n in self.names))
        return format_html(
            '{}<datalist id="dcron-task-names">{}</datalist>',
            super().render(name, value, attrs, renderer),
            options,
        )


class DynamicTaskForm(forms.ModelForm):
    task = forms.CharField(
        label=_("task"),
        required=False,
        max_length=200,
        widget=TaskNameInput,
        help_text=_(
            "A Celery task name (the registered ones are suggested; another one is saved "
            "with a warning). Blank: send the payload to dcron_default_task."
        ),
    )

    class Meta:
        model = DynamicTask
        exclude = ("last_run_at", "total_run_count")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        widget = self.fields["task"].widget
        assert isinstance(widget, TaskNameInput)
        widget.names = registered_tasks()
