"""Fixtures of the Django app tests: the test Celery app pointed at a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_dcron.api import DynamicTasks
from celery_dcron.contrib.django import validators
from tests.django.celeryapp import app as celery_app


@pytest.fixture
def dcron_app(redis_url: str) -> Iterator[Any]:
    """The tests' Celery app with ``dcron_redis_url`` on the session redis-server (emptied)."""
    old = celery_app.conf.dcron_redis_url
    celery_app.conf.dcron_redis_url = redis_url
    validators._tasks_for.cache_clear()
    try:
        yield celery_app
    finally:
        celery_app.conf.dcron_redis_url = old
        validators._tasks_for.cache_clear()


@pytest.fixture
def dt(dcron_app: Any) -> DynamicTasks:
    """DynamicTasks of the tests' default namespace (``djtest``)."""
    return validators.dynamic_tasks("")


def make_task(**fields: Any) -> Any:
    """An unsaved DynamicTask with sensible defaults (an every-second cron of djtest.ping)."""
    from celery_dcron.contrib.django.models import DynamicTask

    defaults: dict[str, Any] = {
        "name": "t1",
        "task": "djtest.ping",
        "schedule_kind": "cron",
        "cron": "* * * * * *",
    }
    defaults.update(fields)
    return DynamicTask(**defaults)
