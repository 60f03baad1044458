"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_dcron.clock import ManualClock
from tests.integration.test_engine import Cluster, Recorder, _server_ms


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    """Engines on a real redis-server, a manual clock starting at the server's time, and
    a recording publisher (see tests/integration/test_engine.py)."""
    c = Cluster(redis_url, ManualClock(start_ms=_server_ms(redis_url)), Recorder())
    yield c
    for e in c.engines:
        e.stopped = True
