"""Static-sync benchmark: a large ``beat_schedule`` written to the registry.

Starts a throwaway redis-server, then for each N in ``--entries`` writes N static interval
entries two ways, each from an empty registry, then again unchanged (a restart), then
with the last 10 % gone from the schedule (removed from the registry):

- ``one call``: ``Registry.sync_static`` with the whole schedule, as the engine did
  before 0.x (one script call: it holds Redis, and the loop, for all of it);
- ``engine``: a real :class:`~celery_dcron.engine.Engine` on that registry, stepped
  until its static sync is done: a page of ``STATIC_PAGE`` entries (one script call) a
  pass of its loop.

Columns: ``s`` the wall time of the whole sync; ``passes`` the loop passes it took;
``max pass ms`` the longest of them (the longest the loop went without looking at its
heartbeat and due ticks; the last pass also starts the reload); ``max cmd ms`` the
longest command Redis ran meanwhile (its latency monitor, whole ms, threshold 1 ms): the
longest every other instance's heartbeat or claim could wait behind it.

Run from the repository root::

    python benchmarks/bench_static.py --entries 10000,100000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402

from celery_dcron.clock import RedisClock  # noqa: E402
from celery_dcron.config import Settings  # noqa: E402
from celery_dcron.engine import Engine, view  # noqa: E402
from celery_dcron.entries import EntrySpec  # noqa: E402
from celery_dcron.registry import Registry  # noqa: E402
from celery_dcron.schedules import IntervalSchedule  # noqa: E402
from celery_dcron.strategies import get_strategy  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


def schedule(n: int) -> list[EntrySpec]:
    return [
        EntrySpec(name=f"static{i:07d}", task="bench.noop", args=(i,),
                  schedule=IntervalSchedule(every_ms=86_400_000))
        for i in range(n)
    ]  # fmt: skip


def longest_command_ms(client: redis.Redis) -> int:
    """The latency monitor's worst ``command`` event since the last reset (whole ms)."""
    for event in client.execute_command("LATENCY", "LATEST"):
        if event[0] in (b"command", "command"):
            return int(event[3])
    return 0


def one_call(url: str, specs: list[EntrySpec]) -> tuple[float, int, int]:
    registry = Registry.from_settings(Settings(redis_url=url, namespace="bench"))
    start = time.perf_counter()
    registry.sync_static(specs)
    return time.perf_counter() - start, 1, int((time.perf_counter() - start) * 1000)


def engine_sync(url: str, specs: list[EntrySpec]) -> tuple[float, int, int]:
    settings = Settings(redis_url=url, namespace="bench", node_id="bench-static")
    engine = Engine(
        settings=settings,
        registry=Registry.from_settings(settings),
        clock=RedisClock(),
        strategy=get_strategy(settings.strategy),
        publish=lambda spec, tick, tid: None,
        static_entries=specs,
        listen=False,
    )
    passes, longest = 0, 0.0
    start = time.perf_counter()
    while not engine._synced:
        began = time.perf_counter()
        engine.step()
        longest = max(longest, time.perf_counter() - began)
        passes += 1
    total = time.perf_counter() - start
    engine.stop()
    return total, passes, int(longest * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", default="10000,100000", help="comma-separated Ns")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    client.config_set("latency-monitor-threshold", 1)
    print(
        f"# {date.today()}  {platform.node()}  {platform.machine()}  {os.cpu_count()} CPUs  "
        f"Python {platform.python_version()}  redis-server "
        f"{client.info('server')['redis_version']}  page {view.STATIC_PAGE}  "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'case':24s} {'entries':>8s} {'s':>7s} {'passes':>7s} {'max pass ms':>12s} "
          f"{'max cmd ms':>11s}")  # fmt: skip
    try:
        for n in (int(x) for x in args.entries.split(",")):
            specs = schedule(n)
            for how, run in (("one call", one_call), ("engine", engine_sync)):
                client.flushall()
                for when, listed in (
                    ("new", specs), ("unchanged", specs), ("10% gone", specs[: n * 9 // 10]),
                ):  # fmt: skip
                    client.execute_command("LATENCY", "RESET")
                    seconds, passes, pass_ms = run(server.url, listed)
                    print(f"{how + ', ' + when:24s} {len(listed):8d} {seconds:7.2f} {passes:7d} "
                          f"{pass_ms:12d} {longest_command_ms(client):11d}")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
