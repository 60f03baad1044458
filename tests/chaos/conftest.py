"""Fixtures of the chaos tests: real beats, real servers, real faults.

    cluster      beats on their own registry redis-server (``redis_server``) with a
                 separate broker redis-server (``broker``, append-only, so a SIGKILL of
                 it loses no queued message); beat logs are attached to a failed test
    broker       that broker redis-server (kill / restart it freely)
    proxies      a factory of :class:`~tests.proxy.TcpProxy`, all stopped at teardown
    rabbitmq     the AMQP URL of the RabbitMQ at 127.0.0.1:5672 (guest/guest), checked
    libfaketime  the path of ``libfaketime.so.1``

A missing service or library is a fixture error that names the fix, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import CLUSTER_KEY, pytest_runtest_makereport
from tests.e2e.harness import Cluster
from tests.proxy import TcpProxy
from tests.servers import RedisServer, RedisServerError

__all__ = ["pytest_runtest_makereport"]  # the e2e hook: logs of the beats in a failed report

#: fsync every write: the broker's queue survives its own SIGKILL; its stalls of 100 ms
#: or more are kept by its latency monitor (a fsync held by a busy disk holds every
#: publish meanwhile: reported next to a duplicate, observe.py)
APPEND_ONLY = [
    "--appendonly", "yes", "--appendfsync", "always", "--latency-monitor-threshold", "100",
]  # fmt: skip

RABBITMQ_ENV = "DCRON_RABBITMQ_URL"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
LIBFAKETIME_ENV = "DCRON_LIBFAKETIME"
LIBFAKETIME_PATHS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    """A broker redis-server of its own (append-only, fsync always)."""
    try:
        server = RedisServer(extra_args=APPEND_ONLY).start()
    except RedisServerError as exc:
        pytest.fail(f"cannot start the broker redis-server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(
    redis_server: RedisServer,
    broker: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    """Beats on ``redis_server`` (registry) and ``broker``; all killed at teardown."""
    c = Cluster(redis_server, tmp_path / "procs", broker=broker)
    request.node.stash[CLUSTER_KEY] = c
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def proxies() -> Iterator[Callable[[str, int], TcpProxy]]:
    """``make(host, port)`` starts a TcpProxy to host:port; every one is stopped after."""
    made: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port).start()
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()


@pytest.fixture
def rabbitmq() -> str:
    """The AMQP URL of a reachable RabbitMQ (``$DCRON_RABBITMQ_URL`` or guest@127.0.0.1)."""
    from kombu import Connection

    url = os.environ.get(RABBITMQ_ENV, RABBITMQ_URL)
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {url} ({exc!r}). The chaos tests of the broker "
            "need one: start it (`rabbitmq-server -detached` on the CI machine), or point "
            f"{RABBITMQ_ENV} at one (amqp://user:password@host:port/vhost).",
            pytrace=False,
        )
    return url


@pytest.fixture
def libfaketime() -> str:
    """The path of libfaketime.so.1 (``$DCRON_LIBFAKETIME`` or the distribution's)."""
    explicit = os.environ.get(LIBFAKETIME_ENV)
    candidates = [explicit] if explicit else list(LIBFAKETIME_PATHS)
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    pytest.fail(
        f"libfaketime not found (looked at {candidates}). The clock-skew chaos test runs a "
        "beat under a really skewed clock: install it (`apt-get install -y libfaketime` on "
        f"Debian/Ubuntu) or set {LIBFAKETIME_ENV}=/path/to/libfaketime.so.1.",
        pytrace=False,
    )
