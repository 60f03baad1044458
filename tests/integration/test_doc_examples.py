"""Every code example of README.md and docs/*.rst runs as written, on a real redis-server.

What runs (all of it: a new block runs by default):

- every Python block (```` ```python ```` in README.md, ``.. code-block:: python`` in
  docs/*.rst), in its own Python subprocess, in a directory holding the project the docs
  call ``proj`` (below). After the block, what it defines is checked:

  * a Celery configuration (a top-level ``broker_url``, ``beat_schedule``, ``dcron_...``
    assignment) is loaded into a Celery app: :meth:`Settings.from_app` must accept it
    (parsing only: the Sentinel and Cluster examples name hosts at 10.0.x.x, never
    contacted) and every ``beat_schedule`` item must convert as the beat converts it;
  * Django settings (top-level UPPER_CASE assignments) are completed with the settings of
    tests/django (the ``# ...`` of a fragment; ``+=`` adds to them), then
    ``django.setup()`` runs, ``DCRON_CELERY_APP`` must resolve, and ``CELERY_`` settings
    must reach celery_dcron's settings the way Celery's Django guide reads them;
  * a block that uses Django models (imports ``celery_dcron.contrib.django`` or
    ``django``) runs on tests/django's settings (or, for the django-celery-beat copy
    script, tests/integration/doc_django_beat_settings.py: those plus
    ``django_celery_beat``) with ``DCRON_CELERY_APP = "proj.celery:app"`` and a migrated
    in-memory sqlite database;
  * :data:`PRELUDE` and :data:`EXERCISE` add setup before and checks after a few blocks
    (the RedBeat entries and django-celery-beat rows the migration scripts copy; a signal
    receiver is called; what an update keeps; the JSON logging receiver runs in a real
    beat, whose log lines must be JSON).

- the ``celery ... dcron ...`` lines of the shell blocks (```` ```console ````,
  ``.. code-block:: console``, and ``::`` literal blocks of ``$`` lines), in order, on a
  registry emptied before each block, each in ``bash -c`` (comments and ``\\``
  continuations as a shell reads them). Each must exit 0, except a line that the docs
  show failing (the line after it starts with ``Error:``): it must exit 1 and print that
  line. Other shell lines are not run: ``pip install``, ``python dev.py``, ``manage.py``,
  and ``celery inspect ping`` (tests/e2e/test_remote_control.py runs that one).

- each distinct ``celery ... beat -S ...`` line: the instance must reach ``working`` in the
  registry, then stop on SIGTERM with status 0.

The one textual change: every ``redis.internal:6379`` (the docs' Redis) becomes the test
redis-server's ``127.0.0.1:<port>``.

The docs' ``proj`` (written into a temp dir): ``proj/celery.py`` is
``app = Celery("proj", include=["proj.tasks"])`` configured from ``celeryconfig``, which is
the Quick start's ``celeryconfig.py`` block (README.md's for README blocks,
docs/quickstart.rst's for the docs); ``proj/tasks.py`` defines every task the examples
name (``sync``, ``report(kind="daily")``, ``poll``, ``deliver(payload)``, ...).
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from celery_dcron.registry import Keys
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOC_REDIS = "redis.internal:6379"
TIMEOUT_S = 120.0
START_TIMEOUT_S = 40.0

DJANGO_BEAT_SCRIPT = ("docs/migration.rst", "from django_celery_beat.models import PeriodicTask")
JSON_LOGS = ("docs/monitoring.rst", "from pythonjsonlogger.json import JsonFormatter")

#: Django settings of a block that uses Django models, when not tests/django's:
#: (file, substring of the block) -> settings module.
DJANGO_SETTINGS: dict[tuple[str, str], str] = {
    # django-celery-beat's app and tables (kept out of tests/django)
    DJANGO_BEAT_SCRIPT: "tests.integration.doc_django_beat_settings",
}

#: Setup run before a block: (file, substring of the block) -> code.
PRELUDE: dict[tuple[str, str], str] = {
    # The RedBeat migration script copies what RedBeat holds: give it two entries (one
    # with an option celery_dcron does not keep), in RedBeat's Redis (the broker).
    ("docs/migration.rst", "from redbeat.schedulers import"): """
        from celery.schedules import crontab as _crontab
        from redbeat.schedulers import RedBeatSchedulerEntry as _Entry
        from proj.celery import app as _app
        _Entry("nightly", "proj.tasks.report", _crontab(hour=2, minute=30), args=["daily"],
               app=_app).save()
        _Entry("poll-30s", "proj.tasks.poll", 30, options={"queue": "polls", "link": None},
               app=_app).save()
    """,
    # The django-celery-beat copy script copies PeriodicTask rows: an interval (with a
    # queue), a crontab with a zone, one with kwargs, one restricting both day fields
    # (through the API), and two it must not copy (disabled; a static entry's name).
    DJANGO_BEAT_SCRIPT: """
        from django_celery_beat.models import CrontabSchedule as _Crontab
        from django_celery_beat.models import IntervalSchedule as _Interval
        from django_celery_beat.models import PeriodicTask as _PT
        from proj.celery import app as _app
        _every_30s = _Interval.objects.create(every=30, period=_Interval.SECONDS)
        _hourly = _Interval.objects.create(every=1, period=_Interval.HOURS)
        _nightly = _Crontab.objects.create(minute="30", hour="2", timezone="Europe/Paris")
        _first_monday = _Crontab.objects.create(minute="0", hour="9", day_of_month="1-7",
                                                day_of_week="1", timezone="UTC")
        _PT.objects.create(name="poll-30s", task="proj.tasks.poll", interval=_every_30s,
                           queue="polls")
        _PT.objects.create(name="nightly", task="proj.tasks.report", crontab=_nightly,
                           args='["daily"]')
        _PT.objects.create(name="deliver-hourly", task="proj.tasks.deliver", interval=_hourly,
                           kwargs='{"payload": {"to": "ops"}}')
        _PT.objects.create(name="first-monday", task="proj.tasks.report",
                           crontab=_first_monday)
        _PT.objects.create(name="paused", task="proj.tasks.sync", interval=_hourly,
                           enabled=False)
        _PT.objects.create(name="sync-every-10s", task="proj.tasks.sync", interval=_every_30s)
    """,
    # "in the module of your Celery app": this script is one (proj's app), run by a beat
    JSON_LOGS: """
        from proj.celery import app
    """,
}

#: Checks run after a block, in its namespace: (file, substring of the block) -> code.
EXERCISE: dict[tuple[str, str], str] = {
    DJANGO_BEAT_SCRIPT: """
        from celery_dcron import DynamicTasks as _DT
        from celery_dcron import EntryNotFoundError as _NotFound
        from celery_dcron.schedules import CronSchedule as _Cron
        from celery_dcron.schedules import IntervalSchedule as _Every
        _rows = set(DynamicTask.objects.values_list("name", flat=True))
        assert _rows == {"poll-30s", "nightly", "deliver-hourly"}, _rows
        _api = _DT(_app)
        _got = _api.get("poll-30s")
        assert (_got.task, _got.schedule) == ("proj.tasks.poll", _Every(every_ms=30_000)), _got
        assert (_got.args, dict(_got.kwargs)) == ((), {}), _got
        assert dict(_got.options) == {"queue": "polls"}, _got
        _got = _api.get("nightly")
        assert _got.task == "proj.tasks.report" and _got.args == ("daily",), _got
        assert _got.schedule == _Cron(expr="30 2 * * *", tz="Europe/Paris"), _got
        _got = _api.get("deliver-hourly")
        assert _got.schedule == _Every(every_ms=3_600_000), _got
        assert _got.args == () and dict(_got.kwargs) == {"payload": {"to": "ops"}}, _got
        _got = _api.get("first-monday")  # both day fields: must both match, as in Celery
        assert _got.schedule == _Cron(expr="0 9 1,2,3,4,5,6,7 * 1", tz="UTC", day_or=False), _got
        for _name in ("paused", "sync-every-10s"):
            try:
                _api.get(_name)
            except _NotFound:
                pass
            else:
                raise AssertionError(f"{_name} was copied")
    """,
    # The beat (doc's command line, with this module as the app) logs JSON lines: the
    # "fired" decision with its dcron_ fields, as the doc shows.
    JSON_LOGS: """
        if __name__ == "__main__":
            import json as _json
            import os as _os
            import signal as _signal
            import subprocess as _subprocess
            import sys as _sys
            import time as _time
            _log = open("json-beat.log", "w+b")
            _beat = _subprocess.Popen(
                [_sys.executable, "-m", "celery", "-A", "block", "beat",
                 "-S", "celery_dcron.DistributedScheduler", "-l", "info"],
                stdin=_subprocess.DEVNULL, stdout=_log, stderr=_subprocess.STDOUT,
                start_new_session=True,
            )
            def _text():
                with open("json-beat.log") as _f:
                    return _f.read()
            def _lines():
                return _text().splitlines()
            def _fired():
                return [_l for _l in _lines() if '"dcron_event": "fired"' in _l]
            try:
                _deadline = _time.monotonic() + 60
                while not _fired():
                    assert _beat.poll() is None, _text()
                    assert _time.monotonic() < _deadline, _text()
                    _time.sleep(0.2)
                _os.killpg(_beat.pid, _signal.SIGTERM)
                assert _beat.wait(30) == 0, _text()
            finally:
                if _beat.poll() is None:
                    _os.killpg(_beat.pid, _signal.SIGKILL)
                    _beat.wait(10)
            print(_text())
            # after Celery's banner (printed, not logged) and its blank line: JSON only
            _banner, _logged = _text().split(chr(10) * 2, 1)
            _records = [_json.loads(_l) for _l in _logged.splitlines() if _l.strip()]
            assert any(_r["message"] == "beat: Starting..." for _r in _records), _records
            _fire = next(_r for _r in _records if _r.get("dcron_event") == "fired")
            assert _fire["name"] == "celery_dcron.engine.dispatch", _fire
            assert _fire["levelname"] == "INFO", _fire
            assert _fire["message"].startswith(f"dcron: fired {_fire['dcron_entry']} "), _fire
            assert {"asctime", "dcron_tick_ms", "dcron_task_id", "dcron_node",
                    "dcron_run_now"} <= set(_fire), _fire
            assert any(_r["name"].startswith("celery_dcron") and _r.get("dcron_event")
                       for _r in _records if _r is not _fire), _records
    """,
    ("docs/migration.rst", "from redbeat.schedulers import"): """
        from celery_dcron import DynamicTasks as _DT
        _got = {s.name: s for s in _DT(_app).list()}
        assert set(_got) == {"nightly", "poll-30s"}, _got
        assert _got["nightly"].args == ("daily",), _got["nightly"]
        assert dict(_got["poll-30s"].options) == {"queue": "polls"}, _got["poll-30s"]
    """,
    ("docs/operations.rst", "signals.node_left.connect"): """
        import logging as _logging
        from celery_dcron.entries import Node as _Node
        _seen = []
        class _Keep(_logging.Handler):
            def emit(self, record):
                _seen.append(record.getMessage())
        _logging.getLogger().addHandler(_Keep())
        _logging.getLogger().setLevel(_logging.INFO)
        signals.node_left.send(sender=None, node=_Node(id="web-1:4711:3fa2c1"))
        # Celery's dispatch logs a receiver that raises: the receiver's own line must be there
        assert "beat instance web-1:4711:3fa2c1 left" in _seen, _seen
    """,
    ("docs/dynamic.rst", 'tasks.update("report"'): """
        from celery_dcron.schedules import CronSchedule as _Cron
        # "still Paris": a new cron keeps the entry's zone
        _want = _Cron(expr="30 7 * * mon-fri", tz="Europe/Paris")
        assert tasks.get("report").schedule == _want, tasks.get("report")
    """,
    ("docs/django.rst", "task.save()"): """
        from celery_dcron import DynamicTasks as _DT
        from proj.celery import app as _app
        assert _DT(_app).get("nightly-report").task == "proj.tasks.report"
    """,
}

PROJ_INIT = """\
from .celery import app

__all__ = ["app"]
"""
PROJ_CELERY = """\
from celery import Celery

app = Celery("proj", include=["proj.tasks"])
app.config_from_object("celeryconfig")
"""
OTHER_APP = """\
import proj.tasks  # noqa: F401  (the same tasks)
from proj.celery import app as _proj

app = _proj.__class__("other")
app.config_from_object("celeryconfig")
app.conf.dcron_namespace = "other"
app.tasks.update(_proj.tasks)
"""
PROJ_TASKS = """\
from proj.celery import app


@app.task
def sync(): ...


@app.task
def report(kind="daily"): ...


@app.task
def poll(): ...


@app.task
def launch(): ...


@app.task
def ping(): ...


@app.task
def lights(): ...


@app.task
def digest(): ...


@app.task
def deliver(payload=None): ...
"""

#: After a block that configures Celery: load it the way Celery and the beat do.
CHECK_CONFIG = """
import types as _types
from celery import Celery as _Celery
from celery_dcron.config import Settings as _Settings
from celery_dcron.scheduler import entry_from_beat as _entry_from_beat

_conf = {
    _k: _v for _k, _v in dict(globals()).items()
    if _k.islower() and not _k.startswith("_")
    and not isinstance(_v, (type, _types.ModuleType, _types.FunctionType))
}
_check = _Celery("doc-check")
_check.conf.update(_conf)
_settings = _Settings.from_app(_check)
for _name, _data in (_check.conf.beat_schedule or {}).items():
    _entry_from_beat(_name, _data, app_tz=str(_check.timezone))
print("config ok:", sorted(_conf))
"""

#: Before a Django settings fragment: the rest of a project's settings (tests/django's,
#: without the two apps the docs add).
DJANGO_SETTINGS_PRELUDE = """
from tests.django.settings import *  # noqa: F403  (the "# ..." of the fragment)
_ADDED_BY_DOCS = ("django_celery_results", "celery_dcron.contrib.django")
INSTALLED_APPS = [_a for _a in INSTALLED_APPS if _a not in _ADDED_BY_DOCS]
_PROJECT_APPS = list(INSTALLED_APPS)
"""
CHECK_DJANGO_SETTINGS = """
assert "celery_dcron.contrib.django" in INSTALLED_APPS, INSTALLED_APPS
INSTALLED_APPS = list(dict.fromkeys([*_PROJECT_APPS, *INSTALLED_APPS]))
from django.conf import settings as _dj
_dj.configure(**{_k: _v for _k, _v in dict(globals()).items() if _k.isupper()})
import django as _django
_django.setup()
from celery_dcron.contrib.django.validators import celery_app as _celery_app
print("DCRON_CELERY_APP ->", _celery_app().main)
_celery_settings = {_k for _k in dict(globals()) if _k.startswith("CELERY_")}
if _celery_settings:
    from celery import Celery as _Celery
    from celery_dcron.config import Settings as _Settings
    _from_django = _Celery("django-settings")
    _from_django.config_from_object("django.conf:settings", namespace="CELERY")
    _s = _Settings.from_app(_from_django)
    if "CELERY_DCRON_REDIS_URL" in _celery_settings:
        assert _s.redis_url == CELERY_DCRON_REDIS_URL, (_s.redis_url, CELERY_DCRON_REDIS_URL)
    if "CELERY_RESULT_EXTENDED" in _celery_settings:
        assert _from_django.conf.result_extended == CELERY_RESULT_EXTENDED
"""
#: Before a block that uses Django models: tests/django's settings (or those of
#: :data:`DJANGO_SETTINGS`), a migrated in-memory sqlite database.
DJANGO_MODELS_PRELUDE = """
import importlib as _importlib
from django.conf import settings as _dj
_test_settings = _importlib.import_module(__SETTINGS__)
_dj.configure(**{
    **{_k: _v for _k, _v in vars(_test_settings).items() if _k.isupper()},
    "DCRON_CELERY_APP": "proj.celery:app",
})
import django as _django
_django.setup()
from django.core.management import call_command as _call_command
_call_command("migrate", verbosity=0)
"""


# -- the blocks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One code block: its file (relative to the repository), first line, language, text."""

    path: str
    line: int
    lang: str  # "python" or "console"
    text: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


_MD_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
_RST_DIRECTIVE = re.compile(r"^( *)\.\. code-block:: (\w+)\s*$")


def _markdown_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    rel = str(path.relative_to(ROOT))
    return [
        Block(rel, text.count("\n", 0, m.start(2)) + 1, m[1], m[2])
        for m in _MD_FENCE.finditer(text)
    ]


def _rst_body(lines: list[str], start: int, indent: int) -> tuple[int, str]:
    """The indented body that starts after line ``start`` (dedented), and its first line."""
    body: list[str] = []
    first = 0
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        if line.strip() and not first:
            first = number + 1
        body.append(line)
    return first, textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def _rst_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    rel = str(path.relative_to(ROOT))
    out = []
    for number, line in enumerate(lines):
        match = _RST_DIRECTIVE.match(line)
        if match:
            first, body = _rst_body(lines, number, len(match[1]))
            out.append(Block(rel, first, match[2], body))
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            indent = len(line) - len(line.lstrip())
            first, body = _rst_body(lines, number, indent)
            if body.lstrip().startswith("$ "):
                out.append(Block(rel, first, "console", body))
    return out


def all_blocks() -> list[Block]:
    blocks = _markdown_blocks(ROOT / "README.md")
    for page in sorted(DOCS.glob("*.rst")):
        blocks += _rst_blocks(page)
    return blocks


BLOCKS = all_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def _listed(table: dict[tuple[str, str], str], block: Block) -> str | None:
    hits = [v for (path, needle), v in table.items() if path == block.path and needle in block.text]
    assert len(hits) <= 1, f"{block.id} matches several entries"
    return hits[0] if hits else None


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    text: str
    #: the ``Error: ...`` line the docs show it printing (it must exit 1), or None
    error: str | None


def commands(block: Block) -> list[Command]:
    """The commands of a shell block: ``$`` lines with their ``\\`` continuations (or,
    in a block without any ``$``, every line)."""
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    out: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if prompted and not line.startswith("$ "):
            continue
        if not line.strip():
            continue
        start = index - 1
        text = line[2:] if prompted else line
        while text.endswith("\\") and index < len(lines):
            text += "\n" + lines[index]
            index += 1
        following = lines[index] if index < len(lines) else ""
        error = following.strip() if following.startswith("Error:") else None
        out.append(Command(block, block.line + start, text, error))
    return out


def _is_dcron_cli(text: str) -> bool:
    return bool(re.match(r"celery\b.* dcron ", text))


def _is_beat(text: str) -> bool:
    return bool(re.match(r"celery\b.* beat .*-S ", text))


CONSOLE = [b for b in BLOCKS if b.lang == "console" and any(
    _is_dcron_cli(c.text) for c in commands(b))]  # fmt: skip
BEAT_LINES = sorted(
    {c.text.split("#", 1)[0].strip() for b in BLOCKS if b.lang == "console"
     for c in commands(b) if _is_beat(c.text)}
)  # fmt: skip


# -- the project and how a block runs ----------------------------------------------------------


def _substitute(text: str, server: RedisServer) -> str:
    return text.replace(DOC_REDIS, f"127.0.0.1:{server.port}")


def _quickstart_config(path: str) -> Block:
    source = "README.md" if path == "README.md" else "docs/quickstart.rst"
    (config,) = [b for b in PYTHON if b.path == source and "beat_schedule = {" in b.text]
    return config


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "__init__.py").write_text(PROJ_INIT)
    (proj / "celery.py").write_text(PROJ_CELERY)
    (proj / "tasks.py").write_text(PROJ_TASKS)
    # docs/cli.rst copies entries to "another cluster": proj's tasks, another namespace
    (tmp_path / "other.py").write_text(OTHER_APP)
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _write_config(project: Path, block: Block, server: RedisServer) -> None:
    config = _quickstart_config(block.path)
    (project / "celeryconfig.py").write_text(_substitute(config.text, server))


def _top_level_names(code: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(code).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
            else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _imports(code: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def script_for(block: Block, code: str) -> str:
    """The block, with the setup and checks that its kind needs around it."""
    names = _top_level_names(code)
    is_config = any(
        n.startswith(("broker_", "dcron_", "result_")) or n == "beat_schedule" for n in names
    )
    is_django_settings = any(n.isupper() for n in names)
    uses_django = not is_django_settings and any(
        m == "django" or m.startswith(("django.", "celery_dcron.contrib.django"))
        for m in _imports(code)
    )
    before = [textwrap.dedent(_listed(PRELUDE, block) or "")]
    after = [textwrap.dedent(_listed(EXERCISE, block) or "")]
    if is_django_settings:
        before.insert(0, DJANGO_SETTINGS_PRELUDE)
        after.insert(0, CHECK_DJANGO_SETTINGS)
    elif uses_django:
        settings = _listed(DJANGO_SETTINGS, block) or "tests.django.settings"
        before.insert(0, DJANGO_MODELS_PRELUDE.replace("__SETTINGS__", repr(settings)))
    if is_config:
        after.insert(0, CHECK_CONFIG)
    return "\n".join(
        ["# -- setup", *before, f"# -- {block.id}, as written", code, "# -- checks", *after]
    )


def _run(argv: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=project, env=_env(project), capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False,
    )  # fmt: skip


# -- the tests -----------------------------------------------------------------------------


def test_every_block_is_found_and_the_lists_are_current() -> None:
    """The extraction sees the blocks the docs have, and every DJANGO_SETTINGS / PRELUDE
    / EXERCISE entry still names exactly one Python block (so none goes stale)."""
    assert len(PYTHON) >= 15 and any(b.path == "README.md" for b in PYTHON)
    assert {b.path for b in CONSOLE} >= {"README.md", "docs/cli.rst"}
    assert BEAT_LINES, "no `celery beat -S ...` line found"
    for table in (DJANGO_SETTINGS, PRELUDE, EXERCISE):
        for path, needle in table:
            found = [b.id for b in PYTHON if b.path == path and needle in b.text]
            assert len(found) == 1, f"{path}: {needle!r} matches {found or 'no block'}"


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(
    block: Block, project: Path, redis_url: str, redis_server_session: RedisServer
) -> None:
    server = redis_server_session
    _write_config(project, block, server)
    script = project / "block.py"
    script.write_text(script_for(block, _substitute(block.text, server)))
    out = _run([sys.executable, str(script)], project)
    assert out.returncode == 0, (
        f"{block.id} does not run as written:\n{block.text}\n--- output:\n"
        f"{out.stdout[-3000:]}{out.stderr[-5000:]}"
    )


@pytest.mark.parametrize("block", CONSOLE, ids=[b.id for b in CONSOLE])
def test_dcron_commands_run(
    block: Block, project: Path, redis_url: str, redis_server_session: RedisServer
) -> None:
    server = redis_server_session
    _write_config(project, block, server)
    for command in commands(block):
        if not _is_dcron_cli(command.text):
            continue
        out = _run(["bash", "-c", _substitute(command.text, server)], project)
        where = f"{block.path}:{command.line}: {command.text}"
        output = out.stdout + out.stderr
        if command.error is None:
            assert out.returncode == 0, f"{where}\nexit {out.returncode}:\n{output[-3000:]}"
        else:
            assert out.returncode == 1, f"{where}\nexit {out.returncode}:\n{output[-3000:]}"
            assert command.error in output.splitlines(), f"{where}\n{output[-3000:]}"


@pytest.mark.parametrize("line", BEAT_LINES)
def test_beat_command_starts_and_stops(
    line: str, project: Path, redis_url: str, redis_server_session: RedisServer
) -> None:
    server = redis_server_session
    readme = next(b for b in BLOCKS if b.path == "README.md")
    _write_config(project, readme, server)
    log = project / "beat.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], cwd=project, env=_env(project),
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=server.port, db=1, decode_responses=True)
    status_key = Keys("dcron", "default").status
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "working" not in client.hgetall(status_key).values():
            assert proc.poll() is None, f"{line}: exited {proc.returncode}\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{line}: not working\n{log.read_text()}"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert client.hgetall(status_key) == {}, "a stopped instance leaves the registry"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        client.close()
