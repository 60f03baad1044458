"""The Celery app the end-to-end tests run under ``celery beat`` and ``celery worker``.

Configured by environment variables so each test can start several instances:

    DCRON_E2E_BROKER     broker URL (a test redis-server)
    DCRON_E2E_REGISTRY   registry URL (dcron_redis_url)
    DCRON_E2E_NAMESPACE  dcron_namespace (default "e2e")
    DCRON_E2E_ENTRIES    number of 1-second interval entries "every-1s-<i>" (default 6)
    DCRON_E2E_CRON       "1" adds a cron entry with a seconds field ("*/2 * * * * *")
    DCRON_E2E_POLICY     dcron_misfire_policy (default "once")
    DCRON_E2E_TTL        dcron_node_ttl in seconds (default 3)
    DCRON_E2E_RESULTS    a Redis URL: the ``record`` task writes (task id, tick) there
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from celery_dcron import cron

app = Celery("beatapp")

_entries = int(os.environ.get("DCRON_E2E_ENTRIES", "6"))
_schedule: dict[str, dict[str, object]] = {
    f"every-1s-{i}": {"task": "beatapp.record", "schedule": 1.0, "args": [i]}
    for i in range(_entries)
}
if os.environ.get("DCRON_E2E_CRON") == "1":
    _schedule["cron-2s"] = {"task": "beatapp.record", "schedule": cron("*/2 * * * * *")}

app.conf.update(
    broker_url=os.environ.get("DCRON_E2E_BROKER", "redis://127.0.0.1:6379/15"),
    dcron_redis_url=os.environ.get("DCRON_E2E_REGISTRY", "redis://127.0.0.1:6379/14"),
    dcron_namespace=os.environ.get("DCRON_E2E_NAMESPACE", "e2e"),
    dcron_node_ttl=float(os.environ.get("DCRON_E2E_TTL", "3")),
    dcron_heartbeat_interval=float(os.environ.get("DCRON_E2E_HEARTBEAT", "0.5")),
    dcron_misfire_policy=os.environ.get("DCRON_E2E_POLICY", "once"),
    beat_schedule=_schedule,
    broker_connection_retry_on_startup=True,
    task_default_queue="e2e",
    result_backend=None,
    timezone="UTC",
)


@app.task(name="beatapp.record", bind=True)
def record(self, i: int | None = None) -> str:  # type: ignore[no-untyped-def]
    """Record that this tick ran (the worker side of the tests)."""
    url = os.environ.get("DCRON_E2E_RESULTS")
    tick = getattr(self.request, "dcron_tick", None)
    name = getattr(self.request, "periodic_task_name", None)
    if url:
        client = redis.Redis.from_url(url)
        client.rpush("e2e:executed", f"{self.request.id}|{name}|{tick}")
        client.close()
    return f"{name} {tick}"
