#!/usr/bin/env python
"""Django's command-line utility for the example project.

python example_project/manage.py migrate
python example_project/manage.py createsuperuser
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    # Python put this directory first on sys.path, where our celery.py would shadow the
    # celery package: import from the repository root instead (``example_project.*``).
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
