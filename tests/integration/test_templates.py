"""Message templates on the exactly-once path (issue 12, item 3): an entry's message is
built by Celery once (twice, to check), then each tick's is the template with its id,
tick and a new delivery tag, byte for byte what Celery would have built; Celery still
builds every message wherever a template could differ from it."""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Any

import pytest
import redis
from celery import Task
from celery.signals import before_task_publish

from celery_dcron import templates as templates_module
from celery_dcron.enqueue import FastPath, capturing
from celery_dcron.entries import EntrySpec
from celery_dcron.registry import BrokerCommand
from celery_dcron.scheduler import DistributedScheduler
from celery_dcron.schedules import IntervalSchedule
from celery_dcron.templates import Templates, celery_publish_needed
from celery_dcron.ticks import task_id, tick_iso
from tests.e2e.harness import iso_to_ms
from tests.integration.test_engine import Cluster
from tests.integration.test_enqueue import QUEUE, T0, S, _server_ms, raw_messages, scheduler, spec


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """No audit unless a test asks (one message in AUDIT_EVERY is built by Celery)."""
    monkeypatch.setattr(templates_module, "AUDIT_EVERY", 10**12)


def celery_message(s: DistributedScheduler, entry: EntrySpec, tick_ms: int) -> list[BrokerCommand]:
    """What Celery builds for ``entry`` at ``tick_ms`` (captured: nothing is sent)."""
    with capturing(s.producer) as capture:
        s._publish_by_celery(
            entry, s.app.tasks.get(entry.task), task_id("default", entry.name, tick_ms),
            tick_iso(tick_ms),
        )  # fmt: skip
        return capture.take()


def learn(s: DistributedScheduler, t: Templates, entry: EntrySpec, *ticks_ms: int) -> bool:
    learned = False
    for ms in ticks_ms:
        learned = t.learn(
            entry, task_id("default", entry.name, ms), tick_iso(ms), celery_message(s, entry, ms)
        )
    return learned


def tag_of(command: BrokerCommand) -> str:
    return str(json.loads(command.value)["properties"]["delivery_tag"])


def with_tag(command: BrokerCommand, tag: str) -> BrokerCommand:
    return BrokerCommand(command.op, command.target, command.value.replace(tag_of(command), "T"))


@pytest.mark.parametrize(
    ("options", "conf"),
    [
        ({}, {}),
        ({"priority": 5, "headers": {"x-user": "50%"}}, {}),
        ({"queue": "other", "priority": 9}, {}),
        ({"exchange": "ex", "routing_key": "rk"}, {}),
        ({"serializer": "pickle", "compression": "zlib"}, {"accept_content": ["pickle", "json"]}),
        ({}, {"broker_transport_options": {"global_keyprefix": "pfx:"}, "x-expires": True}),
    ],
    ids=["plain", "priority-headers", "queue", "exchange", "pickle-zlib", "prefix-expiring-queue"],
)
def test_a_templated_message_is_the_one_celery_builds(
    redis_url: str, options: dict[str, Any], conf: dict[str, Any]
) -> None:
    conf = dict(conf)
    if conf.pop("x-expires", False):
        from kombu import Queue

        conf["task_queues"] = [Queue(QUEUE, queue_arguments={"x-expires": 60_000})]
    s = scheduler(redis_url, **conf)
    if "exchange" in options:  # a direct exchange bound to one queue: kombu looks it up
        from kombu import Exchange, Queue

        with s.app.connection_for_write() as conn:
            Queue("bound", Exchange("ex", type="direct"), routing_key="rk")(conn).declare()
    entry = spec(**options)
    t = Templates()
    assert not learn(s, t, entry, T0)  # one message: nothing to check it against yet
    assert learn(s, t, entry, T0 + S)

    tick_ms = T0 + 7 * S
    rendered = t.render(entry, task_id("default", "report", tick_ms), tick_iso(tick_ms))
    assert rendered is not None
    built = celery_message(s, entry, tick_ms)
    assert len(rendered) == len(built) >= 1
    for ours, celerys in zip(rendered, built, strict=True):
        if ours.op == "pexpire":
            assert ours == celerys
        else:  # the same bytes, but for kombu's delivery tag: a new uuid each
            assert with_tag(ours, tag_of(ours)) == with_tag(celerys, tag_of(celerys))
            uuid.UUID(tag_of(ours))
    again = t.render(entry, task_id("default", "report", tick_ms), tick_iso(tick_ms))
    assert again is not None and tag_of(again[0]) != tag_of(rendered[0])


@pytest.mark.parametrize("options", [{"expires": 60}, {"countdown": 5}])
def test_options_computed_from_the_publish_time_are_never_templated(
    redis_url: str, options: dict[str, Any]
) -> None:
    s = scheduler(redis_url)
    entry = spec(**options)
    t = Templates()
    assert not learn(s, t, entry, T0, T0 + S, T0 + 2 * S)
    assert t.render(entry, "id", tick_iso(T0 + 3 * S)) is None
    assert not t.needs(entry)


def test_a_changed_entry_starts_over(redis_url: str) -> None:
    s = scheduler(redis_url)
    t = Templates()
    entry = spec()
    assert learn(s, t, entry, T0, T0 + S)
    changed = spec(priority=3)
    assert t.render(changed, "id", tick_iso(T0)) is None and t.needs(changed)
    assert learn(s, t, changed, T0, T0 + S)
    rendered = t.render(changed, "id", tick_iso(T0))
    assert rendered is not None and json.loads(rendered[0].value)["properties"]["priority"] == 3


def test_an_audit_that_differs_drops_the_template(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message in AUDIT_EVERY is built by Celery and compared: when a second queue was
    bound to the entry's exchange meanwhile, the template goes and Celery builds every
    message."""
    from kombu import Exchange, Queue

    monkeypatch.setattr(templates_module, "AUDIT_EVERY", 1)
    s = scheduler(redis_url)
    exchange = Exchange("ex", type="direct")
    with s.app.connection_for_write() as conn:
        Queue("bound", exchange, routing_key="rk")(conn).declare()
    t = Templates()
    entry = spec(exchange="ex", routing_key="rk")
    assert learn(s, t, entry, T0, T0 + S)
    assert t.render(entry, "id", tick_iso(T0)) is None  # the audit: Celery builds this one
    assert learn(s, t, entry, T0 + 2 * S)  # the same: kept
    with s.app.connection_for_write() as conn:
        Queue("bound-too", exchange, routing_key="rk")(conn).declare()
    assert len(celery_message(s, entry, T0 + 3 * S)) == 2  # one push onto each queue
    assert t.render(entry, "id", tick_iso(T0)) is None
    assert not learn(s, t, entry, T0 + 3 * S)
    assert t.mismatches == 1 and not t.needs(entry)
    monkeypatch.setattr(templates_module, "AUDIT_EVERY", 100)
    assert t.render(entry, "id", tick_iso(T0)) is None


def test_celerys_publish_is_kept_where_a_template_would_be_seen(redis_url: str) -> None:
    s = scheduler(redis_url)
    assert celery_publish_needed(s.app, None) is None

    def receiver(**kwargs: Any) -> None:
        pass

    before_task_publish.connect(receiver, weak=False)
    try:
        assert celery_publish_needed(s.app, None) == "a receiver of before_task_publish"
    finally:
        before_task_publish.disconnect(receiver)

    s.app.conf.task_send_sent_event = True
    assert celery_publish_needed(s.app, None) == "task_send_sent_event"
    s.app.conf.task_send_sent_event = False

    class Traced(Task):  # type: ignore[type-arg]
        @functools.wraps(Task.apply_async)
        def apply_async(self, *args: Any, **kwargs: Any) -> Any:  # as tracing tools wrap it
            return super().apply_async(*args, **kwargs)

    def noop() -> None:
        pass

    s.app.task(name="tasks.plain", shared=False)(noop)
    s.app.task(name="tasks.traced", base=Traced, shared=False)(noop)
    plain, traced = s.app.tasks["tasks.plain"], s.app.tasks["tasks.traced"]
    assert celery_publish_needed(s.app, plain) is None
    reason = celery_publish_needed(s.app, traced)
    assert reason is not None and "apply_async is not Celery's own" in reason


def test_engines_send_templated_messages_once_per_tick(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two engines on the broker's Redis: the templates are built ahead (nothing sent),
    every tick is pushed once, and each message is the one Celery builds for its tick."""
    from celery_dcron.clock import ManualClock
    from tests.enginekit import Recorder

    cluster = Cluster(redis_url, ManualClock(_server_ms(redis_client)), Recorder())
    s = scheduler(redis_url)
    fast: list[FastPath] = []
    engines = [cluster.add(n, []) for n in ("a", "b")]
    for e in engines:
        e.publish = s._publish
        path = FastPath(
            e.settings, e.registry, connection=s.connection, producer=lambda: s.producer
        )
        e.dispatcher.capture = path.capture
        fast.append(path)
    s._fast_path = fast[0]  # the scheduler's own: _publish asks it for the open capture
    entries = [
        EntrySpec(name=f"e{i}", task="tasks.x", schedule=IntervalSchedule(every_ms=S), args=(i,))
        for i in range(4)
    ]
    for entry in entries:
        engines[0].registry.put_entry(entry, expected_version=None)
    cluster.step_all(2)
    cluster.align()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        cluster.advance(2 * S)
        for e in engines:  # idle time between passes: build the templates ahead
            s._prepare_templates(e, time.monotonic() + 5.0, [])
        assert raw_messages(redis_client, "celery") == {}
        cluster.advance(3 * S)
    assert s._templates.rendered >= 8
    assert "sent from that template" in caplog.text
    messages = [json.loads(m) for m in raw_messages(redis_client).get(QUEUE, [])]
    keys = [(m["headers"]["periodic_task_name"], m["headers"]["dcron_tick"]) for m in messages]
    assert len(keys) >= 16 and len(set(keys)) == len(keys)
    assert len({m["properties"]["delivery_tag"] for m in messages}) == len(messages)
    by_name = {e.name: e for e in entries}
    for m in messages:
        name, tick = m["headers"]["periodic_task_name"], m["headers"]["dcron_tick"]
        (celerys,) = celery_message(s, _loaded(engines, by_name[name]), iso_to_ms(tick))
        expected = json.loads(celerys.value)
        expected["properties"]["delivery_tag"] = m["properties"]["delivery_tag"]
        assert m == expected
    assert engines[0].registry.pending() == []


def _loaded(engines: list[Any], entry: EntrySpec) -> EntrySpec:
    """The entry as its owner read it (with its registry version)."""
    for e in engines:
        got = e.view.spec(entry.name)
        if got is not None:
            return got  # type: ignore[no-any-return]
    raise AssertionError(f"no engine owns {entry.name}")
