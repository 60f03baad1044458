"""Bulk-write benchmark: ``DynamicTasks.add_many`` against one ``add`` per entry.

Starts a throwaway redis-server, then for each N in ``--entries`` times:

- ``add``: one ``DynamicTasks.add`` per entry (one round trip each), on at most
  ``--add-limit`` entries (it is slow);
- ``add_many``: validate all, then write in pipelined chunks of ``--chunk``;
- ``add_many replace``: the same entries again with ``replace=True`` (one round trip per
  chunk too: the script numbers each overwrite);
- ``add_many skip_invalid`` (and ``replace``): both again in another namespace with
  ``skip_invalid=True``, where each chunk is written once validated (the writes overlap
  the validation of the next chunks; without it, they follow all of it);
- ``put_entries``: the registry's pipelined write alone, on entries built beforehand
  (validation excluded), to show what validation costs.

Entries are mappings of ``add``'s fields with args and kwargs, as a CLI import would give
them: ``--kind interval`` (``every`` 60 s + i % 3600), ``--kind cron`` (``cron`` strings,
60 distinct ones), or ``--kind mixed`` (half each, the default); ``--kind spread``
(``M H * * *``: daily, spread over the day, 1,440 distinct expressions); or ``--kind
idle``, the entries of ``bench_scale.py``'s bulk add (``every`` a day, ``args`` only).
``--per-call`` splits them into ``add_many`` calls of that many (``bench_scale.py``:
10,000), and ``--no-check-tasks`` skips the task check (as ``bench_scale.py`` does). Redis
commands are counted by ``INFO commandstats`` (reset before each case): the script calls
(``evalsha``) and every command the scripts run inside, plus the client's reads. CPU is
counted apart for the benchmark process (``time.process_time``) and for redis-server
(``INFO cpu``), in µs per entry: on a loaded machine the wall clock varies from run to
run, the CPU much less.
``ms/call`` is the average time of a script call in Redis (``usec_per_call``), ``max ms``
the longest command, from its latency monitor (whole ms): a script call blocks Redis
while it runs. Both are wall time: on a loaded machine they include time the server was
descheduled.

Run from the repository root::

    python benchmarks/bench_bulk.py --entries 10000,100000 --kind mixed
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def make_tasks(url: str, namespace: str, *, check_tasks: bool = True) -> DynamicTasks:
    app = Celery("bench_bulk", set_as_current=False)
    app.conf.timezone = "UTC"

    @app.task(name="bench.noop", shared=False)
    def noop(*args: Any, **kwargs: Any) -> None: ...

    settings = Settings(redis_url=url, namespace=namespace)
    return DynamicTasks(app, settings=settings, check_tasks=check_tasks)


def entries(n: int, kind: str = "mixed") -> list[dict[str, Any]]:
    if kind == "idle":  # bench_scale.py's
        return [{"name": f"idle{i:07d}", "task": "bench.noop", "args": [i], "every": 86400}
                for i in range(n)]  # fmt: skip
    if kind == "spread":  # daily, spread over the day: 1,440 distinct expressions
        return [{"name": f"s{i:07d}", "task": "bench.noop", "args": [i],
                 "cron": f"{i % 60} {(i // 60) % 24} * * *"} for i in range(n)]  # fmt: skip
    out: list[dict[str, Any]] = []
    for i in range(n):
        cron = kind == "cron" or (kind == "mixed" and i % 2 == 0)
        schedule = {"cron": f"{i % 60} * * * *"} if cron else {"every": 60 + i % 3600}
        out.append({"name": f"e{i:07d}", "task": "bench.noop", "args": [i],
                    "kwargs": {"n": i}, **schedule})  # fmt: skip
    return out


def commands(client: redis.Redis) -> tuple[int, int, float]:
    """(all commands, script calls, µs per script call) since the last CONFIG RESETSTAT."""
    stats = client.info("commandstats")
    total = sum(int(v["calls"]) for k, v in stats.items() if k not in _OURS)
    evalsha = stats.get("cmdstat_evalsha", {})
    return total, int(evalsha.get("calls", 0)), float(evalsha.get("usec_per_call", 0))


#: the benchmark's own commands, not counted
_OURS = ("cmdstat_config", "cmdstat_info", "cmdstat_flushall")


def server_cpu(client: redis.Redis) -> float:
    """CPU seconds redis-server has used (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Row:
    case: str
    entries: int
    seconds: float
    commands: int
    evalsha: int
    us_per_evalsha: float
    client_cpu_s: float
    server_cpu_s: float
    slowest_ms: int


def slowest_ms(client: redis.Redis) -> int:
    """The longest command (a script call: it blocks Redis while it runs) since the last
    LATENCY RESET, in ms, as Redis' latency monitor saw it (0: none took 1 ms)."""
    latest = client.execute_command("LATENCY", "LATEST")
    return max((int(event[3]) for event in latest if event[0] == "command"), default=0)


def measure(client: redis.Redis, case: str, n: int, run: Callable[[], object]) -> Row:
    client.config_resetstat()
    client.execute_command("LATENCY", "RESET")
    cpu, server = time.process_time(), server_cpu(client)
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    client_cpu, server_used = time.process_time() - cpu, server_cpu(client) - server
    return Row(case, n, seconds, *commands(client), client_cpu, server_used, slowest_ms(client))


def run_size(
    client: redis.Redis, url: str, n: int, chunk: int, add_limit: int, kind: str,
    per_call: int, check_tasks: bool,
) -> list[Row]:  # fmt: skip
    """The six cases on N entries (each in its own namespace of a flushed server)."""
    items = entries(n, kind)
    client.flushall()
    few = items[: min(n, add_limit)]
    single = make_tasks(url, "single", check_tasks=check_tasks)
    bulk = make_tasks(url, "bulk", check_tasks=check_tasks)
    raw = make_tasks(url, "raw", check_tasks=check_tasks)
    skipping = make_tasks(url, "skipping", check_tasks=check_tasks)
    for tasks in (single, bulk, raw, skipping):
        tasks.registry.load_scripts()

    def add_each() -> None:
        for e in few:
            single.add(e["name"], **{k: v for k, v in e.items() if k != "name"})

    def add_many(replace: bool, skip_invalid: bool = False, tasks: DynamicTasks = bulk) -> None:
        for lo in range(0, n, per_call or n):
            part = items[lo : lo + (per_call or n)]
            result = tasks.add_many(part, chunk=chunk, replace=replace, skip_invalid=skip_invalid)
            assert result.ok, (result.refused[:3], result.invalid[:3])

    rows = [
        measure(client, "add (one per call)", len(few), add_each),
        measure(client, "add_many", n, lambda: add_many(False)),
        measure(client, "add_many replace", n, lambda: add_many(True)),
        measure(client, "add_many skip_invalid", n, lambda: add_many(False, True, skipping)),
        measure(client, "add_many skip_inv. replace", n, lambda: add_many(True, True, skipping)),
    ]
    specs = bulk.export()

    def put_all() -> None:
        since = raw.registry.server_ms()  # one time for all chunks, as add_many reads it
        for i in range(0, len(specs), chunk):
            raw.registry.put_entries(specs[i : i + chunk], since_ms=since)

    rows.append(measure(client, "put_entries (no validation)", n, put_all))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--entries", default="10000,100000", help="comma-separated Ns")
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--add-limit", type=int, default=5000)
    parser.add_argument(
        "--kind", choices=("mixed", "interval", "cron", "spread", "idle"), default="mixed"
    )
    parser.add_argument("--per-call", type=int, default=0, help="entries per add_many call")
    parser.add_argument("--no-check-tasks", dest="check_tasks", action="store_false")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.config_set("latency-monitor-threshold", 1)
    try:
        load = os.getloadavg()[0]
        rows: list[Row] = []
        for n in (int(x) for x in args.entries.split(",")):
            rows.extend(run_size(client, server.url, n, args.chunk, args.add_limit, args.kind,
                                 args.per_call, args.check_tasks))  # fmt: skip
        version = client.info("server")["redis_version"]
        cpu = platform.processor() or platform.machine()
        print(
            f"# {date.today()}  {platform.node()}  {cpu}  {os.cpu_count()} CPUs  "
            f"Python {platform.python_version()}  redis-server {version}  chunk {args.chunk}  "
            f"kind {args.kind}  per call {args.per_call or 'all'}  check tasks "
            f"{args.check_tasks}  load {load:.1f} -> {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'case':<28} {'entries':>8} {'seconds':>8} {'entries/s':>10} {'cmd/entry':>9} "
            f"{'evalsha':>8} {'ms/call':>7} {'max ms':>6} {'µs client':>9} {'µs redis':>8}"
        )
        for r in rows:
            print(
                f"{r.case:<28} {r.entries:>8} {r.seconds:>8.2f} {r.entries / r.seconds:>10,.0f} "
                f"{r.commands / r.entries:>9.2f} {r.evalsha:>8} {r.us_per_evalsha / 1000:>7.2f} "
                f"{r.slowest_ms:>6} {r.client_cpu_s / r.entries * 1e6:>9.1f} "
                f"{r.server_cpu_s / r.entries * 1e6:>8.1f}"
            )
    finally:
        client.close()
        server.stop()


if __name__ == "__main__":
    main()
