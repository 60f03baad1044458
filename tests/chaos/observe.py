"""What the chaos tests measure: every message that reaches the broker, when, and a verdict.

An observer drains the test queue *while* the faults happen and stamps each message with
its arrival time on the test's clock (never a beat's: a beat's clock may be skewed):

    observer = RedisQueueObserver(broker_server).start()    # or AmqpQueueObserver(url, q)
    ...faults...
    cluster.stop_all(); observer.stop()                     # drains what is left
    report = Report.build("churn", cluster, observer.deliveries, policy="all", ...)
    report.emit()                                           # one summary line (-s, JSON)
    report.assert_ok()                                      # the summary is in the message

:class:`Report` counts (entry, tick) pairs and task ids:

duplicates  (entry, tick) published more than once. The README's G1 names one window,
            SIGKILL (or SIGSTOP) of the sender between its publish and its "mark sent",
            or the sender cut off from Redis then (a partition or blackhole fault): the
            next owner re-publishes the claim *with the same task id*. A duplicate
            is counted in that window (``window``) only if it is exactly that: two copies,
            one id (the deterministic one), one of them a ``re-publishing unsent claim``
            line, and the first sender SIGKILLed, SIGSTOPped or cut off within
            ``WINDOW_S`` of sending it, or before logging it, or resumed (SIGCONT) within
            ``WINDOW_S`` before logging it (frozen between its last check and the write).
            The broker has a window of its own: a publish that reached it but whose
            reply (LPUSH's, an AMQP confirm) was lost with the connection is reported
            failed and retried: two copies, one id, and a
            ``publish failed`` line for that tick. And a publish the broker *holds*
            longer than the node TTL (a ``broker-held`` fault: AMQP confirms that do not
            come back): its beat cannot heartbeat meanwhile, the others take it for dead
            and re-publish its claims, among them those of the ticks it had published
            just before (they are marked sent after the publishes of the pass): two
            copies, one id, one ``re-publishing`` line by another beat, a tick due
            within ``WINDOW_S`` before the hold began or during it, and the first
            sender's ``fired`` line after the hold began. Any other duplicate fails the
            test.
misses      ticks that the entry's misfire policy says must arrive and did not:
            ``all`` - every tick of the grid between the first and the last published;
            ``once`` - a hole in the grid is allowed only as one coalesced catch-up, the
            tick after it logged as ``missed N ticks; policy once fires 1 (up to tick=T)``
            with N the size of the hole. ``allowed`` explains other holes (the README's
            G2 limit after a Redis data loss).
gap         per entry, the longest time between two consecutive arrivals (the longest
            failover gap; 1 s in steady state), and ``late``, the longest delay between a
            tick's time and its arrival.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from celery_dcron.ticks import tick_iso
from tests.e2e.harness import (
    BROKER_DB,
    QUEUE,
    Cluster,
    Fired,
    Message,
    Published,
    iso_to_ms,
    log_time,
)
from tests.servers import RedisServer

__all__ = [
    "AmqpQueueObserver",
    "Delivery",
    "Fault",
    "Observer",
    "RedisQueueObserver",
    "Report",
    "failed_publishes",
]

#: A duplicate is in G1's documented window only if its first sender was SIGKILLed or
#: SIGSTOPped this soon after sending it (between its publish and its "mark sent").
WINDOW_S = 2.0
#: A fault during which the broker held all traffic for that many seconds
#: (:func:`broker_held` names it).
HELD_RE = re.compile(r"broker-held (\d+(?:\.\d+)?)s\b")


def broker_held(seconds: float) -> str:
    """The name of a fault in which the broker holds all traffic for ``seconds``: the
    duplicate checker knows it (:func:`_held`)."""
    return f"broker-held {seconds:g}s"


RESULTS_ENV = "DCRON_CHAOS_RESULTS"  # append each summary as a JSON line to this file


@dataclass(frozen=True, slots=True)
class Delivery:
    """One task message taken from the broker by the observer."""

    message: Message
    arrived_s: float  # epoch seconds, the test's clock


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault the test injected (for the summary and the report)."""

    at_s: float
    what: str  # "SIGKILL beat1.0", "SIGSTOP beat0.0 4.2s", "registry lost", ...

    def __str__(self) -> str:
        return self.what


class Observer(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._stopping = threading.Event()
        self._drained = threading.Event()
        self.errors = 0

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def _record(self, message: Message) -> None:
        with self._lock:
            self._deliveries.append(Delivery(message, time.time()))

    def count(self, since_s: float = 0.0) -> Counter[str]:
        """Deliveries per entry that arrived after ``since_s``."""
        return Counter(str(d.message.entry) for d in self.deliveries if d.arrived_s > since_s)

    def wait_each(
        self, entries: Iterable[str], n: int, *, since_s: float, timeout: float = 30.0
    ) -> None:
        """Wait until each entry has ``n`` deliveries after ``since_s``."""
        names = list(entries)
        deadline = time.monotonic() + timeout
        while True:
            seen = self.count(since_s)
            if all(seen[e] >= n for e in names):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {n} deliveries of each of "
                    f"{names}; seen {dict(seen)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> list[Delivery]:
        """Drain what is left in the queue, stop, and return every delivery."""
        self._stopping.set()
        self._drained.wait(timeout)
        self.join(timeout)
        return self.deliveries


class RedisQueueObserver(Observer):
    """Pops the test queue of a Redis broker (db 1) as messages arrive; survives restarts."""

    def __init__(self, server: RedisServer, *, db: int = BROKER_DB, queue: str = QUEUE) -> None:
        super().__init__(f"observer:{server.port}/{db}")
        self.server = server
        self.db = db
        # kombu's Redis transport: one list per queue, plus one per priority step
        self.keys = [queue] + [f"{queue}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]

    def start(self) -> RedisQueueObserver:  # type: ignore[override]
        super().start()
        return self

    def run(self) -> None:
        client: redis.Redis | None = None
        while True:
            stopping = self._stopping.is_set()
            try:
                if client is None:
                    client = self.server.client(db=self.db, socket_timeout=2.0)
                item = client.brpop(self.keys, timeout=0.2)
            except (redis.RedisError, OSError):
                self.errors += 1
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                if stopping and not self.server.is_running:
                    break
                time.sleep(0.05)
                continue
            if item is None:
                if stopping:
                    break
                continue
            self._record(Message.from_redis(item[1]))
        self._drained.set()
        if client is not None:
            client.close()


class AmqpQueueObserver(Observer):
    """Consumes (and acks) a RabbitMQ queue, declared as Celery declares its default queue."""

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(f"observer:{queue}")
        self.url = url
        self.queue = queue
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def _kombu_queue(self) -> Any:
        from kombu import Exchange, Queue

        return Queue(self.queue, Exchange(self.queue, type="direct"), routing_key=self.queue)

    def start(self) -> AmqpQueueObserver:  # type: ignore[override]
        super().start()
        if not self._ready.wait(15.0) or self._failure is not None:
            raise AssertionError(f"cannot consume {self.queue} at {self.url}: {self._failure}")
        return self

    def run(self) -> None:
        from kombu import Connection

        def on_message(body: Any, message: Any) -> None:
            self._record(Message.from_headers(message.headers or {}))
            message.ack()

        try:
            with Connection(self.url, connect_timeout=5) as conn:
                queue = self._kombu_queue()
                queue(conn.default_channel).declare()
                with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
                    self._ready.set()
                    idle = 0
                    while True:
                        try:
                            conn.drain_events(timeout=0.2)
                            idle = 0
                        except TimeoutError:
                            if self._stopping.is_set():
                                idle += 1
                                if idle >= 3:  # 0.6 s without a message after stop()
                                    break
        except BaseException as exc:  # reported by start() or stop()
            self._failure = exc
            self._ready.set()
        finally:
            self._drained.set()

    def stop(self, timeout: float = 15.0) -> list[Delivery]:
        deliveries = super().stop(timeout)
        if self._failure is not None:
            raise AssertionError(f"the observer of {self.queue} failed: {self._failure!r}")
        return deliveries

    def delete_queue(self) -> None:
        from kombu import Connection

        with Connection(self.url, connect_timeout=5) as conn:
            self._kombu_queue()(conn.default_channel).delete()


# -- the verdict ---------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """Duplicates, misses and gaps of one chaos run, and its one-line summary."""

    name: str
    policy: str
    every_ms: int
    entries: list[str]
    duration_s: float
    faults: list[Fault]
    pub: Published
    deliveries: list[Delivery]
    window_dups: dict[tuple[str, int], str] = field(default_factory=dict)
    bad_dups: dict[tuple[str, int], str] = field(default_factory=dict)
    misses: dict[str, list[int]] = field(default_factory=dict)
    explained: dict[str, list[int]] = field(default_factory=dict)
    max_gap: tuple[float, str] = (0.0, "")
    max_late: tuple[float, str] = (0.0, "")
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        name: str,
        cluster: Cluster,
        deliveries: Sequence[Delivery],
        *,
        policy: str,
        entries: Sequence[str],
        duration_s: float,
        faults: Sequence[Fault] = (),
        every_ms: int = 1000,
        allowed: Callable[[str, int], bool] | None = None,
    ) -> Report:
        """``allowed(entry, tick_ms)``: a missing tick that the scenario's documented limit
        explains (reported as ``explained``, not as a miss)."""
        messages = [d.message for d in deliveries]
        counts: Counter[tuple[str, int]] = Counter(
            (m.entry, m.tick_ms) for m in messages if m.entry is not None and m.tick_ms is not None
        )
        pub = Published(
            counts=counts, messages=messages, fired=cluster.fired(), kills=cluster.kills()
        )
        report = cls(
            name=name,
            policy=policy,
            every_ms=every_ms,
            entries=list(entries),
            duration_s=duration_s,
            faults=list(faults),
            pub=pub,
            deliveries=list(deliveries),
        )
        report._duplicates(cluster)
        report._misses(cluster, allowed)
        report._timing()
        report.problems += pub.id_problems()
        return report

    # -- duplicates

    def _duplicates(self, cluster: Cluster) -> None:
        republished = _republished(cluster)
        failed = Counter((e, t) for e, t, _ in failed_publishes(cluster))
        signals = {
            b.name: [(at, sig) for at, sig in b.events if sig in ("SIGKILL", "SIGSTOP", "SIGCONT")]
            for b in cluster.beats
        }
        # Cutting a beat off from Redis right after a publish loses its "mark sent" just
        # as a SIGKILL does (faults named "partition <beat> ..." / "blackhole <beat> ...").
        for fault in self.faults:
            mode, _, rest = fault.what.partition(" ")
            if mode in ("partition", "blackhole") and rest:
                signals.setdefault(rest.split()[0], []).append((fault.at_s, mode.upper()))
        # the broker held all traffic (start, seconds): faults named "broker-held <s>s ..."
        holds = [(f.at_s, float(m[1])) for f in self.faults if (m := HELD_RE.match(f.what))]
        ids: dict[tuple[str, int], set[str | None]] = defaultdict(set)
        for m in self.pub.messages:
            if m.entry is not None and m.tick_ms is not None:
                ids[(m.entry, m.tick_ms)].add(m.task_id)
        for key, n in sorted(self.pub.duplicates().items()):
            entry, tick = key
            senders = [f for f in self.pub.fired if (f.entry, f.tick_ms) == key]
            again = republished.get(key, [])
            why = _window(key, n, ids[key], senders, again, signals) or _held(
                key, n, ids[key], senders, again, holds
            )
            if not why and len(ids[key]) == 1 and failed[key] >= n - 1:
                # Each publish reported as failed that had reached the broker anyway (a
                # held connection reset before the confirm) adds one copy, same id.
                why = (
                    f"{failed[key]} publish(es) reported as failed had reached the broker; "
                    "retried, same id"
                )
            detail = (
                f"{entry} tick={tick_iso(tick)} x{n} ids={sorted(map(str, ids[key]))} "
                f"fired by {[(f.beat, round(f.logged_at, 3)) for f in senders]} "
                f"re-published by {again}"
            )
            if why:
                self.window_dups[key] = f"{detail}: {why}"
            else:
                self.bad_dups[key] = detail + "".join(
                    f"\n    {line}" for line in _context(cluster, key, signals)
                )

    # -- misses

    def _misses(self, cluster: Cluster, allowed: Callable[[str, int], bool] | None) -> None:
        coalesced = _coalesced(cluster) if self.policy == "once" else set()
        for entry in self.entries:
            ticks = self.pub.ticks(entry)
            if not ticks:
                self.problems.append(f"{entry} never fired")
                continue
            off = self.pub.off_grid(entry, self.every_ms)
            if off:
                self.problems.append(f"{entry}: ticks off the grid {off}")
            for a, b in itertools.pairwise(ticks):
                hole = [t for t in range(a + self.every_ms, b, self.every_ms)]
                if not hole:
                    continue
                if self.policy == "once" and (entry, b, len(hole)) in coalesced:
                    continue  # one coalesced catch-up, logged: what `once` promises
                for t in hole:
                    if allowed is not None and allowed(entry, t):
                        self.explained.setdefault(entry, []).append(t)
                    else:
                        self.misses.setdefault(entry, []).append(t)

    # -- timing

    def _timing(self) -> None:
        arrivals: dict[str, list[float]] = defaultdict(list)
        worst_late = (0.0, "")
        for d in self.deliveries:
            m = d.message
            if m.entry is None or m.tick_ms is None:
                continue
            arrivals[m.entry].append(d.arrived_s)
            late = d.arrived_s - m.tick_ms / 1000
            if late > worst_late[0]:
                worst_late = (late, f"{m.entry} tick={tick_iso(m.tick_ms)}")
        worst_gap = (0.0, "")
        for entry, times in arrivals.items():
            times.sort()
            for a, b in itertools.pairwise(times):
                if b - a > worst_gap[0]:
                    worst_gap = (b - a, f"{entry} at {time.strftime('%H:%M:%S', time.gmtime(a))}")
        self.max_gap = worst_gap
        self.max_late = worst_late

    # -- output

    @property
    def summary(self) -> str:
        kinds = Counter(str(f).split(" ", 1)[0] for f in self.faults)
        faults = ",".join(f"{k}x{n}" for k, n in sorted(kinds.items())) or "none"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"chaos[{self.name}] policy={self.policy} {self.duration_s:.0f}s "
            f"faults={len(self.faults)}({faults}) ticks={len(self.pub.counts)} "
            f"messages={len(self.pub.messages)} duplicates={len(self.bad_dups)} "
            f"window-duplicates={len(self.window_dups)} misses="
            f"{sum(len(v) for v in self.misses.values())} explained-skips="
            f"{sum(len(v) for v in self.explained.values())} "
            f"max-gap={self.max_gap[0]:.2f}s max-late={self.max_late[0]:.2f}s{extra}"
        )

    def emit(self) -> str:
        line = self.summary
        print(f"\n{line}")
        path = os.environ.get(RESULTS_ENV)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"summary": line, "at": time.time(), **self.as_dict()}) + "\n")
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "policy": self.policy,
            "duration_s": round(self.duration_s, 1),
            "faults": [(round(f.at_s, 3), f.what) for f in self.faults],
            "ticks": len(self.pub.counts),
            "duplicates": len(self.bad_dups),
            "window_duplicates": len(self.window_dups),
            "misses": sum(len(v) for v in self.misses.values()),
            "explained": sum(len(v) for v in self.explained.values()),
            "max_gap_s": round(self.max_gap[0], 3),
            "max_late_s": round(self.max_late[0], 3),
            **self.extra,
        }

    def assert_ok(self, *more: str) -> None:
        problems = [*self.problems, *more]
        if self.bad_dups:
            problems.append(
                "duplicates outside G1's window:\n  " + "\n  ".join(self.bad_dups.values())
            )
        if self.misses:
            problems.append(
                f"ticks missing (policy {self.policy}):\n  "
                + "\n  ".join(
                    f"{e}: {[tick_iso(t) for t in ts]}; published: {self.pub.describe(e)}"
                    for e, ts in self.misses.items()
                )
            )
        if self.window_dups:
            # Not a failure (the README documents the window), but always shown.
            print("G1 window duplicates:\n  " + "\n  ".join(self.window_dups.values()))
        faults = ", ".join(
            f"{time.strftime('%H:%M:%S', time.gmtime(f.at_s))} {f}" for f in self.faults
        )
        assert not problems, f"{self.summary}\nfaults: {faults}\n" + "\n".join(problems)


FAILED_RE = re.compile(r"dcron: publish failed (\S+) tick=(\S+) id=(\S+): .*will retry")


def failed_publishes(cluster: Cluster) -> list[tuple[str, int, str]]:
    """(entry, tick, task id) of every ``publish failed`` line of every beat."""
    return [
        (m[1], iso_to_ms(m[2]), m[3])
        for b in cluster.beats
        for line in b.log_lines()
        if (m := FAILED_RE.search(line))
    ]


def _republished(cluster: Cluster) -> dict[tuple[str, int], list[str]]:
    """(entry, tick) -> beats that logged ``re-publishing unsent claim`` for it."""
    # one line per claim, or several in one "re-publishing N unsent claims ...: ... | ..."
    rx = re.compile(r"re-publishing unsent claim (\S+) tick=(\S+) with its original id")
    out: dict[tuple[str, int], list[str]] = defaultdict(list)
    for beat in cluster.beats:
        for line in beat.log_lines():
            for match in rx.finditer(line):
                out[(match[1], iso_to_ms(match[2]))].append(beat.name)
    return dict(out)


def _coalesced(cluster: Cluster) -> set[tuple[str, int, int]]:
    """(entry, tick fired, ticks skipped) of every ``policy once fires 1`` catch-up line
    (the line counts every missed tick, the one fired late included)."""
    # one line per entry, or several entries in one "catch-up of N entries: ... | ..." line
    rx = re.compile(r"(\S+) missed (\d+) ticks; policy once fires 1 \(up to tick=([^)\s]+)\)")
    out = set()
    for beat in cluster.beats:
        for line in beat.log_lines():
            for match in rx.finditer(line):
                out.add((match[1], iso_to_ms(match[3]), int(match[2]) - 1))
    return out


#: What a duplicate outside G1's window is shown with: every beat's log lines from this
#: long before its tick to this long after, that name its entry or tell of nodes.
CONTEXT_S = (4.0, 8.0)
_CONTEXT_RE = re.compile(
    r"nodes |taking its entries|re-publishing|taken over|superseded|Redis|crash|status "
)


def _context(
    cluster: Cluster, key: tuple[str, int], signals: dict[str, list[tuple[float, str]]]
) -> list[str]:
    """The beats' log lines and signals around a duplicate's tick, to tell what happened
    (a chaos run is random: its logs are gone once the test's tmp dir is)."""
    entry, tick = key[0], key[1] / 1000
    lo, hi = tick - CONTEXT_S[0], tick + CONTEXT_S[1]
    out = [
        f"{time.strftime('%H:%M:%S', time.gmtime(at))}.{int(at % 1 * 1000):03d} {sig} {beat}"
        for beat, events in signals.items()
        for at, sig in events
        if lo <= at <= hi
    ]
    for beat in cluster.beats:
        for line in beat.log_lines():
            at = log_time(line)
            if at is None or not lo <= at <= hi:
                continue
            if f"{entry} " in line or f"{entry}'" in line or _CONTEXT_RE.search(line):
                out.append(f"{beat.name}: {line[:220]}")
    return out[:120] + _broker_stalls(cluster, lo, hi)


def _broker_stalls(cluster: Cluster, lo: float, hi: float) -> list[str]:
    """The broker's stalls between ``lo`` and ``hi`` (epoch s) that its latency monitor
    kept (``LATENCY HISTORY``, events of 100 ms or more when the chaos broker's threshold
    is set: conftest.py), such as a fsync held by a busy disk: a publish waits them out,
    and one longer than the node TTL makes its beat look dead meanwhile."""
    try:
        client = cluster.broker.client()
        events = {
            event[0]: client.execute_command("LATENCY", "HISTORY", event[0])
            for event in client.execute_command("LATENCY", "LATEST")
        }
    except Exception as exc:  # the broker killed, or a server without the monitor
        return [f"broker latency: not read ({exc!r})"]
    stalls = [
        f"{time.strftime('%H:%M:%S', time.gmtime(int(at)))} broker {_text(name)} {ms} ms"
        for name, history in events.items()
        for at, ms in history
        if lo - 1 <= int(at) <= hi
    ]
    return sorted(stalls) or [f"broker latency: no stall of 100 ms or more in {hi - lo:.0f}s"]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _held(
    key: tuple[str, int],
    n: int,
    ids: set[str | None],
    senders: list[Fired],
    again: list[str],
    holds: list[tuple[float, float]],
) -> str:
    """Why a duplicate is a publish held by the broker past the node TTL (G1's window
    with a broker apart from the registry), or "" if it is not."""
    if n != 2 or len(ids) != 1 or len(again) != 1:
        return ""
    first = [f for f in senders if f.beat not in again]
    tick_s = key[1] / 1000
    for f in first:
        for start, held_s in holds:
            if start - WINDOW_S <= tick_s <= start + held_s and f.logged_at >= start:
                return (
                    f"{f.beat} logged it {f.logged_at - start:.2f}s after the broker began "
                    f"holding traffic ({held_s:.0f}s): taken for dead meanwhile, its claim "
                    f"re-published by {again[0]}"
                )
    return ""


def _window(
    key: tuple[str, int],
    n: int,
    ids: set[str | None],
    senders: list[Fired],
    again: list[str],
    signals: dict[str, list[tuple[float, str]]],
) -> str:
    """Why a duplicate is G1's documented window, or "" if it is not."""
    if n != 2 or len(ids) != 1 or len(again) != 1:
        return ""
    first = [f for f in senders if f.beat not in again]
    if not first:
        # The first sender died before logging it: some other beat was SIGKILLed after
        # the tick was due. (Not bounded by the re-publisher's log time: a beat with a
        # skewed clock, in the clock-skew scenario, writes skewed times in its log.)
        tick_s = key[1] / 1000
        killed = [
            f"SIGKILL to {b} {at - tick_s:+.2f}s after the tick"
            for b, events in signals.items()
            if b not in again
            for at, sig in events
            if sig == "SIGKILL" and at >= tick_s
        ]
        return f"first sender unlogged; {', '.join(killed)}" if killed else ""
    f = first[0]
    for at, sig in signals.get(f.beat, []):
        # logged_at is the sender's own (possibly skewed) clock: compare loosely
        if sig == "SIGCONT":
            # Frozen between its last check and the socket write, it sent on waking
            # (after the others had re-published): its line comes just after the SIGCONT.
            if 0 <= f.logged_at - at <= WINDOW_S:
                return f"{f.beat} sent {f.logged_at - at:.2f}s after its SIGCONT"
        elif -WINDOW_S <= at - f.logged_at <= WINDOW_S:
            return f"{sig} to {f.beat} {at - f.logged_at:+.2f}s after it sent"
    return ""
