"""celery_dcron: a distributed, multi-active replacement for Celery beat.

Run ``celery -A proj beat -S celery_dcron.DistributedScheduler`` on several
machines: entries are split between the live instances and every tick is
claimed in Redis before it is sent, so it is sent once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .enums import MisfirePolicy
from .exceptions import (
    BulkInvalidError,
    ConfigurationError,
    ConflictError,
    DcronError,
    EntryNotFoundError,
    InvalidEntryError,
    InvalidScheduleError,
    RegistryUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "BulkInvalidError",
    "ConfigurationError",
    "ConflictError",
    "DcronError",
    "DistributedScheduler",
    "DynamicTasks",
    "EntryNotFoundError",
    "InvalidEntryError",
    "InvalidScheduleError",
    "MisfirePolicy",
    "RegistryUnavailableError",
    "__version__",
    "cron",
]

if TYPE_CHECKING:
    from .api import DynamicTasks
    from .celery_schedules import cron
    from .scheduler import DistributedScheduler


def __getattr__(name: str) -> Any:
    # Heavy imports (celery.beat, redis) only when asked for.
    if name == "DistributedScheduler":
        from .scheduler import DistributedScheduler

        return DistributedScheduler
    if name == "DynamicTasks":
        from .api import DynamicTasks

        return DynamicTasks
    if name == "cron":
        from .celery_schedules import cron

        return cron
    raise AttributeError(f"module 'celery_dcron' has no attribute {name!r}")
