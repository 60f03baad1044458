"""The due index against real beats on a real redis-server (G3, G2, G1).

Two beats share 6,000 dynamic entries, each due once a minute on a phase of its own.
One is killed (SIGKILL): the survivor takes its ~3,000 entries, more than one page, so it
reads them by the due index (those due within 10 s first). Every tick due after the kill
is sent once, and those due once the survivor has taken the crash go out on time. The
index itself holds, for every entry, the next tick its owner computed (or, now and then,
an earlier one: never a later one).
"""

from __future__ import annotations

import re

import redis

from celery_dcron.config import Settings
from celery_dcron.planning import next_run_ms
from celery_dcron.registry import Registry
from tests.e2e.harness import Cluster, now_ms, wait_until
from tests.e2e.test_dynamic import api

N = 6_000
EVERY_S = 60
ENV = {"DCRON_E2E_ENTRIES": "1", "DCRON_E2E_TTL": "3", "DCRON_E2E_HEARTBEAT": "0.5"}
MOVED = re.compile(r"dcron: read the (\d+) entries that moved here .* order by the (\w+)\)")


def test_a_dead_beats_entries_are_read_by_the_due_index_and_fire_on_time(
    cluster: Cluster,
) -> None:
    tasks = api(cluster)
    names = [f"minute{i:05d}" for i in range(N)]
    added = tasks.add_many(
        {"name": n, "task": "beatapp.record", "every": EVERY_S, "args": [i]}
        for i, n in enumerate(names)
    )
    assert added.created == N and added.ok
    beats = cluster.start(2, **ENV)
    wait_until(
        lambda: all(b.grep(r"owns \d+ of \d+ entries \(2 working nodes\)") for b in beats),
        timeout=30,
        what="both beats to own their share",
    )
    registry = Registry.from_settings(Settings(redis_url=cluster.registry_url, namespace="e2e"))
    client = redis.Redis.from_url(cluster.registry_url, decode_responses=True)

    def index() -> dict[str, float]:
        return dict(client.zrange(registry.keys.due, 0, -1, withscores=True))

    total = len(names) + len(client.hkeys(registry.keys.static))
    # every entry has its next tick there (a new interval entry's first tick is written
    # with it; the static ones' by their owners)
    wait_until(
        lambda: len(index()) == total and min(index().values()) > 0,
        timeout=15,
        what="the owners to write every entry's next tick",
    )
    victim, survivor = beats
    killed_ms = int(victim.kill() * 1000)
    wait_until(
        lambda: survivor.grep("entries that moved here"),
        timeout=15,
        what="the survivor to read the dead beat's entries",
    )
    (line,) = survivor.grep("entries that moved here")
    found = MOVED.search(line)
    assert found is not None and found[2] == "index", line
    assert int(found[1]) > 2_000, line  # more than one page: the large reassignment
    end_ms = now_ms() + 6_000
    wait_until(lambda: now_ms() > end_ms, timeout=10, what="six more seconds of ticks")
    cluster.stop_all()

    pub = cluster.count_published()
    pub.assert_once()
    # every tick due from the kill on went out; those due a node TTL after it (the crash is
    # taken by then, at the latest) within a second of their tick
    anchors = {n: st.anchor_ms for n, st in registry.states(names).items()}
    late: dict[str, float] = {}
    missing = []
    fired = {(f.entry, f.tick_ms): f.logged_at for f in pub.fired}
    for n in names:
        anchor = anchors[n]
        assert anchor is not None
        first = anchor + -(-(killed_ms - anchor) // (EVERY_S * 1000)) * EVERY_S * 1000
        for tick in range(first, end_ms - 1_000, EVERY_S * 1000):
            if (n, tick) not in pub.counts:
                missing.append((n, tick))
            elif tick > killed_ms + 3_000 and fired.get((n, tick), 0) * 1000 - tick > 1_000:
                late[n] = fired[(n, tick)] * 1000 - tick
    assert not missing, missing[:10]
    assert not late, late
    # The index is never later than an entry's next tick, and is that tick for almost all.
    # (Earlier is allowed: while the two beats started, both took some entries for theirs
    # for a moment, and the one that let go may have written its older tick last.)
    after = index()
    specs, _ = registry.entries()
    states = registry.states()
    real = {n: next_run_ms(spec, states[n]) for n, spec in specs.items()}
    assert len(after) == total == len(real)
    assert all(after[n] <= due for n, due in real.items() if due is not None)
    exact = sum(1 for n, due in real.items() if after[n] == due)
    assert exact >= 0.99 * total, (exact, total)
    # and each entry that fired after the kill has its new next tick: written by its owner
    fired_after = {e for (e, t) in pub.counts if t > killed_ms}
    assert len(fired_after) > 100
    assert all(after[n] == real[n] for n in fired_after), [
        (n, after[n], real[n]) for n in fired_after if after[n] != real[n]
    ][:5]
