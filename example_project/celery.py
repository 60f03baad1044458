"""The Celery app of the example project, configured from Django's settings.

Every ``CELERY_``-prefixed Django setting becomes a Celery setting: ``CELERY_BROKER_URL``
is ``broker_url``, ``CELERY_DCRON_NODE_TTL`` is ``dcron_node_ttl``, and so on.

    celery -A example_project worker -l info
    celery -A example_project beat -S celery_dcron.DistributedScheduler -l info   # x N
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
