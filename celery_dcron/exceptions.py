"""Errors raised by celery_dcron.

Every error derives from :class:`DcronError`, so ``except DcronError`` catches
anything this package raises on purpose::

    DcronError
    ├── ConfigurationError        a ``dcron_*`` setting is missing or invalid
    │   └── RegistryAuthenticationError  Redis refused the credentials of dcron_redis_url
    ├── InvalidEntryError         an entry definition is invalid (names the field)
    │   ├── InvalidScheduleError  its schedule is invalid (cron, interval, tz, ...)
    │   └── BulkInvalidError      entries of an add_many are invalid: nothing written
    ├── EntryNotFoundError        no entry by that name in the namespace
    ├── ConflictError             a concurrent edit, a deleted (tombstoned) or static name
    │   └── VersionConflictError  the entry changed since it was read (compare-and-set)
    ├── RegistryUnavailableError  Redis cannot be reached; nothing was claimed
    └── UnsupportedError          this Redis cannot serve an optional feature (it is off)

Messages name the field and the fix, for example::

    InvalidScheduleError("entry 'report': cron '61 * * * *': minute must be 0-59")

A refused password is a :class:`ConfigurationError`, not a
:class:`RegistryUnavailableError`: Redis answered, and no retry fixes it. So the code that
waits out an outage (``except RegistryUnavailableError``: publish nothing, retry) never
swallows it, and the code that reports a bad setting (the beat exits with one line, the CLI
with ``Error: ...``) reports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BulkInvalidError",
    "ConfigurationError",
    "ConflictError",
    "DcronError",
    "EntryNotFoundError",
    "InvalidEntryError",
    "InvalidScheduleError",
    "RegistryAuthenticationError",
    "RegistryUnavailableError",
    "UnsupportedError",
    "VersionConflictError",
]


class DcronError(Exception):
    """Base class of every error raised by celery_dcron."""


class ConfigurationError(DcronError):
    """A ``dcron_*`` Celery setting is invalid; the message names the setting."""


class RegistryAuthenticationError(ConfigurationError):
    """Redis refused this client: a wrong or missing password, an unknown ACL user, or an
    ACL user without a permission the registry needs. The message names the Redis (password
    masked) and the setting to fix; nothing was claimed. Not retried: fix the setting."""


class InvalidEntryError(DcronError, ValueError):
    """An entry definition is invalid; the message names the entry and the field.

    ``field`` names the invalid field (``"schedule"``, ``"options.queue"``, ...) for
    code that reacts to it; None when the error is not about one field.
    """

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field


class InvalidScheduleError(InvalidEntryError):
    """A schedule (cron string, interval, timezone, datetime) is invalid."""


class BulkInvalidError(InvalidEntryError):
    """Entries given to ``DynamicTasks.add_many`` are invalid, so none was written.

    ``problems`` lists every one (:class:`celery_dcron.bulk.EntryProblem`: its position,
    name, field and message); the message quotes the first few.
    """

    def __init__(self, *args: object, problems: Sequence[Any] = ()) -> None:
        super().__init__(*args, field=None)
        self.problems = tuple(problems)


class EntryNotFoundError(DcronError, KeyError):
    """No entry of that name exists in the namespace."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "entry not found"


class ConflictError(DcronError):
    """A write was refused: the entry changed since it was read (version), its name is
    deleted (tombstoned), or it belongs to another source. The message names the fix."""


class VersionConflictError(ConflictError):
    """A compare-and-set write was refused: the entry's stored version is no longer the
    one the write expected (someone else changed it). Read it again and re-apply."""


class RegistryUnavailableError(DcronError, ConnectionError):
    """Redis could not be reached; no claim was made and nothing was published."""


class UnsupportedError(DcronError):
    """This Redis cannot serve an optional feature: a command it needs is refused (an ACL
    without it, a proxy that does not forward it) or means something else there (Redis
    Cluster). The feature is off, the rest works; ``command`` names the command."""

    def __init__(self, *args: object, command: str = "") -> None:
        super().__init__(*args)
        self.command = command
