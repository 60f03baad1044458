"""Django settings of docs/migration.rst's django-celery-beat copy script
(tests/integration/test_doc_examples.py): tests/django's, with ``django_celery_beat``
installed next to celery_dcron's app, as the script expects. A module of its own, so that
tests/django (and its ``makemigrations --check``) never sees django-celery-beat."""

from __future__ import annotations

from tests.django.settings import *  # noqa: F403
from tests.django.settings import INSTALLED_APPS as _APPS

INSTALLED_APPS = [*_APPS, "django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
