"""Django settings of the celery_dcron example project.

Environment:
    DCRON_REDIS_URL   Redis used as the Celery broker and the dcron registry
                      (default redis://127.0.0.1:6379/0)
    DATABASE_URL      postgres://user:pass@host:port/dbname or sqlite:///path/to/db.sqlite3
                      (default: SQLite in example_project/db.sqlite3)
    DJANGO_SECRET_KEY, DJANGO_DEBUG
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from celery_dcron import cron

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-celery-dcron-demo-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in ("1", "true", "yes", "on")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "celery_dcron.contrib.django",
    "example_project.demoapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry from a URL, without dj-database-url.

    ``postgres://user:pass@host:5432/dbname`` (or ``postgresql://``; percent-encode special
    characters in the password; ``?host=/run/postgresql`` for a Unix socket; other query
    parameters become connection OPTIONS such as ``sslmode``), ``sqlite:///relative.db``
    (to the current directory), ``sqlite:////absolute/path.db`` or ``sqlite://:memory:``.
    """
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured(
                f"DATABASE_URL: no database name in {parts.scheme}://...; "
                "use postgres://user:pass@host:5432/dbname"
            )
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": options.pop("host", None) or parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
        }
    if parts.scheme == "sqlite":
        if parts.netloc == ":memory:" or parts.path in ("", "/:memory:"):
            name = ":memory:"
        else:
            # sqlite:///rel.db -> rel.db (relative to the current directory), sqlite:////abs -> /abs
            name = unquote(parts.path)[1:]
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    raise ImproperlyConfigured(
        f"DATABASE_URL: unsupported scheme {parts.scheme!r}; use postgres://user:pass@host:port/db "
        "or sqlite:///path/to/db.sqlite3"
    )


_database_url = os.environ.get("DATABASE_URL")
DATABASES: dict[str, dict[str, Any]] = {
    "default": database_from_url(_database_url)
    if _database_url
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A worker writes while the web server reads: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# -- Celery (every CELERY_* setting is a Celery setting without the prefix) ---------------

REDIS_URL = os.environ.get("DCRON_REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# A queue of our own, so that the demo's worker and another project's worker on the same
# Redis never take each other's tasks.
CELERY_TASK_DEFAULT_QUEUE = "dcron-demo"
CELERY_RESULT_BACKEND = "django-db"
# Store periodic_task_name (the dcron entry), task name, args and worker with each result.
CELERY_RESULT_EXTENDED = True
CELERY_TASK_TRACK_STARTED = True

# -- celery_dcron: dcron_* settings, through the CELERY_ namespace -------------------------

# The Celery app the admin's Dynamic tasks page validates against and lists tasks of.
DCRON_CELERY_APP = "example_project.celery:app"

CELERY_DCRON_REDIS_URL = REDIS_URL
CELERY_DCRON_NAMESPACE = "demo"
CELERY_DCRON_HEARTBEAT_INTERVAL = 1.0
CELERY_DCRON_NODE_TTL = 5.0  # a SIGKILLed beat's entries move within ~5 s
CELERY_DCRON_STRATEGY = os.environ.get("DCRON_STRATEGY", "consistent_hash")

CELERY_BEAT_SCHEDULE = {
    # A plain interval: every 2 seconds.
    "heartbeat-2s": {
        "task": "demo.heartbeat",
        "schedule": 2.0,
    },
    # A cron string with a seconds field (sec min hour dom mon dow): at :00, :05, :10, ...
    "cron-every-5s": {
        "task": "demo.report",
        "schedule": cron("*/5 * * * * *"),
        "args": ["every-5s"],
    },
    # Celery's own crontab: at the top of every minute.
    "crontab-minutely": {
        "task": "demo.report",
        "schedule": crontab(),
        "args": ["minutely"],
    },
    # A timedelta interval with kwargs.
    "add-every-3s": {
        "task": "demo.add",
        "schedule": timedelta(seconds=3),
        "kwargs": {"x": 2, "y": 3},
    },
    # A cron string in its own timezone, and a dcron-only option: each missed tick runs.
    "cron-paris-10s": {
        "task": "demo.report",
        "schedule": cron("*/10 * * * * *", tz="Europe/Paris"),
        "args": ["paris"],
        "misfire_policy": "all",
    },
    # An interval that is slower than the node TTL.
    "heartbeat-7s": {
        "task": "demo.heartbeat",
        "schedule": timedelta(seconds=7),
        "options": {"expires": 60},
    },
}

# Many similar entries, as applications often have (one per customer, shard, feed...): each
# runs twice a minute, at its own second. Hashing spreads entries over the beats, so with
# a handful of entries one beat may own none; a dozen keep all three busy.
for _i in range(1, 7):
    CELERY_BEAT_SCHEDULE[f"customer-{_i}-sync"] = {
        "task": "demo.report",
        "schedule": cron(f"{_i * 4}/30 * * * * *"),
        "args": [f"customer-{_i}"],
    }
del _i
