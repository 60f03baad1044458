"""Harness of the end-to-end tests: real ``celery beat`` (and worker) subprocesses.

One :class:`Cluster` per test, on that test's own ``redis-server`` (the ``redis_server``
fixture), used as both the registry (db 0) and the Celery broker (db 1)::

    beats = cluster.start(3, DCRON_E2E_POLICY="all")   # waits until all are "working"
    cluster.wait_ticks(per_entry=5)                      # progress, not sleep
    victim.kill()                                       # SIGKILL (pause/resume/terminate)
    cluster.stop_all()                                  # SIGTERM, wait: final counts
    pub = cluster.count_published()                     # broker messages + beat logs
    pub.assert_once()                                   # G1 and deterministic task ids

Every process gets its own log file (``<label>.<generation>.log`` in the test's tmp dir);
the e2e ``conftest.py`` attaches their tails to the report of a failed test. Every process
is its own session, and :meth:`Cluster.cleanup` (the fixture's finalizer) SIGKILLs the
session of each one still alive; an ``atexit`` hook does the same if pytest dies first.

Readiness is read from the registry (the node's field in the status hash is ``working``),
never assumed after a sleep. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import redis

from celery_dcron.registry import Keys
from celery_dcron.ticks import task_id as dcron_task_id
from tests.servers import RedisServer

__all__ = [
    "Beat",
    "Cluster",
    "Fired",
    "Message",
    "Proc",
    "Published",
    "busiest",
    "gaps",
    "iso_to_ms",
    "now_ms",
    "wait_until",
]

E2E_DIR = Path(__file__).resolve().parent
REPO_DIR = E2E_DIR.parent.parent
NAMESPACE = "e2e"
QUEUE = "e2e"
KEY_PREFIX = "dcron"
KEYS = Keys(KEY_PREFIX, NAMESPACE)
REGISTRY_DB = 0
BROKER_DB = 1
RESULTS_DB = 2

#: Settings of the test cluster (see beatapp.py); tests override them per instance.
DEFAULT_ENV = {
    "DCRON_E2E_NAMESPACE": NAMESPACE,
    "DCRON_E2E_ENTRIES": "6",
    "DCRON_E2E_TTL": "3",
    "DCRON_E2E_HEARTBEAT": "0.5",
    "DCRON_E2E_POLICY": "once",
}

START_TIMEOUT_S = 40.0  # two contended cores, a cold ``import celery``
STOP_TIMEOUT_S = 15.0

#: ``[2026-01-01 10:00:00,123: INFO/MainProcess] dcron: fired every-1s-0 tick=... node=... id=...``
FIRED_RE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]*\] "
    r"dcron: fired (?P<entry>\S+) tick=(?P<tick>\S+) node=(?P<node>\S+) id=(?P<id>\S+)\s*$"
)
LOG_TIME_RE = re.compile(r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")
#: one per claim, alone or inside "re-publishing <n> unsent claims ...: ... | ..."
REPUBLISHED_RE = re.compile(r"re-publishing unsent claim (\S+) tick=(\S+) with its original id")

T = TypeVar("T")

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only when pytest dies mid-test
    for proc in list(_LIVE):
        _kill_session(proc)


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its session (it was started with start_new_session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5.0)
    _LIVE.discard(proc)


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}. {detail}")
        time.sleep(interval)


def iso_to_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def log_time(line: str) -> float | None:
    """Epoch seconds of a Celery log line (local time, as Celery writes it)."""
    match = LOG_TIME_RE.match(line)
    if match is None:
        return None
    return datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def gaps(ticks: Iterable[int]) -> list[int]:
    """Differences between consecutive ticks (sorted)."""
    ordered = sorted(ticks)
    return [b - a for a, b in itertools.pairwise(ordered)]


# -- processes --------------------------------------------------------------------------


class Proc:
    """One subprocess with its own log file and its own session."""

    def __init__(
        self,
        label: str,
        generation: int,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.label = label
        self.overrides = dict(overrides or {})  # env the test asked for, on top of the cluster's
        self.generation = generation
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.events: list[tuple[float, str]] = []  # (epoch s, "SIGKILL" ...) sent by the test
        log = log_path.open("ab")
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        _LIVE.add(self.proc)
        self.started_at = time.time()
        self.paused = False

    @property
    def name(self) -> str:
        return f"{self.label}.{self.generation}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def _send(self, signum: signal.Signals) -> float:
        at = time.time()
        self.events.append((at, signum.name))
        self.proc.send_signal(signum)
        return at

    def kill(self) -> float:
        """SIGKILL (a crash); returns when it is gone. Returns the time of the signal."""
        at = self._send(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)
        self.paused = False
        _LIVE.discard(self.proc)
        return at

    def pause(self) -> float:
        """SIGSTOP: the process freezes (a GC pause, a VM freeze)."""
        at = self._send(signal.SIGSTOP)
        self.paused = True
        return at

    def resume(self) -> float:
        """SIGCONT after :meth:`pause`."""
        at = self._send(signal.SIGCONT)
        self.paused = False
        return at

    def terminate(self, timeout: float = STOP_TIMEOUT_S, *, send: bool = True) -> int:
        """SIGTERM (a graceful stop) and wait for the exit; returns the exit code."""
        if self.paused:
            self.resume()
        if send and self.alive:
            self._send(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) did not exit within {timeout:.0f}s of SIGTERM; "
                f"log tail:\n{self.log_tail()}"
            ) from None
        _LIVE.discard(self.proc)
        return code

    def cleanup(self) -> None:
        if self.paused and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
        _kill_session(self.proc)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def grep(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [line for line in self.log_lines() if rx.search(line)]

    def __repr__(self) -> str:
        state = "paused" if self.paused else "alive" if self.alive else f"exit {self.returncode}"
        return f"<{type(self).__name__} {self.name} pid={self.pid} {state}>"


class Beat(Proc):
    """One ``celery beat -S celery_dcron.DistributedScheduler`` instance."""

    node_id: str | None = None

    def republished(self) -> set[tuple[str, int]]:
        """(entry, tick) of every ``re-publishing unsent claim`` this beat logged."""
        return {(m[1], iso_to_ms(m[2])) for m in REPUBLISHED_RE.finditer(self.log_text())}

    def fired(self) -> list[Fired]:
        out = []
        for line in self.log_lines():
            match = FIRED_RE.match(line)
            if match is None:
                continue
            out.append(
                Fired(
                    entry=match["entry"],
                    tick_ms=iso_to_ms(match["tick"]),
                    node=match["node"],
                    task_id=match["id"],
                    logged_at=datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                    beat=self.name,
                )
            )
        return out


# -- what was published ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fired:
    """One ``dcron: fired`` line of a beat log."""

    entry: str
    tick_ms: int
    node: str
    task_id: str
    logged_at: float  # epoch seconds (the log line's time)
    beat: str  # Proc.name of the beat that logged it


@dataclass(frozen=True, slots=True)
class Message:
    """One task message found in the broker's queue list."""

    entry: str | None
    tick_ms: int | None
    task_id: str | None
    task: str | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> Message:
        """From a task message's headers (Celery protocol 2)."""
        tick = headers.get("dcron_tick")
        return cls(
            entry=headers.get("periodic_task_name"),
            tick_ms=iso_to_ms(tick) if tick else None,
            task_id=headers.get("id"),
            task=headers.get("task"),
        )

    @classmethod
    def from_redis(cls, raw: str | bytes) -> Message:
        """From one item of a Redis broker's queue list (kombu's JSON envelope)."""
        return cls.from_headers(json.loads(raw).get("headers") or {})


@dataclass(slots=True)
class Published:
    """What reached the broker (``counts``), and who says it fired it (``fired``)."""

    counts: Counter[tuple[str, int]]
    messages: list[Message]
    fired: list[Fired]
    #: SIGKILLs the test sent: that many messages may lack their ``fired`` log line.
    kills: int = 0
    #: beat name -> times (epoch s) of the SIGKILLs the test sent it
    killed_at: dict[str, list[float]] = field(default_factory=dict)
    #: (entry, tick) -> names of the beats that logged re-publishing it as an unsent claim
    republished: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    #: times (epoch s) the test cut every beat off from the registry (its master killed)
    registry_cut_at: list[float] = field(default_factory=list)
    from_broker: bool = True
    nodes_by_tick: dict[tuple[str, int], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_tick: dict[tuple[str, int], list[str]] = defaultdict(list)
        for f in self.fired:
            by_tick[(f.entry, f.tick_ms)].append(f.node)
        self.nodes_by_tick = dict(by_tick)

    @property
    def entries(self) -> list[str]:
        return sorted({entry for entry, _ in self.counts})

    def ticks(self, entry: str) -> list[int]:
        return sorted(t for (e, t) in self.counts if e == entry)

    def node_of(self, entry: str, tick_ms: int) -> str | None:
        nodes = self.nodes_by_tick.get((entry, tick_ms))
        return nodes[0] if nodes else None

    def by_node(self) -> Counter[str]:
        """Number of ticks each node logged as fired."""
        return Counter(f.node for f in self.fired)

    def entries_by_node(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for f in self.fired:
            out[f.node].add(f.entry)
        return dict(out)

    def duplicates(self) -> dict[tuple[str, int], int]:
        return {k: n for k, n in self.counts.items() if n > 1}

    def describe(self, entry: str) -> str:
        return ", ".join(
            f"{t % 100_000}ms@{(self.node_of(entry, t) or '?').rsplit(':', 2)[-2]}"
            f"{'x' + str(self.counts[(entry, t)]) if self.counts[(entry, t)] > 1 else ''}"
            for t in self.ticks(entry)
        )

    def kill_window(self, key: tuple[str, int], n: int) -> str:
        """Why a duplicate is the window G1 documents, or "" if it is not. The window: a
        SIGKILL between a publish and its "mark sent" (or the registry cut off there: its
        master killed) leaves a pending claim, which the next owner re-publishes with the
        same task id. So: two copies, one of them logged as re-published, the other sent
        by a beat SIGKILLed just after (or not logged at all, when the kill came before
        the log line), or sent from 1 s before the registry's cut to 0.5 s after it (the
        "fired" line comes just before the mark; a claim made before the cut may be sent
        just after it). A claim lost with a master is claimed afresh, not re-published:
        never excused."""
        again = self.republished.get(key, set())
        if n != 2 or len(again) != 1:
            return ""
        first = [f for f in self.fired if (f.entry, f.tick_ms) == key and f.beat not in again]
        if first:
            f = first[0]
            for what, times, early in (
                (f"SIGKILL to {f.beat}", self.killed_at.get(f.beat, []), 0.0),
                ("registry master killed", self.registry_cut_at, 0.5),
            ):
                after = [at - f.logged_at for at in times if -early <= at - f.logged_at <= 1]
                if after:
                    return f"{what} {after[0]:+.3f}s after {f.beat} sent"
            return ""
        tick_s = key[1] / 1000
        killed = [b for b, ats in self.killed_at.items() if any(at >= tick_s for at in ats)]
        return f"first sender unlogged; SIGKILL to {killed} after the tick" if killed else ""

    def assert_once(self, *, kill_window: bool = True) -> None:
        """G1: every (entry, tick) published at most once, with its deterministic task id.

        With ``kill_window`` (the default), a duplicate in the one window the README
        documents for G1 (SIGKILL between publish and "mark sent"; the same id again) is
        printed, not failed: tests that SIGKILL at random times land in it now and then."""
        problems = []
        dups = self.duplicates()
        if kill_window:
            for key, n in sorted(dups.items()):
                why = self.kill_window(key, n)
                if why:
                    print(f"G1 window (documented), {key[0]} tick={key[1]}: {why}")
                    del dups[key]
        if dups:
            detail = []
            for (entry, tick), n in sorted(dups.items()):
                who = [
                    f"{f.beat}({f.node}) logged at {f.logged_at:.3f}"
                    for f in self.fired
                    if (f.entry, f.tick_ms) == (entry, tick)
                ]
                detail.append(f"  {entry} tick={tick} x{n}: {who}")
            problems.append(
                f"G1: {len(dups)} ticks published more than once:\n" + "\n".join(detail)
            )
        problems += self.id_problems()
        assert not problems, "\n".join(problems)

    def id_problems(self) -> list[str]:
        """Deterministic task ids, and the broker and the logs agree (duplicates aside)."""
        problems = []
        for m in self.messages:
            if m.entry is None or m.tick_ms is None:
                problems.append(f"message without periodic_task_name/dcron_tick headers: {m}")
                continue
            want = dcron_task_id(NAMESPACE, m.entry, m.tick_ms)
            if m.task_id != want:
                problems.append(f"{m.entry} tick={m.tick_ms}: task id {m.task_id} != {want}")
        for f in self.fired:
            want = dcron_task_id(NAMESPACE, f.entry, f.tick_ms)
            if f.task_id != want:
                problems.append(
                    f"{f.beat} logged {f.entry} tick={f.tick_ms} id={f.task_id} != {want}"
                )
        if self.from_broker:
            logged = {(f.entry, f.tick_ms) for f in self.fired}
            in_broker = set(self.counts)
            ghost = logged - in_broker
            if ghost:
                problems.append(f"logged as fired but not in the broker: {sorted(ghost)}")
            unlogged = in_broker - logged
            if len(unlogged) > self.kills:
                problems.append(
                    f"in the broker but no beat logged firing them ({self.kills} SIGKILLs "
                    f"explain at most {self.kills}): {sorted(unlogged)}"
                )
        return problems

    def max_gap(self, entry: str) -> int:
        return max(gaps(self.ticks(entry)), default=0)

    def missing(self, entry: str, every_ms: int) -> list[int]:
        """Ticks on the ``every_ms`` grid between the first and last published, not published."""
        ticks = self.ticks(entry)
        if not ticks:
            return []
        have = set(ticks)
        return [t for t in range(ticks[0], ticks[-1] + 1, every_ms) if t not in have]

    def off_grid(self, entry: str, every_ms: int) -> list[int]:
        ticks = self.ticks(entry)
        return [t for t in ticks if (t - ticks[0]) % every_ms]


def now_ms() -> int:
    return int(time.time() * 1000)


def busiest(
    fired: Iterable[Fired], beats: Iterable[Beat], *, since: float
) -> tuple[Beat, set[str]]:
    """The beat that fired the most distinct entries since ``since`` (epoch s), and those."""
    entries: dict[str, set[str]] = defaultdict(set)
    for f in fired:
        if f.logged_at >= since:
            entries[f.beat].add(f.entry)
    best = max(beats, key=lambda b: (len(entries.get(b.name, ())), b.name))
    return best, entries.get(best.name, set())


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """Beat (and worker) processes of one test, on one redis-server."""

    def __init__(
        self,
        server: RedisServer,
        workdir: Path,
        *,
        broker: RedisServer | None = None,
        **env: str,
    ) -> None:
        """``server`` holds the registry (db 0), and the broker (db 1) unless ``broker``
        (another redis-server: its db 1) is given. A beat started with
        ``DCRON_E2E_BROKER=<url>`` uses that broker instead."""
        self.server = server
        self.broker = broker or server
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**DEFAULT_ENV, **env}
        self.beats: list[Beat] = []  # every beat ever started, every generation
        self.workers: list[Proc] = []
        self._generations: Counter[str] = Counter()
        self._clients: dict[int, redis.Redis] = {}

    # -- addresses and clients

    @property
    def registry_url(self) -> str:
        return self.server.url_for(REGISTRY_DB)

    @property
    def broker_url(self) -> str:
        return self.broker.url_for(BROKER_DB)

    @property
    def results_url(self) -> str:
        return self.server.url_for(RESULTS_DB)

    def client(self, db: int = REGISTRY_DB) -> redis.Redis:
        if db not in self._clients:
            server = self.broker if db == BROKER_DB else self.server
            self._clients[db] = server.client(db=db, decode_responses=True)
        return self._clients[db]

    # -- starting

    @staticmethod
    def pythonpath(*first: str | Path) -> str:
        """The ``PYTHONPATH`` of the processes (beatapp, the repo), after ``first``."""
        parts = [*first, E2E_DIR, REPO_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]
        return os.pathsep.join(str(p) for p in parts)

    def _process_env(self, overrides: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            {
                "DCRON_E2E_BROKER": self.broker_url,
                "DCRON_E2E_REGISTRY": self.registry_url,
                "PYTHONPATH": self.pythonpath(),
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(overrides)
        return env

    def _next_label(self, prefix: str) -> str:
        taken = {b.label for b in self.beats} | {w.label for w in self.workers}
        i = 0
        while f"{prefix}{i}" in taken:
            i += 1
        return f"{prefix}{i}"

    def spawn(self, label: str | None = None, **env: str) -> Beat:
        """Start one beat; does not wait (see :meth:`wait_working`)."""
        label = label or self._next_label("beat")
        generation = self._generations[label]
        self._generations[label] += 1
        argv = [
            sys.executable, "-m", "celery", "-A", "beatapp", "beat",
            "-S", "celery_dcron.DistributedScheduler", "-l", "info",
            "--schedule", str(self.workdir / f"{label}.schedule"),
        ]  # fmt: skip
        beat = Beat(
            label, generation, argv, self._process_env(env), self.workdir,
            self.workdir / f"{label}.{generation}.log", overrides=env,
        )  # fmt: skip
        self.beats.append(beat)
        return beat

    def start(self, n: int = 1, *, timeout: float = START_TIMEOUT_S, **env: str) -> list[Beat]:
        """Start ``n`` beats and wait until every one is ``working`` in the registry."""
        beats = [self.spawn(**env) for _ in range(n)]
        self.wait_working(*beats, timeout=timeout)
        return beats

    def restart(self, beat: Beat, *, wait: bool = True, **env: str) -> Beat:
        """SIGKILL ``beat`` if it still runs, then start the same label again (a new node)."""
        if beat.alive:
            beat.kill()
        new = self.spawn(beat.label, **{**beat.overrides, **env})
        if wait:
            self.wait_working(new)
        return new

    def start_worker(self, label: str = "worker", **env: str) -> Proc:
        generation = self._generations[label]
        self._generations[label] += 1
        argv = [
            sys.executable, "-m", "celery", "-A", "beatapp", "worker",
            "-P", "solo", "-Q", QUEUE, "-l", "info", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-n", f"{label}@%h",
        ]  # fmt: skip
        worker = Proc(
            label, generation, argv,
            self._process_env({"DCRON_E2E_RESULTS": self.results_url, **env}),
            self.workdir, self.workdir / f"{label}.{generation}.log",
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    # -- the registry's view

    def statuses(self) -> dict[str, str]:
        """node id -> status, as in the registry's status hash."""
        return dict(self.client().hgetall(KEYS.status))

    def pid_of(self, node_id: str) -> int | None:
        """The pid in ``node_id``'s registry record (ids are ``<host>:<slot>`` by default)."""
        text = self.client().hget(KEYS.nodes, node_id)
        try:
            return int(json.loads(text)["pid"]) if text else None
        except (ValueError, KeyError, TypeError):
            return None

    def node_of(self, beat: Beat) -> tuple[str, str] | None:
        """(node id, status) of ``beat`` in the registry, if it is there."""
        for node_id, status in self.statuses().items():
            if self.pid_of(node_id) == beat.pid:
                return node_id, status
        return None

    def wait_status(
        self, beat: Beat, status: str | None, *, timeout: float = START_TIMEOUT_S
    ) -> None:
        """Wait until ``beat``'s node has ``status`` (``None``: is gone from the registry)."""

        def check() -> bool:
            if status is not None and not beat.alive:
                raise AssertionError(
                    f"{beat.name} exited with code {beat.returncode} before being {status}; "
                    f"log tail:\n{beat.log_tail()}"
                )
            found = self.node_of(beat)
            if found is not None:
                beat.node_id = found[0]
            return (found is None) if status is None else (found is not None and found[1] == status)

        wait_until(
            check,
            timeout=timeout,
            what=f"{beat.name} (pid {beat.pid}) to be {status or 'gone'} in {KEYS.status}",
            interval=0.05,
            on_timeout=lambda: f"registry status: {self.statuses()}; log tail:\n{beat.log_tail()}",
        )

    def wait_working(self, *beats: Beat, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        for beat in beats:
            self.wait_status(beat, "working", timeout=max(deadline - time.monotonic(), 0.1))

    def beat_of_node(self, node_id: str) -> Beat | None:
        for beat in self.beats:
            if beat.node_id == node_id or (
                beat.node_id is None and self.pid_of(node_id) == beat.pid
            ):
                return beat
        return None

    # -- what was published

    def fired(self) -> list[Fired]:
        """Every ``dcron: fired`` line of every beat that ever ran in this test."""
        out: list[Fired] = []
        for beat in self.beats:
            out.extend(beat.fired())
        return out

    def queue_keys(self) -> list[str]:
        client = self.client(BROKER_DB)
        keys = [QUEUE]  # plus kombu's priority lists "e2e\x06\x16<n>", if any
        keys += [k for k in client.scan_iter(match=QUEUE + "\x06\x16*") if k != QUEUE]
        return keys

    def messages(self) -> list[Message]:
        client = self.client(BROKER_DB)
        out = []
        for key in self.queue_keys():
            if client.type(key) != "list":
                continue
            out.extend(Message.from_redis(raw) for raw in client.lrange(key, 0, -1))
        return out

    def kills(self) -> int:
        return sum(1 for b in self.beats for _, sig in b.events if sig == "SIGKILL")

    def killed_at(self) -> dict[str, list[float]]:
        return {b.name: [at for at, sig in b.events if sig == "SIGKILL"] for b in self.beats}

    def republished(self) -> dict[tuple[str, int], set[str]]:
        out: dict[tuple[str, int], set[str]] = defaultdict(set)
        for beat in self.beats:
            for key in beat.republished():
                out[key].add(beat.name)
        return dict(out)

    def count_published(self) -> Published:
        """Every task message in the broker queue, keyed by (entry, tick), with log info."""
        messages = self.messages()
        counts: Counter[tuple[str, int]] = Counter(
            (m.entry, m.tick_ms) for m in messages if m.entry is not None and m.tick_ms is not None
        )
        return Published(
            counts=counts,
            messages=messages,
            fired=self.fired(),
            kills=self.kills(),
            killed_at=self.killed_at(),
            republished=self.republished(),
        )

    def count_fired(self) -> Published:
        """Like :meth:`count_published` but from the beats' logs (when the broker lost its data)."""
        fired = self.fired()
        counts: Counter[tuple[str, int]] = Counter((f.entry, f.tick_ms) for f in fired)
        return Published(
            counts=counts,
            messages=[],
            fired=fired,
            from_broker=False,
            killed_at=self.killed_at(),
            republished=self.republished(),
        )

    def wait_ticks(
        self,
        per_entry: int,
        *,
        after_ms: int = 0,
        entries: Iterable[str] | None = None,
        timeout: float = 30.0,
        source: str = "log",
    ) -> None:
        """Wait until each entry has ``per_entry`` ticks later than ``after_ms`` fired."""
        want = set(entries) if entries is not None else None

        def progress() -> Counter[str]:
            fired = self.fired() if source == "log" else None
            keys = (
                {(f.entry, f.tick_ms) for f in fired}
                if fired is not None
                else set(self.count_published().counts)
            )
            return Counter(e for e, t in keys if t > after_ms and (want is None or e in want))

        def done() -> bool:
            seen = progress()
            names = want if want is not None else set(seen) or {"?"}
            return all(seen[e] >= per_entry for e in names)

        wait_until(
            done,
            timeout=timeout,
            what=f"{per_entry} ticks after {after_ms} of {sorted(want) if want else 'every entry'}",
            interval=0.2,
            on_timeout=lambda: f"seen: {dict(progress())}",
        )

    def assert_alive(self, *beats: Beat) -> None:
        for beat in beats or [b for b in self.beats if b.alive]:
            assert beat.alive, f"{beat.name} exited ({beat.returncode}); log:\n{beat.log_tail()}"

    # -- stopping

    def live_beats(self) -> list[Beat]:
        return [b for b in self.beats if b.alive]

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> dict[str, int]:
        """SIGTERM every live beat at once and wait for all (final counts after this)."""
        live = self.live_beats()
        for beat in live:
            if beat.paused:
                beat.resume()
            beat._send(signal.SIGTERM)
        return {b.name: b.terminate(timeout, send=False) for b in live}

    def cleanup(self) -> None:
        for proc in [*self.beats, *self.workers]:
            proc.cleanup()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    def report(self, lines: int = 60) -> list[tuple[str, str]]:
        """(title, log tail) of every process, for a failed test's report."""
        out = []
        for proc in [*self.beats, *self.workers]:
            out.append((f"{proc.name} pid={proc.pid} {proc.log_path}", proc.log_tail(lines)))
        return out

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()
