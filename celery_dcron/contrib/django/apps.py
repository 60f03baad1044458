"""The Django app config: label ``celery_dcron``; connects the model signals that sync
saves and deletes to the registry (``sync.py``)."""

from __future__ import annotations

from django.apps import AppConfig


class DcronConfig(AppConfig):
    name = "celery_dcron.contrib.django"
    label = "celery_dcron"
    verbose_name = "Distributed beat (celery_dcron)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import sync

        sync.connect_signals()
