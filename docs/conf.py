"""Sphinx configuration for celery_dcron. Build: sphinx-build -W -b html docs docs/_build/html"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports the package from the checkout


def _read_version() -> str:
    """``__version__`` from celery_dcron/__init__.py, read without importing the package."""
    init = ROOT / "celery_dcron" / "__init__.py"
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        tree = None
    for node in tree.body if tree else []:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        named = any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets)
        value = node.value
        if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    try:
        from importlib.metadata import version

        return version("celery-dcron")
    except Exception:
        return "0.0.0+unknown"


def _setup_django() -> None:
    """autodoc imports celery_dcron.contrib.django's models: give Django minimal settings."""
    try:
        import django
        from django.conf import settings
    except ImportError:  # the API page then warns, and -W fails: install the docs extra
        return
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "celery_dcron.contrib.django",
            ],
            DATABASES={},
            USE_TZ=True,
        )
        django.setup()


_setup_django()

project = "celery_dcron"
author = "celery_dcron contributors"
copyright = "2026, celery_dcron contributors"
release = _read_version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
HAVE_MYST = importlib.util.find_spec("myst_parser") is not None
if HAVE_MYST:
    extensions.append("myst_parser")

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"celery_dcron {release}"
html_theme_options = {
    "description": "Distributed, multi-active Celery beat",
    "fixed_sidebar": True,
}

# The changelog lives in ../CHANGELOG.md. With myst-parser (the `docs` extra) it is rendered;
# without it, changelog.rst shows it verbatim, so the build passes with plain Sphinx too.
CHANGELOG_MYST = """\
.. include:: ../CHANGELOG.md
   :parser: myst_parser.sphinx_
"""


def _changelog_source(app: Any, docname: str, source: list[str]) -> None:
    if docname == "changelog" and HAVE_MYST:
        source[0] = CHANGELOG_MYST


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _changelog_source)
    return {"parallel_read_safe": True}
