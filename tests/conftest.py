"""Shared fixtures: a real redis-server, and a layer marker per test directory.

Fixtures
    redis_server          a fresh redis-server for one test (kill / pause / restart it freely)
    redis_server_session  one redis-server for the whole session (do not kill or pause it)
    redis_url             URL of the session server, emptied (FLUSHALL) before the test
    redis_client          a redis-py client on ``redis_url``

A missing ``redis-server`` binary is a fixture error that names the fix, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import RedisServer, RedisServerError

TESTS_DIR = Path(__file__).resolve().parent
LAYER_MARKERS = ("unit", "integration", "e2e", "django", "chaos")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests/unit, tests/integration, tests/e2e with their layer, unless already marked.

    ``tryfirst`` so the markers exist before ``-m`` deselects.
    """
    for item in items:
        if any(item.get_closest_marker(name) for name in LAYER_MARKERS):
            continue
        try:
            relative = Path(item.path).resolve().relative_to(TESTS_DIR)
        except ValueError:
            continue
        if relative.parts and relative.parts[0] in LAYER_MARKERS:
            item.add_marker(getattr(pytest.mark, relative.parts[0]))


def pytest_configure(config: pytest.Config) -> None:
    """Configure Django for tests/django (pytest-django) without DJANGO_SETTINGS_MODULE
    in the environment, so the subprocesses of other tests (beats, the demo) never
    inherit it."""
    from django.conf import settings

    from tests.django import settings as test_settings

    if not settings.configured:
        settings.configure(**{k: v for k, v in vars(test_settings).items() if k.isupper()})


@pytest.fixture(scope="session", autouse=True)
def _no_django_reconcile_in_engines() -> None:
    """The Django app's reconcile receiver runs in beat processes; in this test process
    the engine tests must not reach for a database. tests/django connects it on purpose."""
    from celery_dcron import signals

    signals.reconcile.disconnect(dispatch_uid="dcron_django")


def _start_server() -> RedisServer:
    try:
        return RedisServer().start()
    except RedisServerError as exc:
        error = str(exc)
    pytest.fail(f"cannot start redis-server for the tests: {error}", pytrace=False)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, for this test only; stopped afterwards."""
    server = _start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    """One redis-server shared by the session. Tests that break the server use redis_server."""
    server = _start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_session: RedisServer) -> str:
    """URL (db 0) of the session server, emptied before the test (FLUSHALL, SCRIPT FLUSH)."""
    server = redis_server_session
    if server.is_paused:
        server.resume()
    if not server.ping():
        try:
            server.restart()
        except RedisServerError as exc:
            error = str(exc)
            pytest.fail(f"the session redis-server is gone and did not restart: {error}")
    client = server.client()
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    return server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A redis-py client on ``redis_url`` (bytes responses), closed afterwards."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield client
    finally:
        client.close()
