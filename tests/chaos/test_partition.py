"""Scenario 5: one instance cut off from Redis by a network fault, then reconnected.

Three beats, 12 entries every second, policy ``all``. The victim (the instance that owns
the most entries) reaches the registry through a :class:`~tests.proxy.TcpProxy`; the
others connect directly. The fault lasts two node TTLs, in one of two forms:

``partition``  the proxy cuts the victim's connections and drops new ones: its commands
               fail at once (connection refused / reset);
``blackhole``  the proxy holds all traffic: the victim's commands time out
               (``dcron_socket_timeout``, 2 s); what it sent meanwhile reaches Redis late,
               after the heal (a partition that heals, not a loss).

Asserted:

- G5: the victim fires nothing from one node TTL after the fault on, until it is healed,
  and says so (``Redis unreachable``);
- G3: the others take its entries over: each of its entries arrives again within
  TTL + heartbeat (+ slack) of the fault;
- after the heal it rejoins (``working`` again) and fires again;
- G1/G2 over the whole run: no duplicate, no tick missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.chaos.observe import RedisQueueObserver
from tests.chaos.run import HEARTBEAT_S, SLACK_S, TTL_S, Chaos, every
from tests.e2e.harness import Cluster, busiest, wait_until
from tests.proxy import TcpProxy
from tests.servers import RedisServer

ENTRIES = every(18)  # so that the victim, one of 3 random node ids, owns some (P(none) ~ 0.07 %)
CUT_S = 2 * TTL_S


@pytest.mark.parametrize("mode", ["partition", "blackhole"])
def test_instance_cut_off_from_redis_stops_and_rejoins(
    cluster: Cluster,
    redis_server: RedisServer,
    broker: RedisServer,
    proxies: Callable[[str, int], TcpProxy],
    mode: str,
) -> None:
    proxy = proxies(redis_server.host, redis_server.port)
    observer = RedisQueueObserver(broker).start()
    run = Chaos(cluster, observer, f"partition-{mode}", policy="all", entries=ENTRIES)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    (candidate,) = run.start(1, DCRON_E2E_REGISTRY=via_proxy)
    others = cluster.start(2, DCRON_E2E_POLICY="all", DCRON_E2E_ENTRIES=str(len(ENTRIES)))
    observer.wait_each(ENTRIES, 3, since_s=time.time())
    victim, owned = busiest(cluster.fired(), [candidate], since=time.time() - 2.0)
    assert owned, f"{victim.name} owns nothing: {cluster.statuses()}"

    cut_s = run.fault(f"{mode} {victim.name} {CUT_S:.0f}s")
    if mode == "partition":
        proxy.partition()
    else:
        proxy.blackhole()
    wait_until(
        lambda: victim.grep(r"dcron: Redis unreachable"),
        timeout=TTL_S + 5,
        what=f"{victim.name} to log that Redis is unreachable",
    )
    cluster.wait_status(victim, None, timeout=TTL_S + 2 * HEARTBEAT_S + 5)
    time.sleep(max(cut_s + CUT_S - time.time(), 0))  # the fault lasts CUT_S: not a check
    heal_s = time.time()
    proxy.heal()
    cluster.wait_working(victim, timeout=20)
    wait_until(
        lambda: [f for f in victim.fired() if f.logged_at > heal_s],
        timeout=20,
        what=f"{victim.name} to fire again after the heal",
    )
    cluster.assert_alive(victim, *others)

    report = run.finish()
    problems = []
    stale = [
        (f.entry, f.logged_at - cut_s)
        for f in victim.fired()
        if cut_s + TTL_S < f.logged_at < heal_s
    ]
    if stale:
        problems.append(f"{victim.name} fired while cut off, past its TTL: {stale}")
    last_s = max((f.logged_at for f in victim.fired() if f.logged_at < heal_s), default=cut_s)
    sender = {(f.entry, f.tick_ms): f.beat for f in report.pub.fired}
    takeover = {}
    for entry in sorted(owned):
        back = min(
            (
                d.arrived_s
                for d in report.deliveries
                if d.message.entry == entry
                and d.arrived_s > cut_s
                and sender.get((entry, d.message.tick_ms or 0)) != victim.name
            ),
            default=None,
        )
        takeover[entry] = None if back is None else round(back - cut_s, 2)
    slow = {e: t for e, t in takeover.items() if t is None or t > TTL_S + HEARTBEAT_S + SLACK_S}
    if slow:
        problems.append(f"the others took over late (s after the fault): {slow}")
    report.extra["victim-stopped-after"] = f"{last_s - cut_s:.2f}s"
    report.extra["takeover-max"] = f"{max((t or 0) for t in takeover.values()):.2f}s"
    print(f"{victim.name} fired last {last_s - cut_s:.2f}s after the fault; takeover {takeover}")
    report.assert_ok(*problems)
