"""Scenario 4: instances whose wall clocks are off by +30 s and -30 s (G7).

The skew is real: those beats run under libfaketime (``LD_PRELOAD``, ``FAKETIME=+30s``
or ``-30s``), so ``time.time()``, ``datetime.now()`` and their log timestamps are off;
only the monotonic clock is left alone (see faketime_site/sitecustomize.py for why).
Due-ness must follow the Redis server's clock (celery_dcron.clock.RedisClock), so:

- the +30 s instance starts first and alone: it registers and anchors the entries;
- then a -30 s one and an unskewed one join; the unskewed one is SIGKILLed (its entries
  fail over to the two skewed ones) and started again; then the +30 s one is SIGKILLed
  and started again (a skewed instance joining a running cluster);
- asserted: no duplicate, no tick missing (policy ``all``), no tick *early* (arrived
  before its time by the test's clock, which is the Redis host's), and every tick the
  skewed instances fire arrives within ``ON_TIME_S`` of its time, outside the failover
  windows after a SIGKILL; each skewed instance fires some ticks; its log timestamps
  show the skew (proof that libfaketime was in force).

The test fails (fixture error, not a skip) when libfaketime is not installed.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.chaos.observe import RedisQueueObserver
from tests.chaos.run import HEARTBEAT_S, SLACK_S, TTL_S, Chaos, every
from tests.e2e.harness import Beat, Cluster, log_time
from tests.servers import RedisServer

ENTRIES = every(18)  # so that each of 3 random node ids owns some (P(none) ~ 0.07 %)
SITE_DIR = Path(__file__).resolve().parent / "faketime_site"
SKEW_S = 30.0
ON_TIME_S = 1.0
EARLY_S = 0.05  # the observer's stamp vs. Redis TIME on one host


def skewed(cluster: Cluster, libfaketime: str, offset_s: float) -> dict[str, str]:
    return {
        "LD_PRELOAD": libfaketime,
        "FAKETIME": f"{offset_s:+.0f}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": cluster.pythonpath(SITE_DIR),
    }


def test_skewed_clocks_fire_on_redis_time_without_duplicates(
    cluster: Cluster, broker: RedisServer, libfaketime: str
) -> None:
    observer = RedisQueueObserver(broker).start()
    run = Chaos(cluster, observer, "clock-skew", policy="all", entries=ENTRIES)
    (ahead,) = run.start(1, **skewed(cluster, libfaketime, +SKEW_S))
    env = {"DCRON_E2E_POLICY": "all", "DCRON_E2E_ENTRIES": str(len(ENTRIES))}
    behind = cluster.spawn(**env, **skewed(cluster, libfaketime, -SKEW_S))
    plain = cluster.spawn(**env)
    cluster.wait_working(behind, plain)
    observer.wait_each(ENTRIES, 4, since_s=time.time())
    failovers: list[float] = []

    for victim in (plain, ahead):
        failovers.append(run.fault(f"SIGKILL {victim.name}"))
        victim.kill()
        observer.wait_each(ENTRIES, 3, since_s=failovers[-1] + TTL_S + HEARTBEAT_S, timeout=30)
        new = cluster.restart(victim)
        if victim is ahead:
            ahead = new
        observer.wait_each(ENTRIES, 3, since_s=time.time())

    report = run.finish()
    problems = []
    skews = {b.name: _log_skew(b) for b in cluster.beats}
    for beat, want in ((ahead, SKEW_S), (behind, -SKEW_S)):
        if abs(skews[beat.name] - want) > 5:
            problems.append(f"{beat.name}: log clock off by {skews[beat.name]:+.1f}s, not {want}")
    sender = {(f.entry, f.tick_ms): f.beat for f in report.pub.fired}
    skewed_beats = {b.name for b in cluster.beats if "FAKETIME" in b.overrides}
    fired_by_skewed = 0
    late, early = [], []
    for d in report.deliveries:
        m = d.message
        key = (m.entry or "", m.tick_ms or 0)
        delay = d.arrived_s - key[1] / 1000
        if delay < -EARLY_S:
            early.append((key, round(delay, 3), sender.get(key)))
        if sender.get(key) not in skewed_beats:
            continue
        fired_by_skewed += 1
        in_failover = any(k - 1 <= key[1] / 1000 <= k + TTL_S + HEARTBEAT_S for k in failovers)
        if not in_failover and delay > ON_TIME_S + SLACK_S:
            late.append((key, round(delay, 3), sender.get(key)))
    if early:
        problems.append(f"ticks arrived before their time: {early[:10]}")
    if late:
        problems.append(f"ticks of skewed instances late by more than {ON_TIME_S}s: {late[:10]}")
    for name in sorted(skewed_beats):
        if not any(f.beat == name for f in report.pub.fired):
            problems.append(f"{name} (skewed) fired nothing")
    report.extra["skewed-ticks"] = fired_by_skewed
    report.extra["log-skews"] = ",".join(f"{n}:{s:+.0f}s" for n, s in sorted(skews.items()))
    print(f"skews seen in the logs: {report.extra['log-skews']}; {fired_by_skewed} ticks by them")
    report.assert_ok(*problems)


def _log_skew(beat: Beat) -> float:
    """How far the beat's log clock was from the real one when it started (seconds)."""
    for line in beat.log_lines():
        at = log_time(line)
        if at is not None:
            return at - beat.started_at
    return float("nan")
