"""Guards on the shape of the package: key names in one module, lazy imports, typing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "celery_dcron"
KEY_LIKE = re.compile(
    r"(\{dcron|:(nodes|alive|status|meta|entries|static|tombstones|anchor|last|runs|lastnode|"
    r"pending|events|lock)(:|$))"
)


def test_no_redis_key_literal_outside_the_registry() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py" or "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_str and KEY_LIKE.search(node.value):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}")
    assert not offenders, "Redis key names belong in registry.py:\n" + "\n".join(offenders)


def test_import_is_light_and_works_without_django() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "import celery_dcron\n"
        "heavy = [m for m in ('redis', 'celery.beat', 'django') if sys.modules.get(m)]\n"
        "assert not heavy, heavy\n"
        "print(celery_dcron.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").exists()
