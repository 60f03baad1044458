"""The registry on the broker's Redis (same server and database, the default deployment):
beats push each tick with the ENQUEUE script, and a real worker runs those messages and
one sent by ``apply_async`` for the same entry alike (issue 12, item 2)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_dcron.ticks import task_id, tick_iso
from tests.e2e.conftest import held
from tests.e2e.harness import (
    BROKER_DB,
    NAMESPACE,
    QUEUE,
    REGISTRY_DB,
    Cluster,
    iso_to_ms,
    now_ms,
    wait_until,
)
from tests.servers import RedisServer

EXECUTED = "e2e:executed"  # written by beatapp.record
ONE_SCRIPT = "dcron: enqueue: claimed ticks are pushed and marked sent in one script"
TEMPLATES = "sent from that template, with each tick's id and time"


class SameRedisCluster(Cluster):
    """The registry in the broker's own database (``dcron_redis_url`` = the broker URL)."""

    @property
    def registry_url(self) -> str:
        return self.broker_url

    def client(self, db: int = REGISTRY_DB) -> redis.Redis:
        return super().client(BROKER_DB if db == REGISTRY_DB else db)


@pytest.fixture
def same_cluster(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[SameRedisCluster]:
    yield from held(SameRedisCluster(redis_server, tmp_path / "procs"), request)


def test_ticks_pushed_by_the_script_and_by_apply_async_run_alike(
    same_cluster: SameRedisCluster,
) -> None:
    cluster = same_cluster
    entries = [f"every-1s-{i}" for i in range(3)]
    beats = cluster.start(2, DCRON_E2E_ENTRIES="3")
    cluster.wait_ticks(4, after_ms=now_ms(), entries=entries, timeout=20)
    cluster.stop_all()
    for beat in beats:  # decided (and logged) before it first sends
        assert beat.grep(ONE_SCRIPT) or not beat.fired(), beat.log_tail()
        # the messages are built ahead (templates) and sent from them
        assert bool(beat.grep(TEMPLATES)) == bool(beat.fired()), beat.log_tail()
        assert not beat.grep("then marked sent"), beat.log_tail()
    broker = cluster.client(BROKER_DB)
    pushed = [json.loads(raw) for raw in reversed(broker.lrange(QUEUE, 0, -1))]
    assert pushed

    # The same entry's message sent by Celery's apply_async, as Celery beat would.
    app = Celery("beatapp", set_as_current=False)
    app.conf.update(broker_url=cluster.broker_url, task_default_queue=QUEUE, timezone="UTC")
    late_ms = now_ms() // 1000 * 1000 + 3_600_000
    late_id = task_id(NAMESPACE, "every-1s-0", late_ms)
    app.send_task(
        "beatapp.record", (0,), task_id=late_id,
        headers={"periodic_task_name": "every-1s-0", "dcron_tick": tick_iso(late_ms)},
    )  # fmt: skip
    (direct,) = [json.loads(r) for r in broker.lrange(QUEUE, 0, 0)]
    # the last one pushed: from the template
    *_, scripted = (m for m in pushed if m["headers"]["periodic_task_name"] == "every-1s-0")
    assert _shape(direct) == _shape(scripted)
    assert len({m["properties"]["delivery_tag"] for m in pushed}) == len(pushed)

    worker = cluster.start_worker()
    results = cluster.client(2)
    fired = {(f.entry, f.tick_ms): f.task_id for f in cluster.fired()}

    def executed() -> list[str]:
        return [str(x) for x in results.lrange(EXECUTED, 0, -1)]

    wait_until(
        lambda: len(executed()) >= len(fired) + 1 and broker.llen(QUEUE) == 0,
        timeout=40,
        what=f"the worker to run the {len(fired)} pushed ticks and the apply_async one",
        on_timeout=lambda: f"executed {len(executed())}, worker log:\n{worker.log_tail()}",
    )
    assert worker.terminate() == 0
    rows = [r.split("|") for r in executed()]
    assert all(n == 1 for n in Counter(r[0] for r in rows).values()), rows
    seen = {(name, iso_to_ms(tick)): tid for tid, name, tick in rows}
    assert seen.pop(("every-1s-0", late_ms)) == late_id
    assert seen == fired


def _shape(message: dict[str, object]) -> dict[str, object]:
    """A message without what differs between two ticks and two processes (ids, tick,
    kombu's tag, the sender's name and reply queue)."""
    m = json.loads(json.dumps(message))
    # ignore_result: the test's app does not import the task (send_task by name: None)
    for field in ("id", "root_id", "dcron_tick", "expires", "origin", "ignore_result"):
        m["headers"].pop(field, None)
    for field in ("delivery_tag", "correlation_id", "reply_to"):
        m["properties"].pop(field, None)

    return m
