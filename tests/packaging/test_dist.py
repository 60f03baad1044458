"""The sdist and the wheel that ``python -m build`` makes install and work in a fresh venv.

Once per session: a copy of the source tree (so that the build leaves no ``*.egg-info`` in
the work tree) is built into an sdist and a wheel; then, for each of the two, a fresh
virtualenv (stdlib ``venv``) gets it with ``pip install`` (dependencies from the package
index, through pip's cache) and is asked, from a directory outside the source tree: the
version, the scheduler class (by path and by its ``dcron`` alias), ``celery beat -S ...
--help``, ``celery -A app dcron --help``, and the data files (``py.typed``, the Django
templates and migrations). The sdist must also hold what its MANIFEST.in promises.

Needs the ``build`` package (the ``test`` extra) and the package index; about a minute.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import RedisServer

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
# Installed files every artifact must carry, relative to site-packages.
DATA_FILES = (
    "celery_dcron/py.typed",
    "celery_dcron/contrib/django/templates/admin/celery_dcron/cluster.html",
    "celery_dcron/contrib/django/migrations/__init__.py",
    "celery_dcron/contrib/django/migrations/0001_initial.py",
    "celery_dcron/contrib/django/management/commands/dcron_sync.py",
)
# What a user of the sdist needs besides the package: to read, build the docs, run the tests.
SDIST_FILES = (
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    "setup.cfg",
    "MANIFEST.in",
    "tox.ini",
    "dev.py",
    "docs/index.rst",
    "docs/conf.py",
    "tests/__init__.py",
    "tests/conftest.py",
    "tests/packaging/test_dist.py",
    "example_project/demo.py",  # tests/e2e/test_demo.py runs it
    "benchmarks/README.md",  # docs/benchmarks.rst points there
    *DATA_FILES,
)
SDIST_GRAFTS = ("docs", "tests", "example_project", "benchmarks")
# Never in the sdist (local state of a work tree).
JUNK = re.compile(r"(^|/)(__pycache__|\.venv|\.tox|\.git|_build|\.[a-z]+_cache)(/|$)|\.py[cod]$")
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "*.egg-info", "build", "dist", "_build", "__pycache__",
    "*.py[cod]", ".*_cache", ".hypothesis", "*.rdb", "*.sqlite3", "celerybeat-schedule*",
)  # fmt: skip
SMOKE_APP = 'from celery import Celery\n\napp = Celery("dcron_smoke", broker="memory://")\n'


def source_version() -> str:
    """``__version__`` as written in the source tree's celery_dcron/__init__.py."""
    tree = ast.parse((ROOT / "celery_dcron" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError("no __version__ in celery_dcron/__init__.py")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a subprocess at the source tree
    or at the test run's own virtualenv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        and not k.startswith(("DJANGO_", "CELERY_", "DCRON_", "PYTEST_"))
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run(args: list[str], *, cwd: Path, timeout: float = 240, **env: str) -> str:
    """Run a command; fail the test with its output unless it exits 0. Returns stdout."""
    proc = subprocess.run(
        args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc.stdout


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy of the source tree that was built
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build`` (sdist, then the wheel from the sdist) of a copy of the tree."""
    base = tmp_path_factory.mktemp("dist")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE, symlinks=True)
    out = base / "out"
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=base)
    sdists = sorted(out.glob("*.tar.gz"))
    wheels = sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dists(source=source, sdist=sdists[0], wheel=wheels[0])


@dataclass(frozen=True)
class Installed:
    kind: str
    venv: Path
    workdir: Path  # outside the source tree; holds the tiny Celery app

    @property
    def bin(self) -> Path:
        return self.venv / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> str:
        return str(self.bin / ("python.exe" if os.name == "nt" else "python"))

    @property
    def celery(self) -> str:
        return str(self.bin / "celery")

    def run(self, *args: str) -> str:
        return run(list(args), cwd=self.workdir, PYTHONPATH=str(self.workdir))

    def py(self, code: str) -> str:
        return self.run(self.python, "-c", textwrap.dedent(code))


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def installed(
    request: pytest.FixtureRequest, dists: Dists, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """A fresh venv with the wheel or the sdist (and its dependencies) pip-installed."""
    kind: str = request.param
    base = tmp_path_factory.mktemp(f"venv-{kind}")
    workdir = base / "work"
    workdir.mkdir()
    (workdir / "dcron_smoke.py").write_text(SMOKE_APP)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    env = Installed(kind=kind, venv=venv, workdir=workdir)
    artifact = dists.wheel if kind == "wheel" else dists.sdist
    run([env.python, "-m", "pip", "install", "-q", str(artifact)], cwd=workdir, timeout=400)
    yield env


# -- the artifacts ---------------------------------------------------------------------------


def test_artifacts_are_named_after_the_source_version(dists: Dists) -> None:
    version = source_version()
    assert dists.wheel.name == f"celery_dcron-{version}-py3-none-any.whl"
    assert dists.sdist.name == f"celery_dcron-{version}.tar.gz"


def test_wheel_holds_the_package_data_and_entry_points(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        eps = whl.read(entry_points).decode()
    missing = [f for f in DATA_FILES if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if not n.startswith(("celery_dcron/", "celery_dcron-"))]
    assert "[celery.beat_schedulers]\ndcron = celery_dcron.scheduler:DistributedScheduler" in eps
    assert "[celery.commands]\ndcron = celery_dcron.cli:dcron" in eps


def test_sdist_holds_what_a_user_needs(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tar:
        prefix = f"celery_dcron-{source_version()}/"
        names = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    missing = [f for f in SDIST_FILES if f not in names]
    assert not missing, f"not in the sdist: {missing}"
    # Every file of the grafted directories (of the tree that was built) is in it...
    tree = {
        p.relative_to(dists.source).as_posix()
        for top in SDIST_GRAFTS
        for p in (dists.source / top).rglob("*")
        if p.is_file()
    }
    assert not sorted(f for f in tree if not JUNK.search(f) and f not in names)
    # ...and none of a work tree's local state.
    assert not sorted(n for n in names if JUNK.search(n))


# -- installed in a fresh venv ---------------------------------------------------------------


def test_import_gives_the_source_version(installed: Installed) -> None:
    out = installed.py("import celery_dcron; print(celery_dcron.__version__)")
    assert out.strip() == source_version()


def test_installed_from_the_venv_not_the_source_tree(installed: Installed) -> None:
    out = installed.py("import celery_dcron; print(celery_dcron.__file__)").strip()
    assert Path(out).resolve().is_relative_to(installed.venv.resolve()), out


def test_scheduler_resolves_by_path_and_by_alias(installed: Installed) -> None:
    out = installed.py(
        """
        import celery_dcron
        from celery.beat import Scheduler
        from celery.utils.imports import load_extension_class_names, symbol_by_name

        cls = celery_dcron.DistributedScheduler
        assert issubclass(cls, Scheduler), cls.__mro__
        aliases = dict(load_extension_class_names("celery.beat_schedulers"))
        assert symbol_by_name("dcron", aliases=aliases) is cls, aliases
        assert symbol_by_name("celery_dcron.DistributedScheduler") is cls
        print(cls.__module__, cls.__qualname__)
        """
    )
    assert out.strip() == "celery_dcron.scheduler DistributedScheduler"


def test_dependencies_are_consistent(installed: Installed) -> None:
    installed.run(installed.python, "-m", "pip", "check")


def test_celery_beat_help_with_the_scheduler(installed: Installed) -> None:
    scheduler = "celery_dcron.DistributedScheduler"
    out = installed.run(installed.celery, "beat", "-S", scheduler, "--help")
    assert out.startswith("Usage: celery beat [OPTIONS]"), out[:500]
    assert "--scheduler" in out
    out = installed.run(installed.celery, "-A", "dcron_smoke", "beat", "-S", "dcron", "--help")
    assert out.startswith("Usage: celery beat [OPTIONS]"), out[:500]


def test_dcron_cli_is_a_celery_command(installed: Installed) -> None:
    out = installed.run(installed.celery, "-A", "dcron_smoke", "--help")
    assert re.search(r"^\s+dcron\s+celery_dcron", out, re.M), out
    out = installed.run(installed.celery, "-A", "dcron_smoke", "dcron", "--help")
    assert out.startswith("Usage: celery dcron [OPTIONS] COMMAND [ARGS]..."), out[:500]
    for command in ("status", "ls", "add", "rm", "pause", "resume", "run", "ring"):
        assert re.search(rf"^\s+{command}\s", out, re.M), (command, out)


def test_installed_files_include_the_package_data(installed: Installed) -> None:
    site = installed.py(
        "import pathlib, celery_dcron; print(pathlib.Path(celery_dcron.__file__).parent.parent)"
    ).strip()
    missing = [f for f in DATA_FILES if not (Path(site) / f).is_file()]
    assert not missing, f"not installed from the {installed.kind}: {missing}"
    # ...and pip's record of the install lists them (so that uninstall removes them).
    out = installed.py(
        """
        from importlib.metadata import files
        print("\\n".join(str(f) for f in files("celery-dcron")))
        """
    )
    recorded = set(out.split())
    assert not [f for f in DATA_FILES if f not in recorded], recorded


# -- a beat and a worker on a Redis broker, from a plain install -------------------------------

#: The smallest real deployment: broker and registry on one Redis, one static entry every
#: second, a task that appends its task id to a file (the worker's proof of delivery).
BROKER_APP = """\
import os

from celery import Celery

app = Celery("dcron_broker_app", broker=os.environ["SMOKE_BROKER_URL"])
app.conf.beat_schedule = {"touch": {"task": "dcron_broker_app.touch", "schedule": 1.0}}
app.conf.dcron_namespace = "smoke"


@app.task(name="dcron_broker_app.touch")
def touch():
    with open(os.environ["SMOKE_OUT"], "a") as out:
        out.write(touch.request.id + "\\n")
"""


def test_a_plain_install_runs_beat_and_worker_on_a_redis_broker(
    installed: Installed, redis_server: RedisServer
) -> None:
    """``pip install celery-dcron`` with no extra: a beat sends, a worker runs (issue 13).

    kombu's Redis transport imports ``packaging``, which only ``kombu[redis]`` brings; a
    plain ``kombu`` requirement let every beat and worker die at start with
    ``ModuleNotFoundError``, and the test extras hid it.
    """
    (installed.workdir / "dcron_broker_app.py").write_text(BROKER_APP)
    out = installed.workdir / f"runs-{installed.kind}.txt"
    env = clean_env(
        PYTHONPATH=str(installed.workdir), SMOKE_BROKER_URL=redis_server.url, SMOKE_OUT=str(out)
    )
    common = [installed.celery, "-A", "dcron_broker_app"]
    procs = {
        "worker": [*common, "worker", "--pool", "solo", "--loglevel", "INFO", "--without-gossip"],
        "beat": [*common, "beat", "-S", "dcron", "--loglevel", "INFO"],
    }
    logs = {name: installed.workdir / f"{name}-{installed.kind}.log" for name in procs}
    running: dict[str, subprocess.Popen[bytes]] = {}
    dead: dict[str, int | None] = {}
    runs: list[str] = []
    try:
        for name, args in procs.items():
            with logs[name].open("wb") as log:
                running[name] = subprocess.Popen(
                    args, cwd=installed.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(runs) < 2:
            dead = {n: p.returncode for n, p in running.items() if p.poll() is not None}
            if dead:
                break
            runs = out.read_text().split() if out.exists() else []
            time.sleep(0.2)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in running.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    tails = "\n".join(f"--- {n}\n{logs[n].read_text()[-3000:]}" for n in procs)
    assert not dead, f"exited early: {dead}\n{tails}"
    assert len(runs) >= 2, f"the worker ran {len(runs)} tick(s) in 60 s\n{tails}"
    assert len(set(runs)) == len(runs), runs
