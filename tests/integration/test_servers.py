"""The redis-server fixture itself: start, data, SIGKILL, restart, SIGSTOP/SIGCONT."""

from __future__ import annotations

import pytest
import redis

from tests.servers import RedisServer, find_redis_server


def test_binary_is_found() -> None:
    assert find_redis_server().is_file()


def test_start_set_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis_server.client()
    assert client.set("k", "v")
    assert client.get("k") == b"v"
    assert redis.Redis.from_url(redis_server.url).get("k") == b"v"
    assert redis_server.version()[0].isdigit()


def test_kill_then_restart_is_empty(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("k", "v")
    port = redis_server.port

    redis_server.kill()
    assert not redis_server.is_running
    with pytest.raises(redis.ConnectionError):
        redis_server.client().ping()

    redis_server.restart()
    assert redis_server.port == port
    fresh = redis_server.client()
    assert fresh.ping()
    assert fresh.get("k") is None
    assert fresh.dbsize() == 0


def test_pause_times_out_and_resume_answers(redis_server: RedisServer) -> None:
    client = redis_server.client(socket_timeout=0.3)
    assert client.ping()

    redis_server.pause()
    assert redis_server.is_paused
    with pytest.raises(redis.TimeoutError):
        client.ping()

    redis_server.resume()
    assert not redis_server.is_paused
    assert redis_server.client().ping()


def test_stop_releases_the_server() -> None:
    server = RedisServer().start()
    directory = server.dir
    server.pause()
    server.stop()  # a paused server still stops
    assert not server.is_running
    assert not directory.exists()


def test_password_and_unix_socket() -> None:
    with RedisServer(password="s3cret", unixsocket=True) as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        assert redis.Redis.from_url(server.unix_url).ping()
        with pytest.raises(redis.AuthenticationError):
            server.client(password=None).ping()


def test_redis_url_starts_empty(redis_url: str, redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", "1")  # the next test using redis_url must not see it


def test_redis_url_starts_empty_again(redis_url: str, redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_layer_marker_applied(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None
