"""Bulk-write benchmark: ``DynamicTasks.add_many`` against one ``add`` per entry.

Starts a throwaway redis-server, then for each N in ``--entries`` times:

- ``add``: one ``DynamicTasks.add`` per entry (one round trip each), on at most
  ``--add-limit`` entries (it is slow);
- ``add_many``: validate all, then write in pipelined chunks of ``--chunk``;
- ``add_many replace``: the same entries again with ``replace=True`` (versions read
  first: two round trips per chunk);
- ``put_entries``: the registry's pipelined write alone, on entries built beforehand
  (validation excluded), to show what validation costs.

Entries are interval entries (``every`` 60 s + i) with args and kwargs, half of them
``cron`` strings, as a CLI import would give them (mappings of ``add``'s fields). Redis
commands are counted by ``INFO commandstats`` (reset before each case): the script calls
(``evalsha``) and every command the scripts run inside, plus the client's reads.

Run from the repository root::

    python benchmarks/bench_bulk.py --entries 10000,100000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from celery_dcron import DynamicTasks  # noqa: E402
from celery_dcron.config import Settings  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


def make_tasks(url: str, namespace: str) -> DynamicTasks:
    app = Celery("bench_bulk", set_as_current=False)
    app.conf.timezone = "UTC"

    @app.task(name="bench.noop", shared=False)
    def noop(*args: Any, **kwargs: Any) -> None: ...

    return DynamicTasks(app, settings=Settings(redis_url=url, namespace=namespace))


def entries(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        schedule = {"every": 60 + i % 3600} if i % 2 else {"cron": f"{i % 60} * * * *"}
        out.append({"name": f"e{i:07d}", "task": "bench.noop", "args": [i],
                    "kwargs": {"n": i}, **schedule})  # fmt: skip
    return out


def commands(client: redis.Redis) -> tuple[int, int]:
    """(all commands, script calls) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    total = sum(int(v["calls"]) for k, v in stats.items() if k not in _OURS)
    return total, int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


#: the benchmark's own commands, not counted
_OURS = ("cmdstat_config", "cmdstat_info", "cmdstat_flushall")


def measure(client: redis.Redis, run: Callable[[], object]) -> tuple[float, int, int]:
    client.config_resetstat()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return (seconds, *commands(client))


Row = tuple[str, int, float, int, int]


def run_size(client: redis.Redis, url: str, n: int, chunk: int, add_limit: int) -> list[Row]:
    """The four cases on N entries (each in its own namespace of a flushed server)."""
    items = entries(n)
    client.flushall()
    few = items[: min(n, add_limit)]
    single = make_tasks(url, "single")
    bulk = make_tasks(url, "bulk")
    raw = make_tasks(url, "raw")
    for tasks in (single, bulk, raw):
        tasks.registry.load_scripts()

    def add_each() -> None:
        for e in few:
            single.add(e["name"], **{k: v for k, v in e.items() if k != "name"})

    def add_many(replace: bool) -> None:
        result = bulk.add_many(items, chunk=chunk, replace=replace)
        assert result.ok, (result.refused[:3], result.invalid[:3])

    rows: list[Row] = [
        ("add (one per call)", len(few), *measure(client, add_each)),
        ("add_many", n, *measure(client, lambda: add_many(False))),
        ("add_many replace", n, *measure(client, lambda: add_many(True))),
    ]
    specs = bulk.export()

    def put_all() -> None:
        for i in range(0, len(specs), chunk):
            raw.registry.put_entries(specs[i : i + chunk])

    rows.append(("put_entries (no validation)", n, *measure(client, put_all)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", default="10000,100000", help="comma-separated Ns")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--add-limit", type=int, default=5000)
    args = parser.parse_args(argv)
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        rows: list[Row] = []
        for n in (int(x) for x in args.entries.split(",")):
            rows.extend(run_size(client, server.url, n, args.chunk, args.add_limit))
        version = client.info("server")["redis_version"]
        cpu = platform.processor() or platform.machine()
        print(
            f"# {date.today()}  {platform.node()}  {cpu}  {os.cpu_count()} CPUs  "
            f"Python {platform.python_version()}  redis-server {version}  chunk {args.chunk}"
        )
        head = ("case", "entries", "seconds", "entries/s", "commands", "evalsha")
        print(f"{head[0]:<28} {head[1]:>8} {head[2]:>8} {head[3]:>10} {head[4]:>9} {head[5]:>8}")
        for case, n, seconds, total, evalsha in rows:
            print(
                f"{case:<28} {n:>8} {seconds:>8.2f} {n / seconds:>10,.0f} {total:>9} {evalsha:>8}"
            )
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
