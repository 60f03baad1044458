"""Fixtures of the end-to-end tests: one :class:`~tests.e2e.harness.Cluster` per test.

The cluster runs on the test's own ``redis_server`` (registry db 0, broker db 1). Its
processes are always killed afterwards; when a test fails, the tail of every process's
log is attached to the failure report (sections ``e2e log: ...``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.harness import Cluster
from tests.servers import RedisServer

CLUSTER_KEY = pytest.StashKey[Cluster]()
C = TypeVar("C", bound=Cluster)


def held(c: C, request: pytest.FixtureRequest) -> Iterator[C]:
    """A cluster fixture's body: ``c`` for the test (its logs go to a failure's report),
    and every process of it killed at teardown."""
    request.node.stash[CLUSTER_KEY] = c
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def cluster(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """Beat/worker processes on a fresh redis-server; all killed at teardown."""
    yield from held(Cluster(redis_server, tmp_path / "procs"), request)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" or not report.failed:
        return
    c = item.stash.get(CLUSTER_KEY, None)
    if c is None:
        return
    for title, tail in c.report():
        report.sections.append((f"e2e log: {title}", tail))
