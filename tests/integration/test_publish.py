"""The Celery glue's publishing against a real Redis broker: a batch of messages (kombu's
``Producer.batch``, one pipelined round trip) carries exactly what one-by-one sends carry;
a message that can never be sent is tried once per tick and its error kept (issue 13)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import pytest
import redis
from celery import Celery

from celery_dcron.entries import EntrySpec, Tick
from celery_dcron.scheduler import DistributedScheduler
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.status import ClusterView
from celery_dcron.ticks import task_id, tick_iso
from tests.e2e.harness import iso_to_ms
from tests.integration.test_cli import CLI
from tests.integration.test_engine import Cluster, decisions
from tests.servers import RedisServer

S = 1000

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


# -- publishes that can never succeed --------------------------------------------------------


class Attempts:
    """A publisher wrapped to count the attempts per (entry, tick)."""

    def __init__(self, publish: Any) -> None:
        self.publish = publish
        self.calls: Counter[tuple[str, int]] = Counter()

    def __call__(self, spec: EntrySpec, tick: Tick, tid: str) -> None:
        self.calls[(spec.name, tick.tick_ms)] += 1
        self.publish(spec, tick, tid)


def add(x: int, y: int) -> int:
    return x + y


def strict_scheduler(broker_url: str) -> DistributedScheduler:
    """The publish glue of an app whose task checks its arguments (Celery's default
    ``typing``) and that knows one queue only."""
    s = scheduler(broker_url)
    s.app.conf.task_create_missing_queues = False
    s.app.task(name="tasks.add")(add)
    return s


def test_a_publish_that_can_never_succeed_is_tried_once_per_tick_and_shown(
    cluster: Cluster, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13: an entry whose arguments do not fit its task used to be published again
    every second ("publish failed ... will retry", "re-publishing N unsent claims"),
    forever. Now each tick is tried once, logged once, and its error kept."""
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    s = strict_scheduler(broker_url)
    e = cluster.add("a", [])
    attempts = Attempts(s._publish)
    e.publish, e.publish_batch = attempts, s._publish_batch
    every_s = IntervalSchedule(every_ms=S)
    bad = {
        "bad-args": ({"args": (1,)}, "arguments"),  # add() missing 'y': Celery's typing check
        "bad-serializer": ({"args": (1, 2), "options": {"serializer": "nope"}}, "serialization"),
        "bad-queue": ({"args": (1, 2), "options": {"queue": "nowhere"}}, "routing"),
    }
    for name, (fields, _) in [*bad.items(), ("good", ({"args": (1, 2)}, ""))]:
        spec = EntrySpec(name=name, task="tasks.add", schedule=every_s, **fields)  # type: ignore[arg-type]
        e.registry.put_entry(spec, expected_version=None)
    cluster.step_all(2)
    cluster.align()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        for _ in range(30):  # 3 s, stepping every 100 ms, unsent claims looked at each step
            cluster.clock.advance(100)
            e._next_recover = 0.0
            cluster.step_all()
    ticks = {name: sorted(t for n, t in attempts.calls if n == name) for name in bad}
    for name in bad:  # each entry on its own phase of the 1 s grid
        first = ticks[name][0]
        assert ticks[name] == [first, first + S, first + 2 * S]
        assert [attempts.calls[(name, t)] for t in ticks[name]] == [1, 1, 1], attempts.calls
    rejected = decisions(caplog, "publish_rejected")
    assert sorted((d["entry"], d["tick_ms"], d["reason"]) for d in rejected) == sorted(
        (name, t, reason) for name, (_, reason) in bad.items() for t in ticks[name]
    )
    assert {d["level"] for d in rejected} == {logging.ERROR}
    assert all(d["task_id"] == task_id("default", d["entry"], d["tick_ms"]) for d in rejected)
    assert decisions(caplog, "publish_failed") == [] and decisions(caplog, "republished") == []
    assert e.registry.pending() == [] and not e._failed
    assert len(drain(broker_url)) == 3  # the good entry's three ticks
    assert sorted(d["entry"] for d in decisions(caplog, "fired")) == ["good"] * 3

    # its last error, in the registry, the cluster view and `celery dcron show`
    last = ticks["bad-args"][-1]
    error = e.registry.errors()["bad-args"]
    assert (error.tick_ms, error.reason, error.node) == (last, "arguments", "a")
    assert not error.run_now
    assert error.task_id == task_id("default", "bad-args", last) and "TypeError" in error.error
    assert set(e.registry.errors()) == set(bad)
    row = ClusterView.read(e.registry, e.settings).entry("bad-args")
    assert row["last_error"]["reason"] == "arguments" and row["runs"] == 3
    assert ClusterView.read(e.registry, e.settings).entry("good")["last_error"] is None
    cli = CLI(redis_url)
    shown = cli("show", "bad-args").stdout
    (line,) = [ln for ln in shown.splitlines() if ln.startswith("last error:")]
    assert "publish rejected (arguments)" in line and error.task_id in line and "TypeError" in line
    assert cli.json("show", "bad-args")["last_error"]["tick"] == tick_iso(last)
    assert "last error: publish rejected (routing)" in cli("ls").stdout

    # a run-now of it: tried once, its request done, its error kept
    caplog.clear()
    at = e.registry.run_now("bad-args")
    e._next_recover = 0.0
    for _ in range(3):
        cluster.step_all()
    (run_now,) = decisions(caplog, "publish_rejected")
    assert (run_now["entry"], run_now["tick_ms"], run_now["run_now"]) == ("bad-args", at, True)
    assert e.registry.requests() == [] and e.registry.errors()["bad-args"].run_now

    # fixed, its next tick goes, and the error is cleared: by a tick after the run-now's
    # (the request's time is the server's, which runs ahead of the manual clock when the
    # test is slow: then the clock is moved up to it first)
    fixed = e.registry.get_entry("bad-args")
    assert fixed is not None
    e.registry.put_entry(fixed.with_changes(args=(1, 2)), expected_version=fixed.version)
    cluster.clock.set(max(cluster.clock.now_ms(), at))
    cluster.advance(S)
    sent = [
        (iso_to_ms(m["headers"]["dcron_tick"]), m["headers"]["id"])
        for m in drain(broker_url)
        if m["headers"]["periodic_task_name"] == "bad-args"
    ]
    assert sent and all(tid == task_id("default", "bad-args", t) for t, tid in sent)
    assert all(t > last and (t - last) % S == 0 for t, _ in sent) and max(sent)[0] >= at
    if at < last + S:  # the usual case: exactly its next tick
        assert [t for t, _ in sent] == [last + S]
    assert "bad-args" not in e.registry.errors()
    assert ClusterView.read(e.registry, e.settings).entry("bad-args")["last_error"] is None


def test_a_broker_gone_is_retried_with_the_same_id(
    cluster: Cluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The other kind, through Celery's own publish: with its broker killed, kombu raises
    OperationalError; the claim stays pending and, the broker back, is published again
    with the same id."""
    s = strict_scheduler(redis_server.url)
    assert s.producer is not None  # connected before the broker goes
    e = cluster.add("a", [])
    attempts = Attempts(s._publish)
    e.publish = attempts
    spec = EntrySpec(name="ok", task="tasks.add", schedule=IntervalSchedule(every_ms=S),
                     args=(1, 2))  # fmt: skip
    e.registry.put_entry(spec, expected_version=None)
    cluster.step_all(2)
    cluster.align()
    tick = cluster.clock.now_ms() + S
    redis_server.kill()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        cluster.clock.advance(S)
        e.step()
        assert [(p.name, p.tick_ms) for p in e.registry.pending()] == [("ok", tick)]
        redis_server.restart()
        e._next_recover = 0.0
        e.step()
    assert attempts.calls[("ok", tick)] == 2  # tried again
    (failed,) = decisions(caplog, "publish_failed")
    assert (failed["entry"], failed["tick_ms"]) == ("ok", tick)
    assert "OperationalError" in failed["error"]
    assert decisions(caplog, "publish_rejected") == [] and e.registry.errors() == {}
    assert e.registry.pending() == []
    (message,) = drain(redis_server.url)
    assert message["headers"]["id"] == failed["task_id"] == task_id("default", "ok", tick)
