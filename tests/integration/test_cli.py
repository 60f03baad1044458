"""``celery -A app dcron ...`` run as a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from celery_dcron.clock import ManualClock
from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.registry import Registry
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import tick_iso
from tests.integration.test_api import write_project
from tests.integration.test_engine import _server_ms

ROOT = Path(__file__).resolve().parents[2]


class CLI:
    def __init__(self, url: str, app: str = "tests.integration.cliapp") -> None:
        self.env = {**os.environ, "DCRON_TEST_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
        self.app = app

    def __call__(
        self, *args: str, ok: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "dcron", *args]
        out = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60,
            check=False, input=stdin,
        )  # fmt: skip
        if ok:
            assert out.returncode == 0, out.stderr + out.stdout
        else:
            assert out.returncode != 0, out.stdout
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(redis_url: str) -> CLI:
    return CLI(redis_url)


def engine(url: str, node_id: str) -> Engine:
    s = Settings(redis_url=url, node_id=node_id, heartbeat_interval_s=0.1, node_ttl_s=5,
                 socket_timeout_s=1)  # fmt: skip
    e = Engine(
        settings=s,
        registry=Registry.from_settings(s),
        clock=ManualClock(start_ms=_server_ms(url)),
        strategy=get_strategy(s.strategy),
        publish=lambda spec, tick, tid: None,
        listen=False,
    )
    for _ in range(3):
        e._next_beat = 0.0
        e.step()
    return e


def test_add_ls_show_pause_resume_run_rm(cli: CLI, redis_url: str) -> None:
    out = cli("add", "report", "--task", "cliapp.t", "--cron", "0 7 * * mon-fri",
              "--tz", "Europe/Paris", "--args", "[1, 2]", "--queue", "reports")  # fmt: skip
    assert "added 'report' (version 1)" in out.stdout
    cli("add", "mail", "--payload", '{"to": "a@b.c"}', "--every", "30")
    rows = cli.json("ls")
    assert [r["name"] for r in rows] == ["mail", "report"]
    report = cli.json("show", "report")
    assert report["task"] == "cliapp.t" and report["args"] == [1, 2]
    assert report["schedule"] == {"kind": "cron", "expr": "0 7 * * mon-fri",
                                  "tz": "Europe/Paris", "day_or": True}  # fmt: skip
    assert report["options"] == {"queue": "reports"} and report["state"] == "active"
    assert cli.json("show", "mail")["kwargs"] == {"payload": {"to": "a@b.c"}}
    cli("pause", "report")
    assert cli.json("show", "report")["state"] == "paused"
    cli("resume", "report")
    assert cli.json("show", "report")["enabled"] is True
    assert "task id" in cli("run", "report").stdout
    cli("rm", "report", "--tombstone")
    err = cli("add", "report", "--task", "cliapp.t", "--every", "5", ok=False)
    assert "tombstoned" in err.stderr
    cli("add", "report", "--task", "cliapp.t", "--every", "5", "--force")
    cli("rm", "mail")
    assert [r["name"] for r in cli.json("ls")] == ["report"]


def test_status_and_ring_show_nodes_and_ownership(cli: CLI, redis_url: str) -> None:
    cli("add", "e0", "--task", "cliapp.t", "--every", "60")
    engines = [engine(redis_url, f"node-{i}") for i in range(2)]
    for e in engines:
        e._next_beat = 0.0
        e.step()
    status = cli.json("status")
    assert {n["id"] for n in status["nodes"]} == {"node-0", "node-1"}
    assert all(n["status"] == "working" and n["heartbeat_age_s"] < 10 for n in status["nodes"])
    assert sum(n["entries_owned"] for n in status["nodes"]) == 1
    ring = cli.json("ring")
    assert sum(v["count"] for v in ring["nodes"].values()) == 1
    owner = next(n for n, v in ring["nodes"].items() if v["count"])
    assert cli.json("ls")[0]["owner"] == owner
    assert "node-0" in cli("status").stdout
    cli("pause-all")
    assert cli.json("status")["paused"] is True
    cli("resume-all")
    assert cli.json("status")["paused"] is False
    for e in engines:
        e.stop()


def test_status_says_when_the_registry_was_rebuilt_after_a_data_loss(
    cli: CLI, redis_url: str
) -> None:
    e = engine(redis_url, "node-0")
    assert cli.json("status")["rebuilt_after_data_loss"] is None
    assert "data loss" not in cli("status").stdout
    e.registry.client.flushdb()  # Redis lost its data
    e._next_beat = 0.0
    e.step()  # the engine notices the new epoch and rebuilds
    rebuilt = cli.json("status")["rebuilt_after_data_loss"]
    assert rebuilt == tick_iso(e._reset_at_ms or 0)
    assert f"the registry was rebuilt after a Redis data loss at {rebuilt}" in cli("status").stdout
    e.stop()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["add", "x", "--task", "cliapp.t", "--cron", "61 * * * *"], "minute"),
        (
            ["add", "x", "--task", "cliapp.t", "--cron", "* * * * *", "--tz", "Nowhere/X"],
            "timezone",
        ),
        (["add", "x", "--task", "cliapp.t", "--every", "-5"], "every"),
        (["add", "x", "--task", "cliapp.t", "--at", "next tuesday"], "at"),
        (["add", "x", "--task", "nope", "--every", "5"], "task"),
        (["add", "x", "--task", "cliapp.t", "--every", "5", "--args", "[1,"], "args"),
        (["add", "x", "--task", "cliapp.t", "--every", "5", "--args", '{"a": 1}'], "args"),
        (["add", "a{b}", "--task", "cliapp.t", "--every", "5"], "name"),
        (["show", "missing"], "name"),
        (["pause", "missing"], "missing"),
    ],
)
def test_bad_input_exits_non_zero_naming_the_field(cli: CLI, args: list[str], field: str) -> None:
    out = cli(*args, ok=False)
    assert field in out.stderr, out.stderr
    assert cli.json("ls") == []


# -- first run and drop-in (issue 13) ------------------------------------------------------


@pytest.mark.parametrize("how", ["include", "autodiscover"])
def test_add_finds_tasks_of_the_apps_task_modules(cli: CLI, tmp_path: Path, how: str) -> None:
    package = f"proj_{how}"
    write_project(tmp_path, package, how=how)
    project = CLI(cli.env["DCRON_TEST_REDIS_URL"], app=package)
    project.env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    out = project("add", "r", "--task", f"{package}.tasks.report", "--every", "60",
                  "--args", '["mon"]')  # fmt: skip
    assert "added 'r'" in out.stdout
    err = project("add", "r2", "--task", f"{package}.tasks.nope", "--every", "60", ok=False)
    assert "--no-check-task" in err.stderr and "check_tasks=False" not in err.stderr
    err = project("add", "r2", "--task", f"{package}.tasks.report", "--every", "60", ok=False)
    assert "args: " in err.stderr and "--no-check-task" in err.stderr
    project("add", "r2", "--task", f"{package}.tasks.nope", "--every", "60", "--no-check-task")


def test_show_pause_resume_and_names_speak_human(cli: CLI) -> None:
    cli("add", "report", "--task", "cliapp.t", "--cron", "0 7 * * mon-fri",
        "--tz", "Europe/Paris", "--args", "[1, null, true]", "--kwargs", '{"k": "v"}',
        "--queue", "reports", "--max-runs", "3", "--after-run", "disable",
        "--description", "daily")  # fmt: skip
    show = cli("show", "report").stdout
    for python_repr in ("{'", "None", "True", "False", "_ms"):
        assert python_repr not in show, show
    assert "cron '0 7 * * mon-fri' Europe/Paris" in show
    assert "[1, null, true]" in show and '{"k": "v"}' in show and "queue=reports" in show
    assert cli("pause", "report").stdout.strip() == "paused 'report'"
    assert cli("pause", "report").stdout.strip() == "'report' was already paused"
    assert cli("resume", "report").stdout.strip() == "resumed 'report'"
    assert cli("resume", "report").stdout.strip() == "'report' was not paused"
    assert "task id" in cli("run-now", "report").stdout


def test_tombstoned_names_are_listed_reused_or_forced(cli: CLI) -> None:
    cli("add", "report", "--task", "cliapp.t", "--every", "5")
    cli("rm", "report", "--tombstone")
    assert "report" in cli("deleted").stdout
    assert list(cli.json("deleted")) == ["report"]
    err = cli("add", "report", "--task", "cliapp.t", "--every", "5", ok=False)
    assert "dcron reuse report" in err.stderr and "--force" in err.stderr
    assert cli("reuse", "report").stdout.strip() == "'report' can be used again"
    assert "was not deleted" in cli("reuse", "report").stdout
    cli("add", "report", "--task", "cliapp.t", "--every", "5")
    cli("rm", "report", "--tombstone")
    cli("add", "report", "--task", "cliapp.t", "--every", "5", "--force")
    assert cli.json("deleted") == {}


def test_every_command_and_option_has_help() -> None:
    from celery_dcron.cli import dcron

    for name, command in dcron.commands.items():
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts}"


def test_counts_agree_with_their_nouns(cli: CLI, redis_url: str) -> None:
    cli("add", "e0", "--task", "cliapp.t", "--every", "60")
    first = cli("status").stdout
    assert "0 nodes, 1 entry" in first and "1 entry has no working node" in first
    e = engine(redis_url, "node-0")
    status = cli("status").stdout
    assert "1 node, 1 entry" in status
    assert "1 entry " in cli("ring").stdout
    cli("add", "e1", "--task", "cliapp.t", "--every", "60")
    e._next_beat = 0.0
    e.step()
    assert "1 node, 2 entries" in cli("status").stdout
    assert "2 entries " in cli("ring").stdout
    e.stop()


def test_export_import_round_trip_with_line_numbered_errors(cli: CLI, tmp_path: Path) -> None:
    cli("add", "report", "--task", "cliapp.t", "--cron", "0 7 * * mon-fri", "--tz",
        "Europe/Paris", "--args", "[1, 2]", "--queue", "reports", "--max-runs", "3")  # fmt: skip
    cli("add", "mail", "--payload", '{"to": "a@b.c"}', "--every", "30", "--disabled")
    exported = cli("export").stdout
    assert [json.loads(line)["name"] for line in exported.splitlines()] == ["mail", "report"]
    path = tmp_path / "entries.jsonl"
    cli("export", str(path))
    assert path.read_text() == exported
    # into another namespace, from stdin: the same lines come out
    other = CLI(cli.env["DCRON_TEST_REDIS_URL"])
    other.env["DCRON_TEST_NAMESPACE"] = "copy"
    assert "2 entries valid; nothing written" in other("import", "--dry-run", str(path)).stdout
    assert other("export").stdout == ""
    out = other("import", "-", stdin=exported)
    assert "imported 2 entries of 2: 2 created, 0 replaced, 0 refused" in out.stdout
    assert other("export").stdout == exported
    # again: taken names are refused one by one; --replace overwrites them
    again = other("import", str(path), ok=False)
    assert "line 1: entry 'mail'" in again.stderr and "line 2: entry 'report'" in again.stderr
    assert "--replace" in again.stderr
    assert "2 replaced" in other("import", "--replace", str(path)).stdout
    # one bad line: nothing written, every error named with its line and field
    lines = [
        '{"name": "new", "task": "cliapp.t", "every": 5}',
        "",
        '{"name": "bad", "task": "cliapp.t", "cron": "61 * * * *"}',
        "{not json",
        '{"name": "unknown", "task": "nope.nope", "every": 5}',
    ]
    bad = other("import", "-", stdin="\n".join(lines), ok=False)
    assert "line 3: entry 'bad': cron" in bad.stderr
    assert "line 4: not valid JSON" in bad.stderr
    assert "line 5: entry 'unknown': task:" in bad.stderr
    assert "3 invalid lines of 4: nothing written" in bad.stderr
    assert [r["name"] for r in other.json("ls")] == ["mail", "report"]
