"""The configuration reference and the README cannot drift from the code."""

from __future__ import annotations

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
