"""The registry's Lua scripts, each with its KEYS / ARGV / return contract above it.

A :class:`Script` names the fixed keys it takes, in ``KEYS`` order, by their
:class:`~celery_dcron.registry.keys.Keys` attribute (``CLAIM.keys == ("last", ...)``);
:meth:`Script.bind` builds the ``KEYS`` list from a ``Keys`` object by those names,
so no caller lists keys by position. Per-tick locks, the only keys built per call,
follow the fixed ones.

Every script takes every key it touches in ``KEYS`` (Cluster-safe), never builds a
key name, and reads the time from the server (``TIME``): the cluster clock.
"""

from __future__ import annotations

from .base import Script
from .claims import (
    CLAIM,
    ENQUEUE,
    ENQUEUE_REQUESTS,
    MARK_SENT,
    REJECT,
    RETAKE,
    RUN_NOW,
    TAKE_REQUESTS,
)
from .entries import (
    CLEANUP,
    DROP_STATIC,
    PUT_ENTRIES,
    PUT_ENTRIES_MAX,
    PUT_ENTRIES_MAX_BYTES,
    PUT_ENTRY,
    REMOVE_ENTRY,
    RESET,
    SET_DUE,
    SET_DUE_MAX,
    SET_PAUSED,
    SYNC_STATIC,
)
from .membership import EXPIRE_CRASHED, HEARTBEAT, JOIN, LEAVE, TIME
from .reads import LOAD, LOAD_SEP

__all__ = [
    "ALL",
    "CLAIM",
    "CLEANUP",
    "DROP_STATIC",
    "ENQUEUE",
    "ENQUEUE_REQUESTS",
    "EXPIRE_CRASHED",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "LOAD",
    "LOAD_SEP",
    "MARK_SENT",
    "PUT_ENTRIES",
    "PUT_ENTRIES_MAX",
    "PUT_ENTRIES_MAX_BYTES",
    "PUT_ENTRY",
    "REJECT",
    "REMOVE_ENTRY",
    "RESET",
    "RETAKE",
    "RUN_NOW",
    "SET_DUE",
    "SET_DUE_MAX",
    "SET_PAUSED",
    "SYNC_STATIC",
    "TAKE_REQUESTS",
    "TIME",
    "Script",
]

#: Every script, in the order :meth:`Transport.load_scripts
#: <celery_dcron.registry.transport.Transport.load_scripts>` loads them.
ALL: tuple[Script, ...] = (
    HEARTBEAT, JOIN, LEAVE, SYNC_STATIC, CLAIM, RETAKE, MARK_SENT, REJECT, PUT_ENTRY,
    PUT_ENTRIES, REMOVE_ENTRY, CLEANUP, RESET, SET_PAUSED, RUN_NOW, TAKE_REQUESTS, TIME,
    ENQUEUE, EXPIRE_CRASHED, LOAD, SET_DUE, DROP_STATIC, ENQUEUE_REQUESTS,
)  # fmt: skip
