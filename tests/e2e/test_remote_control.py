"""Celery 5.7's beat remote control still works with DistributedScheduler: each instance,
started with its own ``-n``, answers ``celery inspect ping``; a frozen one stops answering."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import celery
import pytest

from tests.e2e.harness import Beat, Cluster

pytestmark = pytest.mark.skipif(
    celery.VERSION < (5, 7), reason="beat answers remote control from Celery 5.7 on"
)


def spawn_named(cluster: Cluster, label: str) -> Beat:
    argv = [
        sys.executable, "-m", "celery", "-A", "beatapp", "beat",
        "-S", "celery_dcron.DistributedScheduler", "-l", "info", "-n", f"{label}@%h",
        "--schedule", str(cluster.workdir / f"{label}.schedule"),
    ]  # fmt: skip
    env = {"DCRON_E2E_REMOTE_CONTROL": "1"}
    beat = Beat(label, 0, argv, cluster._process_env(env), cluster.workdir,
                cluster.workdir / f"{label}.0.log", overrides=env)  # fmt: skip
    cluster.beats.append(beat)
    return beat


def ping(cluster: Cluster, destination: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "beatapp", "inspect", "ping", "--json",
         "-t", "3", "-d", destination],
        env=cluster._process_env({}), cwd=cluster.workdir, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    if out.returncode != 0:  # no node replied (celery inspect exits non-zero)
        assert "No nodes replied" in out.stdout + out.stderr, out.stdout + out.stderr
        return {}
    replies: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return replies


def test_each_beat_answers_inspect_ping_and_a_frozen_one_does_not(cluster: Cluster) -> None:
    a, b = spawn_named(cluster, "beat-a"), spawn_named(cluster, "beat-b")
    cluster.wait_working(a, b)
    for beat in (a, b):
        node = f"{beat.label}@{socket.gethostname()}"
        replies = ping(cluster, node)
        assert replies == {node: {"ok": "pong"}}, (replies, beat.log_tail())
    a.pause()  # SIGSTOP: its pidbox thread is frozen too
    try:
        assert not ping(cluster, f"beat-a@{socket.gethostname()}")
        assert ping(cluster, f"beat-b@{socket.gethostname()}")
    finally:
        a.resume()
    cluster.stop_all()
    cluster.count_published().assert_once()
