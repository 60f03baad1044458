"""A misconfigured beat says what to fix in one line and exits with status 1.

Real ``celery -A proj beat -S celery_dcron.DistributedScheduler`` processes:

- a bad cron string or time zone in ``beat_schedule`` (in a ``celeryconfig`` module, which
  Celery imports lazily: this used to print a 94-line traceback) names the entry and the
  field, before the beat joins the cluster;
- a registry whose Redis refuses the password is a configuration error at start, called
  that, not an outage retried forever.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_DIR, Cluster, Proc, wait_until
from tests.servers import RedisServer

EXIT_TIMEOUT_S = 60.0

PROJ = """\
from celery import Celery

app = Celery("proj")
app.config_from_object("celeryconfig")
"""

CONFIG = """\
from celery_dcron import cron

broker_url = {broker!r}
dcron_redis_url = {registry!r}
beat_schedule = {{
    "fine": {{"task": "proj.fine", "schedule": 5.0}},
    {name!r}: {{"task": "proj.report", "schedule": {schedule}}},
}}
"""

#: problem lines of a beat log: what celery_dcron (or Celery) logs at ERROR or CRITICAL
PROBLEM_RE = re.compile(r"ERROR/|CRITICAL/|Traceback|Error:")


def _run_beat(tmp_path: Path, config: str) -> tuple[int, list[str]]:
    """Start a beat of the app in ``tmp_path`` configured by ``config``; wait for its exit."""
    (tmp_path / "proj.py").write_text(PROJ)
    (tmp_path / "celeryconfig.py").write_text(config)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO_DIR)])
    argv = [sys.executable, "-m", "celery", "-A", "proj", "beat",
            "-S", "celery_dcron.DistributedScheduler"]  # fmt: skip
    beat = Proc("beat", 0, argv, env, tmp_path, tmp_path / "beat.log")
    try:
        wait_until(lambda: not beat.alive, timeout=EXIT_TIMEOUT_S, what="the beat to exit",
                   on_timeout=beat.log_tail)  # fmt: skip
    finally:
        beat.cleanup()
    return beat.proc.returncode, beat.log_lines()


@pytest.mark.parametrize(
    ("name", "schedule", "expected"),
    [
        (
            "report",
            'cron("61 * * * *")',
            "dcron: beat_schedule entry 'report': cron '61 * * * *': minute '61' is invalid; "
            "minute must be 0-59",
        ),
        (
            "digest",
            'cron("0 7 * * mon-fri", tz="Europe/Pariss")',
            "dcron: beat_schedule entry 'digest': cron '0 7 * * mon-fri': unknown timezone "
            "'Europe/Pariss'; use an IANA name such as 'Europe/Paris' or 'UTC'",
        ),
    ],
    ids=["cron", "tz"],
)
def test_a_bad_beat_schedule_entry_is_one_line_and_exit_1(
    name: str, schedule: str, expected: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    config = CONFIG.format(broker=url, registry=url, name=name, schedule=schedule)
    code, lines = _run_beat(tmp_path, config)
    problems = [line for line in lines if PROBLEM_RE.search(line)]
    assert code == 1, "\n".join(lines)
    assert len(problems) == 1 and problems[0].endswith(expected), "\n".join(lines)
    client = redis_server.client()
    try:
        assert client.keys("*") == [], "an invalid schedule must not reach the registry"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (":n0t-the-pass@", "authentication failed (check the password in dcron_redis_url"),
        ("", "authentication required (put the password in dcron_redis_url"),
    ],
    ids=["wrong-password", "no-password"],
)
def test_a_refused_password_stops_the_beat_at_start(
    credentials: str, expected: str, cluster: Cluster
) -> None:
    """The broker is fine; the registry's Redis refuses ``dcron_redis_url``'s password."""
    with RedisServer(password="s3cret") as guarded:
        registry = f"redis://{credentials}127.0.0.1:{guarded.port}/0"
        beat = cluster.spawn(DCRON_E2E_REGISTRY=registry)
        wait_until(lambda: not beat.alive, timeout=EXIT_TIMEOUT_S,
                   what="the beat to exit", on_timeout=beat.log_tail)  # fmt: skip
    lines = beat.log_lines()
    problems = [line for line in lines if PROBLEM_RE.search(line)]
    assert beat.returncode == 1, "\n".join(lines)
    assert len(problems) == 1, "\n".join(lines)
    masked = "redis://:***@" if credentials else "redis://"
    assert f"dcron: Redis at {masked}127.0.0.1:{guarded.port}/0: {expected}" in problems[0]
    assert "n0t-the-pass" not in beat.log_text() and "unreachable" not in beat.log_text()
