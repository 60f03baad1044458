"""The Celery app the end-to-end tests run under ``celery beat`` and ``celery worker``.

Configured by environment variables so each test can start several instances:

    DCRON_E2E_BROKER     broker URL (a test redis-server)
    DCRON_E2E_REGISTRY   registry URL (dcron_redis_url)
    DCRON_E2E_REGISTRY_OPTIONS  dcron_redis_transport_options as JSON (Sentinel's master_name)
    DCRON_E2E_WAIT_REPLICAS     dcron_redis_wait_replicas (default 0)
    DCRON_E2E_NAMESPACE  dcron_namespace (default "e2e")
    DCRON_E2E_ENTRIES    number of 1-second interval entries "every-1s-<i>" (default 6)
    DCRON_E2E_CRON       "1" adds a cron entry with a seconds field ("*/2 * * * * *")
    DCRON_E2E_IDLE_STATIC  number of hourly static entries "idle-static-<i>" (default 0)
    DCRON_E2E_POLICY     dcron_misfire_policy (default "once")
    DCRON_E2E_TTL        dcron_node_ttl in seconds (default 3)
    DCRON_E2E_RESULTS    a Redis URL: the ``record`` task writes (task id, tick) there
    DCRON_E2E_QUEUE      the queue the ticks are sent to (default "e2e")
    DCRON_E2E_GRACE      dcron_misfire_grace in seconds (default: none)
    DCRON_E2E_CONFIRM    "1": AMQP publisher confirms (broker_transport_options)
    DCRON_E2E_METRICS_PORT    dcron_metrics_port (Prometheus metrics on 127.0.0.1)
    DCRON_E2E_REMOTE_CONTROL  "1": beat_enable_remote_control (Celery 5.7's beat pidbox)
    DCRON_E2E_ENQUEUE    dcron_enqueue ("auto", the default, or "publish")

Every ``publish_failed`` signal is logged by the beat as
``e2e: publish_failed signal <entry> tick=<T> exc=<error>``, so that a test can check
that the signal (the hook users connect) was sent.
"""

from __future__ import annotations

import json
import os

import redis
from celery import Celery
from celery.utils.log import get_logger

from celery_dcron import cron, signals
from celery_dcron.ticks import tick_iso

app = Celery("beatapp")

_entries = int(os.environ.get("DCRON_E2E_ENTRIES", "6"))
_schedule: dict[str, dict[str, object]] = {
    f"every-1s-{i}": {"task": "beatapp.record", "schedule": 1.0, "args": [i]}
    for i in range(_entries)
}
_schedule.update(  # hourly: a large beat_schedule (written in pages) that stays idle
    {
        f"idle-static-{i:05d}": {"task": "beatapp.record", "schedule": 3600.0, "args": [i]}
        for i in range(int(os.environ.get("DCRON_E2E_IDLE_STATIC", "0")))
    }
)
if os.environ.get("DCRON_E2E_CRON") == "1":
    _schedule["cron-2s"] = {"task": "beatapp.record", "schedule": cron("*/2 * * * * *")}

app.conf.update(
    broker_url=os.environ.get("DCRON_E2E_BROKER", "redis://127.0.0.1:6379/15"),
    dcron_redis_url=os.environ.get("DCRON_E2E_REGISTRY", "redis://127.0.0.1:6379/14"),
    dcron_redis_transport_options=json.loads(
        os.environ.get("DCRON_E2E_REGISTRY_OPTIONS") or "null"
    ),
    dcron_redis_wait_replicas=int(os.environ.get("DCRON_E2E_WAIT_REPLICAS", "0")),
    dcron_namespace=os.environ.get("DCRON_E2E_NAMESPACE", "e2e"),
    dcron_node_ttl=float(os.environ.get("DCRON_E2E_TTL", "3")),
    dcron_heartbeat_interval=float(os.environ.get("DCRON_E2E_HEARTBEAT", "0.5")),
    dcron_misfire_policy=os.environ.get("DCRON_E2E_POLICY", "once"),
    beat_schedule=_schedule,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("DCRON_E2E_QUEUE", "e2e"),
    result_backend=None,
    timezone="UTC",
)
if os.environ.get("DCRON_E2E_METRICS_PORT"):
    app.conf.dcron_metrics_port = int(os.environ["DCRON_E2E_METRICS_PORT"])
    app.conf.dcron_metrics_addr = "127.0.0.1"
if os.environ.get("DCRON_E2E_REMOTE_CONTROL") == "1":
    app.conf.beat_enable_remote_control = True  # Celery 5.7+: beat answers `inspect ping`
if os.environ.get("DCRON_E2E_CONFIRM") == "1":  # AMQP publisher confirms
    app.conf.broker_transport_options = {"confirm_publish": True}
if os.environ.get("DCRON_E2E_ENQUEUE"):
    app.conf.dcron_enqueue = os.environ["DCRON_E2E_ENQUEUE"]
if os.environ.get("DCRON_E2E_GRACE"):
    app.conf.dcron_misfire_grace = float(os.environ["DCRON_E2E_GRACE"])

logger = get_logger(__name__)


@signals.publish_failed.connect
def _log_publish_failed(
    sender: object, entry: object, tick: object, exc: object, **kw: object
) -> None:
    logger.warning(
        "e2e: publish_failed signal %s tick=%s exc=%r",
        getattr(entry, "name", entry),
        tick_iso(getattr(tick, "tick_ms", 0)),
        exc,
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
