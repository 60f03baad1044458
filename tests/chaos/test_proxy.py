"""The fault-injecting TCP proxy itself (tests/proxy.py), on a real redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.proxy import TcpProxy
from tests.servers import RedisServer


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(redis_server.host, redis_server.port) as p:
        yield p


def client(proxy: TcpProxy, timeout_s: float = 0.5) -> redis.Redis:
    """A client without retries, so that every fault shows."""
    return redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=timeout_s,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )


def push_into_blackhole(proxy: TcpProxy) -> None:
    """RPUSH held "a" on a connection, then blackhole it: the command times out."""
    c = client(proxy, timeout_s=0.3)
    assert c.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        c.rpush("held", "a")


def test_pass_forwards_both_ways(proxy: TcpProxy) -> None:
    c = client(proxy)
    assert c.set("k", b"x" * 200_000)
    assert c.get("k") == b"x" * 200_000
    assert proxy.open_connections == 1


def test_partition_cuts_open_and_refuses_new_connections_until_healed(proxy: TcpProxy) -> None:
    c = client(proxy)
    assert c.ping()
    assert proxy.partition() == 1
    with pytest.raises(redis.ConnectionError):
        c.ping()  # the open connection was cut, the reconnect is dropped
    with pytest.raises(redis.ConnectionError):
        client(proxy).ping()
    assert proxy.stats["dropped"] >= 2
    proxy.heal()
    assert c.ping()
    assert client(proxy).ping()


def test_cut_alone_closes_open_connections_and_lets_new_ones_through(proxy: TcpProxy) -> None:
    c = client(proxy)
    assert c.ping()
    assert proxy.cut() == 1
    assert proxy.open_connections == 0
    # redis-py notices the closed connection when it checks it out, and reconnects.
    assert c.ping()
    assert proxy.stats["accepted"] == 2
    assert client(proxy).ping()


def test_blackhole_times_out_then_delivers_held_bytes_in_order(
    proxy: TcpProxy, redis_server: RedisServer
) -> None:
    started = time.monotonic()
    push_into_blackhole(proxy)
    assert time.monotonic() - started >= 0.25
    # A new connection is accepted (no refusal) but nothing answers.
    with pytest.raises(redis.TimeoutError):
        client(proxy, timeout_s=0.3).ping()
    direct = redis_server.client()
    assert direct.llen("held") == 0, "a blackholed command reached the server"
    proxy.heal()
    # The held command is delivered after the heal (a partition that heals, not a loss).
    deadline = time.monotonic() + 5
    while direct.llen("held") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert direct.lrange("held", 0, -1) == [b"a"]
    assert client(proxy).ping()


def test_partition_after_blackhole_loses_the_held_bytes(
    proxy: TcpProxy, redis_server: RedisServer
) -> None:
    push_into_blackhole(proxy)
    proxy.partition()
    proxy.heal()
    time.sleep(0.3)
    assert redis_server.client().llen("held") == 0, "held bytes were forwarded by the cut"


def test_bad_mode_is_refused(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        proxy.set_mode("slow")
