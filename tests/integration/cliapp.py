"""A Celery app for the CLI tests: ``celery -A tests.integration.cliapp dcron ...``.

The Redis URL and namespace come from ``DCRON_TEST_REDIS_URL`` / ``DCRON_TEST_NAMESPACE``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery("cliapp")
app.conf.update(
    broker_url="memory://",
    timezone="UTC",
    dcron_redis_url=os.environ.get("DCRON_TEST_REDIS_URL", "redis://localhost:6379/0"),
    dcron_namespace=os.environ.get("DCRON_TEST_NAMESPACE", "default"),
    dcron_default_task="cliapp.sink",
)


@app.task(name="cliapp.t")
def t(*args: Any, **kwargs: Any) -> None: ...


@app.task(name="cliapp.sink")
def sink(payload: Any = None) -> None: ...
