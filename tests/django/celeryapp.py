"""The Celery app of the Django tests; ``dcron_app`` points it at the test's redis-server."""

from __future__ import annotations

from typing import Any

from celery import Celery

app = Celery("dcron_django_tests", set_as_current=False)
app.conf.update(
    broker_url="memory://",
    dcron_redis_url="redis://127.0.0.1:1/0",  # replaced by the dcron_app fixture
    dcron_namespace="djtest",
    dcron_default_task="djtest.receive",
    timezone="UTC",
)


@app.task(name="djtest.ping")
def ping(*args: Any, **kwargs: Any) -> str:
    return "pong"


@app.task(name="djtest.receive")
def receive(payload: Any = None) -> Any:
    return payload


@app.task(name="djtest.add")
def add(x: int, y: int = 0) -> int:
    return x + y
