"""Exactly-once enqueue when the broker is the registry's Redis (issue 12, item 2).

The message a claimed tick becomes is built by Celery's own publish path into a capture
(:mod:`celery_dcron.enqueue`), and the ENQUEUE script pushes it and forgets the claim in
one step: the same bytes as ``apply_async`` (ids, the tick and kombu's delivery tag
aside), signals sent, and never pushed twice, whatever is retried.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish

from celery_dcron.config import Settings
from celery_dcron.engine.dispatch import EnqueueRefusedError
from celery_dcron.enqueue import FastPath, capturing
from celery_dcron.entries import EntrySpec, Node, NodeStatus, PublishRejection, Tick
from celery_dcron.registry import BrokerCommand, Registry
from celery_dcron.scheduler import DistributedScheduler
from celery_dcron.schedules import CronSchedule, IntervalSchedule
from celery_dcron.ticks import run_now_task_id, task_id
from tests.enginekit import decisions
from tests.integration.test_engine import Cluster
from tests.integration.test_registry_contract import PAST_TTL_MS, TTL_MS, Backend, backend

S = 1000
T0 = 1_800_000_000_000
QUEUE = "dcron-enqueue-test"

__all__ = ["backend"]  # the contract suite's fixture: both registries


def scheduler(broker_url: str, **conf: Any) -> DistributedScheduler:
    app = Celery("enqueuetest", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        task_default_queue=QUEUE,
        result_backend=None,
        timezone="UTC",
        dcron_check_tasks=False,
        **conf,
    )
    return DistributedScheduler(app, lazy=True)  # lazy: no engine, only the publish glue


def raw_messages(client: redis.Redis, prefix: str = QUEUE) -> dict[str, list[str]]:
    """Every list whose name starts with ``prefix`` (kombu: one per priority), oldest
    first, emptied."""
    out = {}
    for key in client.scan_iter(match=prefix + "*"):
        if client.type(key) == b"list":
            out[key.decode()] = [m.decode() for m in reversed(client.lrange(key, 0, -1))]
            client.delete(key)
    return out


def normalized(raw: str, tick_ms: int) -> dict[str, Any]:
    """A message without what differs between two sends of one entry's two ticks."""
    m = json.loads(raw)
    tid = m["headers"]["id"]
    assert m["headers"]["root_id"] == m["properties"]["correlation_id"] == tid
    m["properties"].pop("delivery_tag")  # kombu: a new uuid per message
    for field in ("id", "root_id", "dcron_tick", "expires"):  # expires: now + `expires`
        m["headers"].pop(field, None)
    m["properties"].pop("correlation_id")
    return m


def spec(**options: Any) -> EntrySpec:
    return EntrySpec(
        name="report",
        task="tasks.report",
        schedule=IntervalSchedule(every_ms=S),
        args=(1, "a"),
        kwargs={"k": [1, 2]},
        options=options or {},
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"priority": 5, "headers": {"x-user": "y"}, "expires": 60},
        {"queue": "other", "priority": 9},
        {"exchange": "ex", "routing_key": "rk"},
        {"serializer": "pickle", "compression": "zlib"},
    ],
    ids=["plain", "priority-headers-expires", "queue", "exchange", "pickle-zlib"],
)
def test_the_captured_message_is_what_apply_async_sends(
    redis_url: str, redis_client: redis.Redis, options: dict[str, Any]
) -> None:
    s = scheduler(redis_url, accept_content=["json", "pickle"])
    if "exchange" in options:  # a direct exchange bound to one queue: kombu looks it up
        from kombu import Exchange, Queue

        with s.app.connection_for_write() as conn:
            Queue("bound", Exchange("ex", type="direct"), routing_key="rk")(conn).declare()
    entry = spec(**options)
    tick_a, tick_b = Tick(name="report", tick_ms=T0), Tick(name="report", tick_ms=T0 + S)
    s._publish(entry, tick_a, task_id("default", "report", tick_a.tick_ms))
    prefix = "bound" if "exchange" in options else options.get("queue", QUEUE)
    published = raw_messages(redis_client, prefix)

    with capturing(s.producer) as capture:
        s._publish(entry, tick_b, task_id("default", "report", tick_b.tick_ms))
        commands = capture.take()
    assert raw_messages(redis_client, prefix) == {}  # nothing sent
    assert [c.op for c in commands] == ["lpush"]
    ((key, (sent,)),) = published.items()
    assert commands[0].target == key
    assert normalized(commands[0].value, tick_b.tick_ms) == normalized(sent, tick_a.tick_ms)
    assert json.loads(commands[0].value)["headers"]["id"] == task_id(
        "default", "report", tick_b.tick_ms
    )


def test_a_global_key_prefix_and_an_expiring_queue_are_captured_as_kombu_sends_them(
    redis_url: str, redis_client: redis.Redis
) -> None:
    from kombu import Queue

    s = scheduler(
        redis_url,
        broker_transport_options={"global_keyprefix": "pfx:"},
        task_queues=[Queue(QUEUE, queue_arguments={"x-expires": 60_000})],
    )
    with capturing(s.producer) as capture:
        s._publish(spec(), Tick(name="report", tick_ms=T0), "id-1")
        commands = capture.take()
    assert commands[0].op == "lpush" and commands[0].target == "pfx:" + QUEUE
    assert [c.op for c in commands[1:]] == ["pexpire"] * 4
    assert {c.target for c in commands[1:]} == {"pfx:" + QUEUE} | {
        f"pfx:{QUEUE}\x06\x16{p}" for p in (3, 6, 9)
    }
    assert {c.value for c in commands[1:]} == {"60000"}


def _claim(registry: Registry, tick: Tick, node: str = "a") -> None:
    (result,) = registry.claim([tick], node_id=node, lock_ttl_ms=30_000)
    assert result.won


def test_the_script_pushes_once_and_leaves_no_pending_claim(
    redis_url: str, redis_client: redis.Redis
) -> None:
    registry = Registry.from_settings(Settings(redis_url=redis_url))
    tick = Tick(name="e", tick_ms=T0)
    _claim(registry, tick)
    commands = [BrokerCommand("lpush", QUEUE, "m1"), BrokerCommand("pexpire", QUEUE, "60000")]
    first = registry.enqueue([(tick, commands)], node_id="a")
    again = registry.enqueue([(tick, commands)], node_id="a")  # a retry: the reply was lost
    assert [(r.sent, r.error) for r in first] == [(True, None)]
    assert [(r.sent, r.error) for r in again] == [(False, None)]
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m1"]
    assert 0 < redis_client.pttl(QUEUE) <= 60_000
    assert registry.pending() == []
    assert registry.retake([tick], node_id="b", lock_ttl_ms=1000) == [False]  # nothing left


def test_the_script_sends_only_the_claims_of_its_node_still_pending(
    redis_url: str, redis_client: redis.Redis
) -> None:
    registry = Registry.from_settings(Settings(redis_url=redis_url))
    ours, theirs, unclaimed = (Tick(name=n, tick_ms=T0) for n in ("ours", "theirs", "none"))
    _claim(registry, ours)
    _claim(registry, theirs, node="b")
    sends = [(t, [BrokerCommand("lpush", QUEUE, t.name)]) for t in (ours, theirs, unclaimed)]
    results = registry.enqueue(sends, node_id="a")
    assert [r.sent for r in results] == [True, False, False]
    assert redis_client.lrange(QUEUE, 0, -1) == [b"ours"]
    assert {(p.name, p.node) for p in registry.pending()} == {("theirs", "b")}


def test_a_refused_command_leaves_its_tick_pending(
    redis_url: str, redis_client: redis.Redis
) -> None:
    registry = Registry.from_settings(Settings(redis_url=redis_url))
    redis_client.set("not-a-list", "x")
    good, bad = Tick(name="good", tick_ms=T0), Tick(name="bad", tick_ms=T0)
    _claim(registry, good)
    _claim(registry, bad)
    results = registry.enqueue(
        [
            (bad, [BrokerCommand("lpush", "not-a-list", "m")]),
            (good, [BrokerCommand("lpush", QUEUE, "m")]),
        ],
        node_id="a",
    )
    assert not results[0].sent and "WRONGTYPE" in (results[0].error or "")
    assert results[1].sent
    assert [p.name for p in registry.pending()] == ["bad"]


def test_the_fast_path_is_used_only_when_the_broker_is_the_registrys_redis(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(redis_url=redis_url)
    registry = Registry.from_settings(settings)

    def decide(broker_url: str, **kw: Any) -> FastPath:
        s = scheduler(broker_url)
        with caplog.at_level(logging.INFO, logger="celery_dcron"):
            path = FastPath(
                Settings(redis_url=redis_url, **kw), registry,
                connection=s.connection, producer=lambda: s.producer,
            )  # fmt: skip
            cm = path.capture()
        if cm is not None:
            assert path.enabled
        return path

    assert decide(redis_url).enabled
    other_db = decide(redis_url.rsplit("/", 1)[0] + "/3")
    assert not other_db.enabled and "database 3" in other_db.reason
    assert not decide(redis_url, enqueue="publish").enabled
    assert not decide("memory://").enabled
    logged = [r.getMessage() for r in caplog.records if "enqueue:" in r.getMessage()]
    assert len(logged) == 4 and "one script" in logged[0]


def test_engines_send_each_tick_once_through_the_script_with_the_signals(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two engines on the broker's Redis: every tick is pushed once, by the script (no
    separate "mark sent"), no claim is left pending, and Celery's publish signals are
    sent once per tick pushed."""
    from celery_dcron.clock import ManualClock
    from tests.enginekit import Recorder

    cluster = Cluster(redis_url, ManualClock(_server_ms(redis_client)), Recorder())
    s = scheduler(redis_url)
    before: list[str] = []
    after: list[str] = []

    def on_before(sender: str, headers: dict[str, Any], **kw: Any) -> None:
        before.append(headers["id"])
        headers["x-traced"] = "1"  # a receiver adding a header: it is in the message

    def on_after(sender: str, headers: dict[str, Any], **kw: Any) -> None:
        after.append(headers["id"])

    before_task_publish.connect(on_before, weak=False)
    after_task_publish.connect(on_after, weak=False)
    try:
        engines = fast_engines(cluster, s, "a", "b")
        for i in range(4):
            engines[0].registry.put_entry(
                EntrySpec(name=f"e{i}", task="tasks.x", schedule=IntervalSchedule(every_ms=S)),
                expected_version=None,
            )
        marked: list[Tick] = []
        for e in engines:
            e.registry.mark_sent = marked.extend  # type: ignore[method-assign]
        cluster.step_all(2)
        cluster.align()
        with caplog.at_level(logging.INFO, logger="celery_dcron"):
            cluster.advance(3 * S)
    finally:
        before_task_publish.disconnect(on_before)
        after_task_publish.disconnect(on_after)
    messages = [json.loads(m) for m in raw_messages(redis_client).get(QUEUE, [])]
    keys = [(m["headers"]["periodic_task_name"], m["headers"]["dcron_tick"]) for m in messages]
    assert len(keys) >= 8 and len(set(keys)) == len(keys)
    ids = [m["headers"]["id"] for m in messages]
    assert sorted(before) == sorted(after) == sorted(ids)
    assert all(m["headers"]["x-traced"] == "1" for m in messages)
    fired = {d["task_id"] for d in decisions(caplog, "fired")}
    assert fired == set(ids)
    assert engines[0].registry.pending() == []
    assert marked == []  # marked sent by the script that pushed them, never on their own


def test_a_lost_reply_is_resolved_by_the_pending_claim_not_by_sending_again(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The script ran but its reply was lost (the engine counts the tick as failed): the
    claim is gone with the push, so the retry finds nothing to send."""
    from celery_dcron.clock import ManualClock
    from tests.enginekit import Recorder

    cluster = Cluster(redis_url, ManualClock(_server_ms(redis_client)), Recorder())
    s = scheduler(redis_url)
    (e,) = fast_engines(cluster, s, "a")
    real = e.registry.enqueue
    lost: list[int] = []

    def reply_lost(sends: Any, *, node_id: str) -> Any:
        real(sends, node_id=node_id)
        if not lost:
            lost.append(1)
            raise EnqueueRefusedError("connection reset")  # as if the reply never came
        return real(sends, node_id=node_id)

    e.registry.enqueue = reply_lost  # type: ignore[method-assign]
    e.registry.put_entry(
        EntrySpec(name="x", task="tasks.x", schedule=IntervalSchedule(every_ms=S)),
        expected_version=None,
    )
    cluster.step_all(2)
    cluster.align()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        for _ in range(20):
            cluster.clock.advance(100)
            e._next_recover = 0.0
            cluster.step_all()
    assert lost and decisions(caplog, "publish_failed")
    messages = [json.loads(m) for m in raw_messages(redis_client).get(QUEUE, [])]
    ticks = [m["headers"]["dcron_tick"] for m in messages]
    assert len(ticks) >= 2 and len(set(ticks)) == len(ticks)
    assert e.registry.pending() == []


def fast_engines(cluster: Cluster, s: DistributedScheduler, *names: str) -> list[Any]:
    """Engines that publish with ``s``'s Celery code and send through the scripts."""
    engines = [cluster.add(n, []) for n in names]
    for e in engines:
        e.publish = s._publish
        e.dispatcher.capture = FastPath(
            e.settings, e.registry, connection=s.connection, producer=lambda: s.producer
        ).capture
    return engines


def _server_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec * 1000 + usec // 1000)


# -- the contract, on both registries --------------------------------------------------


def test_enqueue_contract(backend: Backend) -> None:
    """Sent once while pending and this node's; the claim goes with the push, and so does
    the entry's last error of an earlier tick (as mark_sent)."""
    reg = backend.reg
    early, ours, theirs = (
        Tick(name="x", tick_ms=T0),
        Tick(name="x", tick_ms=T0 + S),
        Tick(name="y", tick_ms=T0),
    )
    for t, node in ((early, "a"), (theirs, "b")):
        (won,) = reg.claim([t], node_id=node, lock_ttl_ms=30_000)
        assert won.won
    reg.reject([
        PublishRejection(name="x", tick_ms=T0, task_id="t", reason="arguments", error="E",
                         at_ms=T0, node="a", version=1)
    ])  # fmt: skip
    assert "x" in reg.errors()
    (won,) = reg.claim([ours], node_id="a", lock_ttl_ms=30_000)
    assert won.won
    push = [BrokerCommand("lpush", "contract-q", "m")]
    first = reg.enqueue([(ours, push), (theirs, push)], node_id="a")
    assert [(r.tick, r.sent) for r in first] == [(ours, True), (theirs, False)]
    assert [r.sent for r in reg.enqueue([(ours, push)], node_id="a")] == [False]
    assert [(p.name, p.node) for p in reg.pending()] == [("y", "b")]
    assert reg.errors() == {}


def test_enqueue_requests_contract(backend: Backend) -> None:
    """A run-now request is sent once while its taker holds it, and goes with the push:
    a retry (a lost reply), or a node taking it over later, finds nothing to send."""
    reg = backend.reg
    for name in ("x", "y"):
        reg.put_entry(
            EntrySpec(name=name, task="t", schedule=IntervalSchedule(every_ms=S)),
            expected_version=None,
        )
        reg.run_now(name)
    for node in ("a", "b"):
        reg.heartbeat(Node(id=node, status=NodeStatus.WORKING), ttl_ms=TTL_MS)
    x, y = sorted(reg.requests(), key=lambda r: r.name)
    assert reg.take_requests([x], node_id="a") == [True]
    assert reg.take_requests([y], node_id="b") == [True]
    push = [BrokerCommand("lpush", "contract-q", "m")]
    first = reg.enqueue_requests([(x, push), (y, push)], node_id="a")
    assert [(r.tick, r.sent, r.error) for r in first] == [
        (Tick(name="x", tick_ms=x.request_ms), True, None),
        (Tick(name="y", tick_ms=y.request_ms), False, None),  # b's
    ]
    assert [(r.name, r.holder) for r in reg.requests()] == [("y", "b")]
    assert [r.sent for r in reg.enqueue_requests([(x, push)], node_id="a")] == [False]
    backend.advance(PAST_TTL_MS)  # b died: a takes its request over, and sends it
    assert reg.take_requests([y], node_id="a") == [True]
    assert [r.sent for r in reg.enqueue_requests([(y, push)], node_id="a")] == [True]
    assert reg.requests() == []
    assert pushed(backend, "contract-q") == 2  # x and y, once each


def pushed(backend: Backend, queue: str) -> int:
    """How many messages the registry pushed onto ``queue``."""
    reg = backend.reg
    if isinstance(reg, Registry):
        return int(reg.transport.client.llen(queue))
    return sum(1 for _, commands in reg.enqueued for c in commands if c.target == queue)  # type: ignore[attr-defined]


def test_the_request_script_pushes_once_and_a_refused_command_keeps_the_request(
    redis_url: str, redis_client: redis.Redis
) -> None:
    registry = Registry.from_settings(Settings(redis_url=redis_url))
    for name in ("good", "bad"):
        registry.put_entry(
            EntrySpec(name=name, task="t", schedule=IntervalSchedule(every_ms=S)),
            expected_version=None,
        )
        registry.run_now(name)
    requests = sorted(registry.requests(), key=lambda r: r.name)
    assert registry.take_requests(requests, node_id="a") == [True, True]
    bad, good = requests
    redis_client.set("not-a-list", "x")
    sends = [
        (bad, [BrokerCommand("lpush", "not-a-list", "m")]),
        (good, [BrokerCommand("lpush", QUEUE, "m1"), BrokerCommand("pexpire", QUEUE, "60000")]),
    ]
    results = registry.enqueue_requests(sends, node_id="a")
    assert not results[0].sent and "WRONGTYPE" in (results[0].error or "")
    assert results[1].sent
    again = registry.enqueue_requests(sends[1:], node_id="a")  # the reply was lost: a retry
    assert [(r.sent, r.error) for r in again] == [(False, None)]
    assert redis_client.lrange(QUEUE, 0, -1) == [b"m1"]
    assert 0 < redis_client.pttl(QUEUE) <= 60_000
    assert [(r.name, r.holder) for r in registry.requests()] == [("bad", "a")]  # retried


def test_a_run_now_is_pushed_once_by_the_script_even_when_its_reply_is_lost(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine sends a run-now request through the script when the broker is the
    registry's Redis: the message (its own run-now task id) is pushed and the request
    forgotten in one step. The script ran but its reply was lost: the engine retries,
    and finds nothing left to send."""
    from celery_dcron.clock import ManualClock
    from tests.enginekit import Recorder

    cluster = Cluster(redis_url, ManualClock(_server_ms(redis_client)), Recorder())
    s = scheduler(redis_url)
    engines = fast_engines(cluster, s, "a", "b")
    calls: list[str] = []
    for e in engines:
        real = e.registry.enqueue_requests

        def reply_lost(sends: Any, *, node_id: str, real: Any = real) -> Any:
            results = real(sends, node_id=node_id)
            calls.append(node_id)
            if len(calls) == 1:
                raise EnqueueRefusedError("connection reset")  # as if the reply never came
            return results

        e.registry.enqueue_requests = reply_lost  # type: ignore[method-assign]
        e.registry.done_requests = lambda requests: None  # type: ignore[method-assign]
    engines[0].registry.put_entry(
        EntrySpec(name="daily", task="tasks.x", schedule=CronSchedule(expr="0 3 * * *")),
        expected_version=None,
    )
    cluster.step_all(2)
    at = engines[0].registry.run_now("daily")
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        for _ in range(10):
            cluster.clock.advance(300)
            for e in engines:
                e.requests.due = True
            cluster.step_all()
    assert calls and "run-now of daily failed" in caplog.text  # the lost reply: a failure
    messages = [json.loads(m) for m in raw_messages(redis_client).get(QUEUE, [])]
    assert [m["headers"]["id"] for m in messages] == [run_now_task_id("default", "daily", at)]
    assert engines[0].registry.requests() == []  # forgotten by the script (done_requests: off)
    fired = [d for d in decisions(caplog, "fired") if d.get("run_now")]
    assert fired == []  # the one push's reply was lost: not logged as fired, not sent again
