"""The Celery glue's publishing against a real Redis broker: a batch of messages (kombu's
``Producer.batch``, one pipelined round trip) carries exactly what one-by-one sends carry."""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery

from celery_dcron.entries import EntrySpec, Tick
from celery_dcron.scheduler import DistributedScheduler
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.ticks import task_id

T0 = 1_800_000_000_000
QUEUE = "dcron-publish-test"


def scheduler(broker_url: str) -> DistributedScheduler:
    app = Celery("publishtest", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        task_default_queue=QUEUE,
        result_backend=None,
        timezone="UTC",
        dcron_check_tasks=False,
    )
    return DistributedScheduler(app, lazy=True)  # lazy: no engine, only the publish glue


def drain(broker_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(broker_url)
    raw = []
    for key in client.scan_iter(match=QUEUE + "*"):  # kombu keeps a list per priority
        if client.type(key) == b"list":
            raw += client.lrange(key, 0, -1)
            client.delete(key)
    messages = [json.loads(m) for m in reversed(raw)]  # LPUSH: oldest last
    for m in messages:  # the only fields that differ between two sends of one tick
        m["properties"].pop("delivery_tag", None)
        m["headers"].pop("expires", None)  # absolute: now + the relative `expires` option
    return messages


def test_a_publish_batch_sends_the_same_messages_together_when_it_closes(redis_url: str) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    s = scheduler(broker_url)
    spec = EntrySpec(
        name="report",
        task="tasks.report",
        schedule=IntervalSchedule(every_ms=1000),
        args=(1, "a"),
        kwargs={"k": [1, 2]},
        options={"priority": 5, "headers": {"x-user": "y"}, "expires": 60},
    )
    ticks = [Tick(name="report", tick_ms=T0 + i * 1000) for i in range(3)]

    def send_all() -> None:
        for tick in ticks:
            s._publish(spec, tick, task_id("default", "report", tick.tick_ms))

    send_all()
    one_by_one = drain(broker_url)
    stats = redis.Redis.from_url(broker_url)
    stats.config_resetstat()
    batching = hasattr(s.producer, "batch")  # kombu 5.7+; before, each publish goes at once
    with s._publish_batch():
        send_all()
        sent_so_far = stats.info("commandstats").get("cmdstat_lpush")
        assert sent_so_far is None if batching else sent_so_far["calls"] == 3
    lpush_calls = stats.info("commandstats")["cmdstat_lpush"]["calls"]
    batched = drain(broker_url)

    assert lpush_calls == 3
    assert batched == one_by_one and len(batched) == 3
    for tick, message in zip(ticks, batched, strict=True):
        headers = message["headers"]
        assert headers["id"] == task_id("default", "report", tick.tick_ms)
        assert headers["periodic_task_name"] == "report"
        assert headers["x-user"] == "y"
        assert message["properties"]["priority"] == 5
