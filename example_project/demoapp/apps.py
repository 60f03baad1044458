from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "example_project.demoapp"
    label = "demo"
    verbose_name = "celery_dcron demo"
