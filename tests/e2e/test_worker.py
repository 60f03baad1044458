"""Beat instances and a real Celery worker: the ticks run, with their headers and ids."""

from __future__ import annotations

from collections import Counter

from celery_dcron.ticks import task_id
from tests.e2e.harness import BROKER_DB, NAMESPACE, QUEUE, Cluster, iso_to_ms, now_ms, wait_until

EXECUTED = "e2e:executed"  # written by beatapp.record


def test_worker_executes_each_tick_once_with_its_headers_and_id(cluster: Cluster) -> None:
    entries = [f"every-1s-{i}" for i in range(4)]
    worker = cluster.start_worker()
    cluster.start(2, DCRON_E2E_ENTRIES="4")
    cluster.wait_ticks(4, after_ms=now_ms(), entries=entries, timeout=20)
    cluster.stop_all()
    fired = {(f.entry, f.tick_ms): f.task_id for f in cluster.fired()}
    assert fired

    results = cluster.client(2)

    def executed() -> list[str]:
        return [str(x) for x in results.lrange(EXECUTED, 0, -1)]

    # The worker drains the queue (bounded): every fired tick is executed.
    wait_until(
        lambda: (
            len({r.split("|")[0] for r in executed()}) >= len(fired)
            and cluster.client(BROKER_DB).llen(QUEUE) == 0
        ),
        timeout=40,
        what=f"the worker to execute the {len(fired)} fired ticks",
        on_timeout=lambda: (
            f"executed {len(executed())}, queue {cluster.client(BROKER_DB).llen(QUEUE)}, "
            f"worker log:\n{worker.log_tail()}"
        ),
    )
    assert worker.alive, worker.log_tail()
    assert worker.terminate() == 0

    rows = [r.split("|") for r in executed()]
    ids = Counter(r[0] for r in rows)
    assert all(n == 1 for n in ids.values()), (
        f"executed twice: {[i for i, n in ids.items() if n > 1]}"
    )
    seen = {}
    for tid, name, tick in rows:
        assert name in entries, f"task {tid}: request.periodic_task_name = {name!r}"
        assert tick != "None", f"task {tid}: request.dcron_tick missing"
        tick_ms = iso_to_ms(tick)
        assert tid == task_id(NAMESPACE, name, tick_ms), f"{name} {tick}: id {tid}"
        seen[(name, tick_ms)] = tid
    assert seen == fired, (
        f"fired but not executed: {sorted(set(fired) - set(seen))}; "
        f"executed but not fired: {sorted(set(seen) - set(fired))}"
    )
