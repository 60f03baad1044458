"""The package's string enums. Pure module: no I/O, imports only :mod:`.exceptions`.

Each is a ``str`` enum: it compares equal to, and serialises (JSON, logs, f-strings)
as, the very string it replaced, so registry data written by older versions loads
as it is. Strings become these enums once, where they enter (settings, the API, the
admin form, the JSON codec); inside, code compares enums.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from .exceptions import InvalidEntryError

__all__ = ["AfterRun", "EntrySource", "MisfirePolicy", "StrategyName", "parse_field"]


class _StrEnum(str, enum.Enum):
    """``class X(str, Enum)`` that prints as its value on every Python (3.12 changed
    ``format()`` of mixed-in enums to the member name)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def choices(cls) -> str:
        return ", ".join(repr(m.value) for m in cls)


class MisfirePolicy(_StrEnum):
    """What the owner does with ticks that were due while nobody fired them."""

    #: Missed ticks coalesce into one run (the latest one). The default.
    ONCE = "once"
    #: Every missed tick runs, oldest first, up to ``dcron_misfire_max_catchup``.
    ALL = "all"
    #: Missed ticks are skipped; only a tick fired on time runs.
    SKIP = "skip"

    @classmethod
    def parse(cls, value: str | MisfirePolicy, *, field_name: str) -> MisfirePolicy:
        """``value`` as a policy; InvalidEntryError (field ``misfire_policy``) naming
        ``field_name`` and the choices."""
        try:
            return cls(value)
        except ValueError:
            raise InvalidEntryError(
                f"{field_name}: {value!r} is not a misfire policy; use one of {cls.choices()}",
                field="misfire_policy",
            ) from None


class AfterRun(_StrEnum):
    """What happens to an entry once it has run for the last time (a one-off ``at``
    entry, ``max_runs`` reached, or past ``end_at``)."""

    #: Removed, and its name is free again.
    DELETE = "delete"
    #: Removed and tombstoned: re-adding the name is refused (also from beat_schedule).
    TOMBSTONE = "tombstone"
    #: Kept, disabled.
    DISABLE = "disable"


class EntrySource(_StrEnum):
    """Who wrote an entry, and so who may change it."""

    #: ``beat_schedule`` in the Celery config, written by every instance at its start.
    STATIC = "static"
    #: The Python API or the CLI.
    DYNAMIC = "dynamic"
    #: A ``DynamicTask`` row of :mod:`celery_dcron.contrib.django` (the database wins).
    DJANGO = "django"


class StrategyName(_StrEnum):
    """The built-in ownership strategies (the ``dcron_strategy`` setting); see
    :mod:`celery_dcron.strategies`. A dotted path names a strategy of your own."""

    CONSISTENT_HASH = "consistent_hash"
    RENDEZVOUS = "rendezvous"
    HASH_SLOT = "hash_slot"
    MODULO = "modulo"
    WEIGHTED = "weighted"
    ROUND_ROBIN = "round_robin"
    RANGE = "range"


_E = TypeVar("_E", bound=_StrEnum)


def parse_field(kind: type[_E], value: object, *, entry: str, field: str) -> _E:
    """``value`` (a string, or already the enum) as a member of ``kind``: the one parse of
    an entry's enum fields, from the API and from stored JSON alike. InvalidEntryError
    with ``field`` set, naming the entry and the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise InvalidEntryError(
            f"entry {entry!r}: {field}: {value!r} must be one of {choices}", field=field
        ) from None
