"""The change feed against three real beats (G8): an add, a change, a pause and a removal
made from another process each reach the entry's owner through the feed, and no beat
reloads every entry for them; a feed trimmed past the beats (a gap) makes each of them
reload in full exactly once."""

from __future__ import annotations

import re
import time
from itertools import pairwise

import redis

from celery_dcron.config import Settings
from celery_dcron.registry import Registry
from tests.e2e.harness import Beat, Cluster, now_ms, wait_until
from tests.e2e.test_dynamic import api, ticks

RELOAD = "dcron: reloading every entry ("


def reloads(beats: list[Beat], reason: str = "") -> list[int]:
    """Full reloads each beat logged after its start (INFO lines; the start's is DEBUG)."""
    pattern = re.escape(RELOAD + reason)
    return [len(b.grep(pattern)) for b in beats]


def test_changes_reach_the_owner_through_the_feed_and_a_gap_reloads_once(
    cluster: Cluster,
) -> None:
    beats = cluster.start(3, DCRON_E2E_ENTRIES="3")
    tasks = api(cluster)

    tasks.add("fed", "beatapp.record", every=1)
    wait_until(lambda: ticks(cluster, "fed"), timeout=10, what="the added entry to fire")

    changed = now_ms()
    tasks.update("fed", every=2)
    wait_until(
        lambda: len([t for t in ticks(cluster, "fed") if t > changed + 1000]) >= 2,
        timeout=10,
        what="two ticks on the changed schedule",
    )
    after = [t for t in ticks(cluster, "fed") if t > changed + 1000]
    assert all(b - a == 2000 for a, b in pairwise(after)), after

    tasks.pause("fed")
    paused = now_ms()
    time.sleep(3)  # nothing may fire in this window: part of the check, bounded
    assert not [t for t in ticks(cluster, "fed") if t > paused + 1200]
    tasks.resume("fed")
    resumed = now_ms()
    wait_until(
        lambda: [t for t in ticks(cluster, "fed") if t > resumed],
        timeout=10,
        what="the entry to fire again after resume",
    )

    tasks.remove("fed")
    removed = now_ms()
    time.sleep(3)
    assert not [t for t in ticks(cluster, "fed") if t > removed + 1200]
    assert reloads(beats) == [0, 0, 0], "a change made a beat reload every entry"

    # A gap: the feed trimmed past every beat. Each reloads once, then follows the feed.
    registry = Registry.from_settings(Settings(redis_url=cluster.registry_url, namespace="e2e"))
    client = redis.Redis.from_url(cluster.registry_url)
    client.xtrim(registry.keys.feed, maxlen=0, approximate=False)
    client.hincrby(registry.keys.meta, "entries", 5)  # as if 5 trimmed records were written
    tasks.add("after-gap", "beatapp.record", every=1)
    wait_until(
        lambda: reloads(beats, "feed gap") == [1, 1, 1],
        timeout=10,
        what="each beat to reload once after the gap",
    )
    wait_until(lambda: ticks(cluster, "after-gap"), timeout=10, what="the entry added after it")
    tasks.update("after-gap", every=2)  # followed through the feed again, no reload
    time.sleep(2)
    assert reloads(beats) == [1, 1, 1]
    cluster.count_published().assert_once()
