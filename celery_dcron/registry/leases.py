"""Leases and watermarks in Redis: one process at a time does a namespace-wide job, and
the next run of that job starts where the last one stopped.

A *lease* is a string key set with ``SET NX PX`` to its holder's id (unique per run): the
holder renews it while it works and deletes it when done (both only while it is still the
holder, in a script, as redis-py's ``Lock`` does). A holder that dies lets it expire.

A *watermark* is a small hash next to the lease: how far the job got (``mark``, an opaque
integer the job defines), when its last run and its last full run started (Redis time),
and when a full run was last asked for. It is written only by the lease holder, in the same
script that checks the lease: a run that lost its lease (it stalled past the TTL, or Redis
lost its data, lease included) cannot move the watermark. A data loss takes the watermark
with it, so the next run starts from nothing.

Keys (``B`` is the namespace's hash tag, :attr:`Keys.base <.keys.Keys.base>`)::

    B:lease:<name>      string  holder id; PX: the lease's TTL
    B:watermark:<name>  hash    mark -> the job's position (integer),
                                pass_ms -> when the last run that finished started,
                                full_ms -> when the last full run that finished started,
                                full_wanted_ms -> when a full run was last asked for

Used by the Django sync (:mod:`celery_dcron.contrib.django.sync`, name ``"django"``).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from .codec import int_or_none
from .keys import Keys
from .transport import Store, Transport

__all__ = ["LeaseGrant", "LeaseStore", "Watermark", "holder_id", "lease_key", "watermark_key"]


def lease_key(keys: Keys, name: str) -> str:
    """The lease called ``name`` in the namespace of ``keys``."""
    return keys.lease(name)


def watermark_key(keys: Keys, name: str) -> str:
    """The watermark hash of the job ``name`` in the namespace of ``keys``."""
    return keys.watermark(name)


def holder_id() -> str:
    """A lease holder id, unique per call: ``<host>:<pid>:<random>`` (the host and pid tell
    an operator who holds a lease)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


# -- scripts ----------------------------------------------------------------------
# TODO(lead): these belong in scripts/ with the others (Script records, loaded by
# load_scripts). Registered here on the client (no I/O until the first call; redis-py
# loads a script again on NOSCRIPT).

# Takes the lease if it is free.
# KEYS: lease
# ARGV: holder, ttl_ms
# Returns {acquired (0|1), holder now ('' if none), its TTL left (ms), server time (ms)}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1], tonumber(ARGV[2]), now}
end
local holder = redis.call('GET', KEYS[1])
return {0, holder or '', redis.call('PTTL', KEYS[1]), now}
"""

# Extends the lease to ttl_ms from now, if ARGV[1] still holds it.
# KEYS: lease
# ARGV: holder, ttl_ms
# Returns 1 (renewed) or 0 (not ours any more).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Deletes the lease, if ARGV[1] still holds it.
# KEYS: lease
# ARGV: holder
# Returns 1 (released) or 0 (not ours any more).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Moves the watermark, if ARGV[1] still holds the lease (a run that lost it must not).
# KEYS: lease, watermark
# ARGV: holder, mark, pass_ms, full_ms ('' = not a full run: keep the stored one)
# Returns 1 (written) or 0 (the lease is not ours: nothing written).
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'mark', ARGV[2], 'pass_ms', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'full_ms', ARGV[4]) end
return 1
"""

# Asks for a full run: the next run, by whoever holds the lease then, is a full one.
# KEYS: watermark
# Returns the server time (ms) recorded.
_WANT_FULL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'full_wanted_ms', now)
return now
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseGrant:
    """The answer to :meth:`LeaseStore.acquire`."""

    #: the caller holds the lease now
    acquired: bool
    #: who holds it ("" when nobody does: it expired between the two reads)
    holder: str
    #: how long the holder's lease still runs (ms)
    ttl_ms: int
    #: the Redis server's time when asked (the cluster clock, ms)
    server_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Watermark:
    """Where a job stopped (see the module docstring); None fields were never written."""

    #: the job's position (the Django sync: the latest ``updated_at`` it read, in µs)
    mark: int | None = None
    #: when the last run that finished started (Redis time, ms)
    pass_ms: int | None = None
    #: when the last full run that finished started (Redis time, ms)
    full_ms: int | None = None
    #: when a full run was last asked for (Redis time, ms)
    full_wanted_ms: int | None = None

    @property
    def full_wanted(self) -> bool:
        """A full run was asked for after the last full run started."""
        return self.full_wanted_ms is not None and (
            self.full_ms is None or self.full_wanted_ms > self.full_ms
        )


class LeaseStore(Store):
    """Leases and watermarks of one namespace: ``LeaseStore(registry.transport)``."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        client = transport.client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._advance = client.register_script(_ADVANCE)
        self._want_full = client.register_script(_WANT_FULL)

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return self.transport.run(lambda: script(keys=keys, args=args))

    # -- the lease -------------------------------------------------------------------

    def acquire(self, name: str, holder: str, ttl_ms: int) -> LeaseGrant:
        """Take the lease ``name`` for ``ttl_ms`` if nobody holds it."""
        if ttl_ms < 1:
            raise ValueError(f"lease {name!r}: ttl_ms: {ttl_ms} must be a positive integer")
        acquired, current, left_ms, now_ms = self._call(
            self._acquire, [lease_key(self.keys, name)], [holder, ttl_ms]
        )
        return LeaseGrant(
            acquired=bool(int(acquired)), holder=str(current), ttl_ms=max(int(left_ms), 0),
            server_ms=int(now_ms),
        )  # fmt: skip

    def renew(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now; False if ``holder`` lost it."""
        return bool(int(self._call(self._renew, [lease_key(self.keys, name)], [holder, ttl_ms])))

    def release(self, name: str, holder: str) -> bool:
        """Give the lease up; False if ``holder`` did not hold it any more."""
        return bool(int(self._call(self._release, [lease_key(self.keys, name)], [holder])))

    def holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` now, or None."""
        t, key = self.transport, lease_key(self.keys, name)
        value = t.run(lambda: t.client.get(key))
        return None if value is None else str(value)

    # -- the watermark -----------------------------------------------------------------

    def watermark(self, name: str) -> Watermark | None:
        """The watermark of the job ``name``, or None when there is none (never written,
        or lost with the data). A malformed field reads as absent."""
        t, key = self.transport, watermark_key(self.keys, name)
        raw: dict[str, Any] = t.run(lambda: t.client.hgetall(key))
        if not raw:
            return None
        return Watermark(
            mark=_int(raw.get("mark")), pass_ms=_int(raw.get("pass_ms")),
            full_ms=_int(raw.get("full_ms")), full_wanted_ms=_int(raw.get("full_wanted_ms")),
        )  # fmt: skip

    def advance(
        self, name: str, holder: str, *, mark: int, pass_ms: int, full_ms: int | None = None
    ) -> bool:
        """Record where the run of ``holder`` stopped (``full_ms``: it was a full run,
        started then). Only while ``holder`` holds the lease ``name``: False (and nothing
        written) otherwise."""
        keys = [lease_key(self.keys, name), watermark_key(self.keys, name)]
        args = [holder, int(mark), int(pass_ms), "" if full_ms is None else int(full_ms)]
        return bool(int(self._call(self._advance, keys, args)))

    def want_full(self, name: str) -> int:
        """Ask for a full run of the job ``name`` (its next run, whoever does it, is a full
        one); returns the time recorded (Redis time, ms)."""
        return int(self._call(self._want_full, [watermark_key(self.keys, name)], []))


def _int(value: Any) -> int | None:
    try:
        return int_or_none(value)
    except (TypeError, ValueError):
        return None
