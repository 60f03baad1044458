"""The README's first command: the demo cluster runs, fails over, and doubles nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_cluster_on_embedded_redis_survives_a_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    env = dict(os.environ, DCRON_DEMO_FORCE_EMBEDDED="1", DATABASE_URL=f"sqlite:///{db}")
    proc = subprocess.run(
        [sys.executable, "-m", "example_project.demo", "--duration", "22",
         "--kill-beat-after", "8", "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    # the demo exits 1 when nothing ran or a tick was sent twice
    assert proc.returncode == 0, out[-4000:]
    assert "embedded" in out.lower()
    assert "dcron: fired" in out
    assert "SIGKILL" in out or "kill" in out.lower()


def test_demo_exits_non_zero_with_the_reason_when_every_beat_is_dead(tmp_path: Path) -> None:
    """A beat that cannot start (here: an unknown strategy) must not leave the demo serving
    a cluster of nobody: it stops with status 1 and each beat's exit (issue 13)."""
    db = tmp_path / "db.sqlite3"
    env = dict(os.environ, DCRON_DEMO_FORCE_EMBEDDED="1", DATABASE_URL=f"sqlite:///{db}")
    proc = subprocess.run(
        [sys.executable, "-m", "example_project.demo", "--beats", "2", "--no-web",
         "--strategy", "no_such_strategy"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "every beat has exited" in out, out[-4000:]
    reason = out.split("every beat has exited", 1)[1].splitlines()[0]
    assert "beat-1 exited with code 1" in reason and "beat-2 exited with code 1" in reason, reason
