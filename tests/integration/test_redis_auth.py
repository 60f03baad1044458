"""A Redis that refuses the registry's credentials is a configuration error, called that.

Not "unreachable", and not retried as an outage: a wrong or missing password, an unknown
ACL user, or an ACL user without the permissions the registry needs raise
:class:`RegistryAuthenticationError` (a :class:`ConfigurationError`), whose message names
the Redis (password masked) and the setting to fix. The beat then stops at start
(tests/e2e/test_beat_errors.py); the CLI exits 1 with the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.exceptions import (
    ConfigurationError,
    RegistryAuthenticationError,
    RegistryUnavailableError,
)
from celery_dcron.registry import Registry
from celery_dcron.strategies import get_strategy
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pass"


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    """A redis-server with a password, an ACL user ``app`` (every permission) and an ACL
    user ``reader`` (read commands only: no scripts)."""
    with RedisServer(password=PASSWORD) as server:
        client = server.client()
        client.acl_setuser("app", enabled=True, passwords=["+app-pass"], keys=["*"],
                           channels=["*"], commands=["+@all"])  # fmt: skip
        client.acl_setuser("reader", enabled=True, passwords=["+read-pass"], keys=["*"],
                           commands=["+@read", "+ping"])  # fmt: skip
        client.close()
        yield server


def _url(server: RedisServer, credentials: str) -> str:
    return f"redis://{credentials}127.0.0.1:{server.port}/0"


def _registry(url: str) -> Registry:
    return Registry.from_settings(Settings(redis_url=url, socket_timeout_s=2.0))


def _refusal(url: str) -> RegistryAuthenticationError:
    registry = _registry(url)
    with pytest.raises(RegistryAuthenticationError) as info:
        registry.server_ms()
    exc = info.value
    assert isinstance(exc, ConfigurationError) and not isinstance(exc, RegistryUnavailableError)
    return exc


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        (":wrong-pass@", "authentication failed (check the password in dcron_redis_url"),
        ("", "authentication required (put the password in dcron_redis_url"),
        ("app:wrong-pass@", "authentication failed (check the ACL user 'app' and its password"),
        ("nobody:app-pass@", "authentication failed (check the ACL user 'nobody' and its"),
    ],
    ids=["wrong-password", "no-password", "acl-user-wrong-password", "unknown-acl-user"],
)
def test_a_refused_password_is_a_configuration_error_naming_the_fix(
    guarded: RedisServer, credentials: str, says: str
) -> None:
    exc = _refusal(_url(guarded, credentials))
    masked = _url(guarded, credentials.replace("wrong-pass", "***").replace("app-pass", "***"))
    assert str(exc).startswith(f"Redis at {masked}: {says}"), str(exc)
    assert "wrong-pass" not in str(exc) and "app-pass" not in str(exc)


def test_an_acl_user_without_a_needed_permission_is_told_which_keys(
    guarded: RedisServer,
) -> None:
    exc = _refusal(_url(guarded, "reader:read-pass@"))
    assert "permission denied to the ACL user 'reader'" in str(exc), str(exc)
    assert "{dcron:default}:*" in str(exc) and "read-pass" not in str(exc)


def test_the_right_credentials_work(guarded: RedisServer) -> None:
    for credentials in (f":{PASSWORD}@", "app:app-pass@"):
        assert _registry(_url(guarded, credentials)).server_ms() > 0


def test_the_engine_does_not_retry_it_as_an_outage(guarded: RedisServer) -> None:
    """step() returns a back-off for an outage; a refused password goes up to the beat."""
    settings = Settings(redis_url=_url(guarded, ":wrong-pass@"), node_id="n1",
                        socket_timeout_s=2.0)  # fmt: skip
    engine = Engine(
        settings=settings,
        registry=Registry.from_settings(settings),
        clock=ManualClock(start_ms=1_700_000_000_000),
        strategy=get_strategy(settings.strategy),
        publish=lambda spec, tick, task_id: None,
        listen=False,
    )
    with pytest.raises(RegistryAuthenticationError):
        engine.step()


def test_the_cli_prints_it_and_exits_1(guarded: RedisServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "DCRON_TEST_REDIS_URL": _url(guarded, ":wrong-pass@")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.integration.cliapp", "dcron", "status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith(
        f"Error: Redis at {_url(guarded, ':***@')}: authentication failed"
    ), out.stderr
    assert "unreachable" not in out.stderr and "wrong-pass" not in out.stderr
