"""The configuration reference and the README cannot drift from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from celery_dcron.config import SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_page_documents_every_setting_with_its_default() -> None:
    page = (ROOT / "docs" / "configuration.rst").read_text()
    for setting in SETTINGS:
        assert f"``{setting.name}``" in page, setting.name
        default = "``None``" if setting.default is None else f"``{setting.default!r}``"
        block = page.split(f"``{setting.name}``\n", 1)[1].split("\n\n``dcron_", 1)[0]
        assert f"*Default:* {default}." in block, (setting.name, default)
        assert setting.doc in block, setting.name


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in readme, setting.name


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert "python dev.py demo" in head and "python dev.py test" in head


def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    """``tox -e docs`` in the test run: every page, cross-reference and autodoc import
    (the API page imports the package and its Django app) builds with warnings as errors."""
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d",
         str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "html" / "migration.html").exists()
    assert "DynamicTask" in (tmp_path / "html" / "api.html").read_text()


def test_monitoring_page_lists_every_structured_log_event_and_field() -> None:
    from celery_dcron.logfields import EVENTS

    page = (ROOT / "docs" / "monitoring.rst").read_text()
    table = page.split("Structured logs", 1)[1]
    for event, names in EVENTS.items():
        assert f"``{event}``" in table, event
        for name in names:
            assert f"``{name}``" in table, (event, name)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    (line,) = [ln for ln in head.splitlines() if ln.startswith("python dev.py test")]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert line in ci, f".ci/run must run the README's test command: {line!r}"
