"""The Redis registry: the only module that knows Redis keys, scripts and channels.

Schema (every key of one namespace shares the hash tag ``{prefix:namespace}``, so
all scripts touch one Redis Cluster slot; ``B`` below stands for that tag)::

    B:nodes       hash    node id -> node JSON (host, pid, version, weight, ...)
    B:status      hash    node id -> "starting" | "working" | "leaving"
    B:alive       zset    node id -> heartbeat expiry (Redis server time, ms)
    B:meta        hash    "members" -> membership version, "entries" -> entries version,
                          "epoch" -> server time when the data began (new after a loss),
                          "paused" -> "1" while the whole cluster is paused (pause_all),
                          "reset" -> cluster time (ms) at which the first instance that
                          noticed a data loss rebuilt the registry (absent on new data)
    B:entries     hash    entry name -> entry JSON (static and dynamic)
    B:static      hash    entry name -> "1" for entries written from beat_schedule
    B:tombstones  hash    entry name -> deletion time (ms); re-adding is refused
    B:anchor      hash    entry name -> registration time (ms); no earlier tick fires
    B:last        hash    entry name -> last claimed tick (ms); only ever grows
    B:runs        hash    entry name -> number of ticks claimed for dispatch
    B:lastnode    hash    entry name -> node id of the last claim
    B:pending     hash    "<tick_ms>:<name>" -> node id: claimed, not yet marked sent
    B:requests    hash    "<request_ms>:<name>" -> "" (a run-now request waiting for the
                          entry's owner) or the node id that took it and has not yet sent it
    B:lock:<name>:<tick_ms>   string  per-tick fire lock (SET NX PX), value node id
    B:events      channel "members" | "entries" (pub/sub wake-ups; polling is the fallback)

Nothing read back is unpickled: values are JSON or plain integers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import clients
from .config import Settings
from .entries import ClaimResult, EntrySpec, EntryState, Node, NodeStatus, PendingClaim, Tick
from .exceptions import (
    ConflictError,
    DcronError,
    EntryNotFoundError,
    InvalidEntryError,
    RegistryUnavailableError,
)
from .schedules import IntervalSchedule
from .ticks import interval_phase_ms
from .topology import RedisTarget

__all__ = [
    "Heartbeat",
    "Keys",
    "Registry",
    "RunRequest",
    "Snapshot",
    "StaticSyncResult",
    "connect",
]

logger = logging.getLogger(__name__)

#: Ticks per claim or retake script. A claimed tick costs the script ~7 commands (~10 µs),
#: so one call holds Redis for a few ms at most.
MAX_TICKS_PER_SCRIPT = 500

#: Errors that mean "Redis is unreachable right now"; callers retry later.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
)
#: What ``Registry._run`` looks at: outages, and replies that show a wrong dcron_redis_url.
_CAUGHT: tuple[type[BaseException], ...] = (
    *REDIS_ERRORS,
    redis.exceptions.ResponseError,
    redis.exceptions.RedisClusterException,  # "cannot be connected": no reachable node
)


class Keys:
    """Every key and channel name of one namespace. Nothing else builds key names."""

    def __init__(self, prefix: str, namespace: str) -> None:
        self.prefix = prefix
        self.namespace = namespace
        base = "{" + f"{prefix}:{namespace}" + "}"
        self.base = base
        self.nodes = f"{base}:nodes"
        self.status = f"{base}:status"
        self.alive = f"{base}:alive"
        self.meta = f"{base}:meta"
        self.entries = f"{base}:entries"
        self.static = f"{base}:static"
        self.tombstones = f"{base}:tombstones"
        self.anchor = f"{base}:anchor"
        self.last = f"{base}:last"
        self.runs = f"{base}:runs"
        self.lastnode = f"{base}:lastnode"
        self.pending = f"{base}:pending"
        self.requests = f"{base}:requests"
        self.events = f"{base}:events"

    def lock(self, name: str, tick_ms: int) -> str:
        return f"{self.base}:lock:{name}:{tick_ms}"

    @staticmethod
    def pending_field(name: str, tick_ms: int) -> str:
        return f"{tick_ms}:{name}"

    @staticmethod
    def parse_pending_field(field: str) -> tuple[str, int]:
        tick, _, name = field.partition(":")
        return name, int(tick)

    def all_fixed(self) -> tuple[str, ...]:
        """Every fixed key of the namespace (not the per-tick locks)."""
        return (
            self.nodes, self.status, self.alive, self.meta, self.entries, self.static,
            self.tombstones, self.anchor, self.last, self.runs, self.lastnode, self.pending,
            self.requests,
        )  # fmt: skip


# -- Lua scripts -----------------------------------------------------------------
# Each takes every key it touches in KEYS (Cluster-safe) and never builds key names.

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The anchor of an entry registered now: the latest instant <= now on its interval grid
# (every_ms, phase_ms), or now itself when every_ms is 0 (not an interval entry). The
# same value as ticks.phased_anchor; the phase comes from ticks.interval_phase_ms.
_ANCHOR = """
local function anchor_at(every_s, phase_s)
  local every = tonumber(every_s)
  if every > 0 then return now - ((now - tonumber(phase_s)) % every) end
  return now
end
"""

# KEYS: nodes, status, alive, meta
# ARGV: node_id, node_json, status, ttl_ms, channel
# Expires dead nodes, refreshes this node, bumps the membership version (and
# publishes "members") when the live set or a status changed.
# Sets the namespace's epoch (server time) if it has none: a Redis that lost its data
# has a new one, whatever its versions have climbed back to.
# Returns {server_s, server_us, members_version, entries_version, paused (0|1), epoch,
# reset (ms, or nil on data that was never rebuilt after a loss), the earliest heartbeat
# expiry of another node (ms, or nil when alone)}.
HEARTBEAT = (
    _NOW
    + """
local changed = 0
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(dead) do
  if id ~= ARGV[1] then
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
  changed = 1
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old ~= ARGV[3] then changed = 1 end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) == false then changed = 1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
if changed == 1 then
  redis.call('HINCRBY', KEYS[4], 'members', 1)
  redis.call('PUBLISH', ARGV[5], 'members')
end
redis.call('HSETNX', KEYS[4], 'epoch', t[1] .. '.' .. t[2])
local m = redis.call('HMGET', KEYS[4], 'members', 'entries', 'paused', 'epoch', 'reset')
local first = redis.call('ZRANGE', KEYS[3], 0, 1, 'WITHSCORES')
local peer = false
for i = 1, #first, 2 do
  if first[i] ~= ARGV[1] then peer = first[i + 1]; break end
end
return {t[1], t[2], m[1] or '0', m[2] or '0', m[3] or '0', m[4], m[5], peer}
"""
)

# KEYS: nodes, status, alive, meta      ARGV: node_id, channel
LEAVE = """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'members', 1)
redis.call('PUBLISH', ARGV[2], 'members')
return 1
"""

# KEYS: entries, static, tombstones, anchor, meta
# ARGV: channel, n, then per entry i: name, json, every_ms (0 = not an interval), phase_ms
# Writes the static entries of one beat_schedule in one step: a tombstoned name or
# a dynamic entry of the same name is left alone (reported); static entries no
# longer in the schedule are removed; anchors are set once (HSETNX, on the entry's grid).
# Returns {changed, name, reason, name, reason, ...}.
SYNC_STATIC = (
    _NOW
    + _ANCHOR
    + """
local n = tonumber(ARGV[2])
local changed = 0
local out = {}
local keep = {}
for i = 1, n do
  local b = 3 + 4 * (i - 1)
  local name = ARGV[b]
  local json = ARGV[b + 1]
  keep[name] = true
  if redis.call('HEXISTS', KEYS[3], name) == 1 then
    table.insert(out, name); table.insert(out, 'tombstoned')
  elseif redis.call('HEXISTS', KEYS[2], name) == 0
      and redis.call('HEXISTS', KEYS[1], name) == 1 then
    table.insert(out, name); table.insert(out, 'dynamic')
  else
    if redis.call('HGET', KEYS[1], name) ~= json then
      redis.call('HSET', KEYS[1], name, json)
      redis.call('HSET', KEYS[2], name, '1')
      changed = changed + 1
    end
    redis.call('HSETNX', KEYS[4], name, anchor_at(ARGV[b + 2], ARGV[b + 3]))
  end
end
for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not keep[name] then
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[1], name)
    changed = changed + 1
  end
end
if changed > 0 then
  redis.call('HINCRBY', KEYS[5], 'entries', 1)
  redis.call('PUBLISH', ARGV[1], 'entries')
end
table.insert(out, 1, changed)
return out
"""
)

# KEYS: last, runs, lastnode, pending, lock_1, ..., lock_n
# ARGV: node_id, lock_ttl_ms, then per claim i: name, tick_ms, fire (0|1), max_runs (0 = none)
# Claim i wins iff tick > last tick (and, to fire, runs < max_runs and the per-tick
# lock is free); winning advances last (and runs, lastnode, pending when firing).
# A retried call (reply lost) is idempotent: our own pending claim counts as won.
# Returns per claim {won (0|1), last_tick (-1 = none), runs}.
CLAIM = """
local out = {}
for i = 1, #KEYS - 4 do
  local b = 2 + (i - 1) * 4
  local name, tick_s = ARGV[b + 1], ARGV[b + 2]
  local fire, maxr = ARGV[b + 3] == '1', tonumber(ARGV[b + 4])
  local tick = tonumber(tick_s)
  local last_s = redis.call('HGET', KEYS[1], name)
  local last = tonumber(last_s or '-1')
  local runs = tonumber(redis.call('HGET', KEYS[2], name) or '0')
  local field = tick_s .. ':' .. name
  local won = 0
  if tick > last then
    if not fire then
      redis.call('HSET', KEYS[1], name, tick_s)
      last_s = tick_s
      won = 1
    elseif (maxr == 0 or runs < maxr)
        and redis.call('SET', KEYS[4 + i], ARGV[1], 'NX', 'PX', ARGV[2]) then
      redis.call('HSET', KEYS[1], name, tick_s)
      runs = redis.call('HINCRBY', KEYS[2], name, 1)
      redis.call('HSET', KEYS[3], name, ARGV[1])
      redis.call('HSET', KEYS[4], field, ARGV[1])
      last_s = tick_s
      won = 1
    end
  elseif tick == last and fire and redis.call('HGET', KEYS[4], field) == ARGV[1] then
    won = 1
  end
  out[i] = {won, last_s or '-1', runs}
end
return out
"""

# KEYS: pending, alive, lock_1, ..., lock_n      ARGV: node_id, lock_ttl_ms, field_1, ..., field_n
# Takes over claims that were never marked sent: ours (a retry), or those of a
# node that is no longer alive. Returns per field 1 (ours now) or 0.
RETAKE = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS - 2 do
  local field = ARGV[2 + i]
  local holder = redis.call('HGET', KEYS[1], field)
  local won = 0
  if holder then
    local ok = holder == ARGV[1]
    if not ok then
      local exp = redis.call('ZSCORE', KEYS[2], holder)
      ok = (exp == false) or (tonumber(exp) <= now)
    end
    if ok then
      redis.call('HSET', KEYS[1], field, ARGV[1])
      redis.call('SET', KEYS[2 + i], ARGV[1], 'PX', ARGV[2])
      won = 1
    end
  end
  out[i] = won
end
return out
"""
)


# -- dynamic entries ----------------------------------------------------------------
# Every write bumps the entries version and publishes "entries", so owners reload.

# The version of the stored entry JSON in ``cur`` (-1: no entry, 0: no version field).
_VERSION = """
local function version_of(cur)
  if not cur then return -1 end
  local ok, data = pcall(cjson.decode, cur)
  if ok and type(data) == 'table' and tonumber(data['version']) then
    return tonumber(data['version'])
  end
  return 0
end
"""

# KEYS: entries, static, tombstones, anchor, meta
# ARGV: channel, name, json, expected ('' = must not exist, else the current version),
#       force ('1' = write over a tombstone or a static entry, and drop both marks),
#       every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Compare-and-set of one entry definition; sets the anchor once (HSETNX, server time on
# the entry's grid).
# Returns {status, current version}: status 'ok', 'exists', 'missing', 'conflict',
# 'tombstoned' or 'static' (a new dynamic entry may not take a static entry's name).
PUT_ENTRY = (
    _NOW
    + _ANCHOR
    + _VERSION
    + """
local name = ARGV[2]
local cur = redis.call('HGET', KEYS[1], name)
local ver = version_of(cur)
local force = ARGV[5] == '1'
if not force and redis.call('HEXISTS', KEYS[3], name) == 1 then return {'tombstoned', ver} end
if ARGV[4] == '' then
  if not force and redis.call('HEXISTS', KEYS[2], name) == 1 then return {'static', ver} end
  if cur then return {'exists', ver} end
elseif not cur then
  return {'missing', ver}
elseif tonumber(ARGV[4]) ~= ver then
  return {'conflict', ver}
end
if force then
  redis.call('HDEL', KEYS[3], name)
  redis.call('HDEL', KEYS[2], name)
end
redis.call('HSET', KEYS[1], name, ARGV[3])
redis.call('HSETNX', KEYS[4], name, anchor_at(ARGV[6], ARGV[7]))
redis.call('HINCRBY', KEYS[5], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
"""
)

# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, meta
# ARGV: channel, name, tombstone ('1'|'0'), expected ('' = any version)
# Removes the definition and run state; with tombstone, records the deletion time so
# that re-adding the name (also from a static beat_schedule) is refused.
# Returns {status, current version}: 'ok', 'missing' (tombstone still set) or 'conflict'.
REMOVE_ENTRY = (
    _NOW
    + _VERSION
    + """
local name = ARGV[2]
local ver = version_of(redis.call('HGET', KEYS[1], name))
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= ver then return {'conflict', ver} end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], name, now) end
if ver < 0 then return {'missing', ver} end
for i = 1, 7 do
  if i ~= 3 then redis.call('HDEL', KEYS[i], name) end
end
redis.call('HINCRBY', KEYS[8], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
"""
)

# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, pending, requests, meta
# ARGV: channel, name
# Erases every trace of an entry: definition, state, tombstone, unsent claims and
# run-now requests. (Per-tick locks expire on their own after dcron_lock_ttl.)
# Returns the number of fields removed.
CLEANUP = """
local name = ARGV[2]
local n = 0
for i = 1, 7 do n = n + redis.call('HDEL', KEYS[i], name) end
for i = 8, 9 do
  for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
    local c = string.find(f, ':', 1, true)
    if c and string.sub(f, c + 1) == name then n = n + redis.call('HDEL', KEYS[i], f) end
  end
end
redis.call('HINCRBY', KEYS[10], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return n
"""

# KEYS: entries, anchor, last, runs, lastnode, meta
# ARGV: channel, name, every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Starts an entry afresh: anchor at now (server time, on the entry's grid), no last
# tick, no runs. Returns 1, or 0 when there is no such entry.
RESET = (
    _NOW
    + _ANCHOR
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], anchor_at(ARGV[3], ARGV[4]))
for i = 3, 5 do redis.call('HDEL', KEYS[i], ARGV[2]) end
redis.call('HINCRBY', KEYS[6], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
"""
)

# KEYS: meta (not read: it routes the call to the namespace's node on Redis Cluster)
# Returns the server's TIME {seconds, microseconds}: the cluster clock (G7).
TIME = "return redis.call('TIME')"

# KEYS: meta      ARGV: channel, paused ('1'|'0')
# Sets or clears the cluster-wide pause; heartbeats return it. Returns 1.
SET_PAUSED = """
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
else
  redis.call('HDEL', KEYS[1], 'paused')
end
redis.call('HINCRBY', KEYS[1], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
"""

# KEYS: entries, requests, meta      ARGV: channel, name
# Records a run-now request at the server time; the entry's owner takes it.
# Returns the request time (ms), or -1 when there is no such entry.
RUN_NOW = (
    _NOW
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return -1 end
redis.call('HSETNX', KEYS[2], now .. ':' .. ARGV[2], '')
redis.call('HINCRBY', KEYS[3], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return now
"""
)

# KEYS: requests, alive      ARGV: node_id, field_1, ..., field_n
# Takes run-now requests: a waiting one (""), our own (a retry), or one whose taker is
# no longer alive. Exactly one node takes a request. Returns per field 1 (ours) or 0.
TAKE_REQUESTS = (
    _NOW
    + """
local out = {}
for i = 1, #ARGV - 1 do
  local field = ARGV[1 + i]
  local holder = redis.call('HGET', KEYS[1], field)
  local won = 0
  if holder then
    local ok = holder == '' or holder == ARGV[1]
    if not ok then
      local exp = redis.call('ZSCORE', KEYS[2], holder)
      ok = (exp == false) or (tonumber(exp) <= now)
    end
    if ok then
      redis.call('HSET', KEYS[1], field, ARGV[1])
      won = 1
    end
  end
  out[i] = won
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_ms: int
    members_version: int
    entries_version: int
    #: the cluster-wide pause flag (pause_all): claim nothing while set
    paused: bool = False
    #: set once per life of the registry's data: a new value means Redis lost its data
    epoch: str = ""
    #: when this data was rebuilt after a loss (cluster time, ms); None on new data
    reset_ms: int | None = None
    #: the earliest heartbeat expiry of another node (server time, ms); None when alone
    peer_expiry_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRequest:
    """A run-now request: an extra dispatch of ``name`` at ``request_ms``."""

    name: str
    request_ms: int
    #: "" while waiting, else the node that took it
    holder: str


@dataclass(frozen=True, slots=True)
class StaticSyncResult:
    changed: int
    #: name -> reason ("tombstoned" or "dynamic") for entries that were not written.
    skipped: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """A consistent-enough picture of a namespace, read in one round trip."""

    nodes: list[Node]
    server_ms: int
    #: every entry name, sorted (also those whose definition was not read)
    names: list[str]
    entries: dict[str, EntrySpec]
    #: name -> error, for definitions that did not parse
    bad: dict[str, str]
    states: dict[str, EntryState]
    paused: bool
    tombstones: dict[str, int]
    static: set[str]
    #: when the registry was rebuilt after a data loss (cluster time, ms); None if never
    reset_ms: int | None = None


def connect(settings: Settings) -> redis.Redis:
    """A redis-py client for ``settings.redis_url`` (single server, Sentinel or Cluster)
    with bounded timeouts; see :mod:`celery_dcron.clients`."""
    return clients.connect(settings)


class Registry:
    """Typed access to one namespace of the registry."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        target: RedisTarget | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.keys = keys
        #: what dcron_redis_url points at (for error messages); None: not known
        self.target = target
        #: claims and "sent" marks count once this many replicas have them (WAIT)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._time = client.register_script(TIME)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)
        self._sync_static = client.register_script(SYNC_STATIC)
        self._claim = client.register_script(CLAIM)
        self._retake = client.register_script(RETAKE)
        self._put_entry = client.register_script(PUT_ENTRY)
        self._remove_entry = client.register_script(REMOVE_ENTRY)
        self._cleanup = client.register_script(CLEANUP)
        self._reset = client.register_script(RESET)
        self._set_paused = client.register_script(SET_PAUSED)
        self._run_now = client.register_script(RUN_NOW)
        self._take_requests = client.register_script(TAKE_REQUESTS)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Registry:
        return cls(
            client or connect(settings),
            Keys(settings.key_prefix, settings.namespace),
            target=settings.redis_target,
            wait_replicas=settings.redis_wait_replicas,
            wait_timeout_ms=int(settings.redis_wait_timeout_s * 1000),
        )

    def load_scripts(self) -> None:
        """Load every script in one round trip (redis-py reloads them after a restart).

        On a single server or Sentinel master, also refuse a Redis Cluster node (the
        wrong URL scheme would work by chance, until the slot moves).
        """
        scripts = (
            self._heartbeat, self._leave, self._sync_static, self._claim, self._retake,
            self._put_entry, self._remove_entry, self._cleanup, self._reset, self._set_paused,
            self._run_now, self._take_requests, self._time,
        )  # fmt: skip
        if clients.is_cluster(self.client):
            for script in scripts:  # SCRIPT LOAD goes to every master; not in a pipeline
                self._run(lambda s=script: self.client.script_load(s.script))
            return
        pipe = self.client.pipeline(transaction=False)
        for script in scripts:
            pipe.script_load(script.script)
        pipe.info("cluster")
        *_, info = self._run(lambda: pipe.execute(raise_on_error=False))
        if isinstance(info, dict) and str(info.get("cluster_enabled")) == "1":
            raise clients.cluster_node_error()

    # -- membership ----------------------------------------------------------------

    def heartbeat(self, node: Node, ttl_ms: int) -> Heartbeat:
        k = self.keys
        raw = self._call(
            self._heartbeat,
            [k.nodes, k.status, k.alive, k.meta],
            [node.id, _json(node.to_json()), node.status.value, ttl_ms, k.events],
        )
        return Heartbeat(
            server_ms=int(raw[0]) * 1000 + int(raw[1]) // 1000,
            members_version=int(raw[2]),
            entries_version=int(raw[3]),
            paused=len(raw) > 4 and str(raw[4]) == "1",
            epoch=str(raw[5]) if len(raw) > 5 and raw[5] is not None else "",
            reset_ms=int(raw[6]) if len(raw) > 6 and raw[6] is not None else None,
            peer_expiry_ms=int(float(raw[7])) if len(raw) > 7 and raw[7] is not None else None,
        )

    def leave(self, node_id: str) -> None:
        k = self.keys
        self._call(self._leave, [k.nodes, k.status, k.alive, k.meta], [node_id, k.events])

    def nodes(self) -> tuple[list[Node], int]:
        """Live nodes (heartbeat not expired) with their status, and the server time."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.nodes)
        pipe.hgetall(k.status)
        pipe.zrange(k.alive, 0, -1, withscores=True)
        _queue_time(pipe, k)
        return _parse_nodes(*self._execute(pipe))

    # -- entries -----------------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec]) -> StaticSyncResult:
        k = self.keys
        args: list[Any] = [k.events, len(specs)]
        for spec in specs:
            args.extend((spec.name, spec.dumps(), *self._grid(spec)))
        raw = self._call(
            self._sync_static, [k.entries, k.static, k.tombstones, k.anchor, k.meta], args
        )
        skipped = {str(raw[i]): str(raw[i + 1]) for i in range(1, len(raw), 2)}
        return StaticSyncResult(changed=int(raw[0]), skipped=skipped)

    def restore_anchors(self, anchors: Mapping[str, int], *, reset_ms: int) -> None:
        """After Redis lost its data: put back the anchors (HSETNX: an anchor is set once)
        and record when the data was rebuilt (the first call wins), so that instances that
        start later know which entries lost their last tick with the data."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(self.keys.meta, "reset", reset_ms)
        for name, anchor_ms in anchors.items():
            pipe.hsetnx(self.keys.anchor, name, anchor_ms)
        self._execute(pipe)

    def entries(self) -> tuple[dict[str, EntrySpec], dict[str, str]]:
        """Every entry that parses, and ``name -> error`` for those that do not."""
        raw: dict[str, str] = self._run(lambda: self.client.hgetall(self.keys.entries))
        good: dict[str, EntrySpec] = {}
        bad: dict[str, str] = {}
        for name, text in raw.items():
            try:
                spec = EntrySpec.loads(text)
            except (InvalidEntryError, ValueError, KeyError, TypeError) as exc:
                bad[name] = str(exc) or type(exc).__name__
                continue
            if spec.name != name:
                bad[name] = f"stored under {name!r} but named {spec.name!r}"
                continue
            good[name] = spec
        return good, bad

    # -- state -------------------------------------------------------------------

    def states(self, names: Iterable[str] | None = None) -> dict[str, EntryState]:
        """Shared state of the given entries (all when ``names`` is None): one round trip."""
        k = self.keys
        wanted = None if names is None else list(names)
        if wanted == []:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for key in (k.anchor, k.last, k.runs, k.lastnode):
            if wanted is None:
                pipe.hgetall(key)
            else:
                pipe.hmget(key, wanted)
        results = self._execute(pipe)
        if wanted is not None:
            results = [dict(zip(wanted, r, strict=True)) for r in results]
        anchor, last, runs, lastnode = (
            {n: v for n, v in r.items() if v is not None} for r in results
        )
        out: dict[str, EntryState] = {}
        for name in set(anchor) | set(last) | set(runs):
            out[name] = EntryState(
                anchor_ms=_int_or_none(anchor.get(name)),
                last_tick_ms=_int_or_none(last.get(name)),
                run_count=int(runs.get(name) or 0),
                last_node=lastnode.get(name),
            )
        return out

    def claim(
        self,
        ticks: Sequence[Tick],
        *,
        node_id: str,
        lock_ttl_ms: int,
        max_runs: Mapping[str, int | None] | None = None,
    ) -> list[ClaimResult]:
        """Claim a batch of ticks. Ticks of one entry go oldest first.

        One round trip per :data:`MAX_TICKS_PER_SCRIPT` ticks, one after the other, so
        that no single script holds Redis long. If one of them fails, the claims of the
        earlier ones stay made (and pending): they are published by :meth:`retake`.
        """
        k = self.keys
        raw: list[Any] = []
        for part in _parts(ticks):
            keys = [k.last, k.runs, k.lastnode, k.pending]
            args: list[Any] = [node_id, lock_ttl_ms]
            for tick in part:
                keys.append(k.lock(tick.name, tick.tick_ms))
                limit = (max_runs or {}).get(tick.name) or 0
                args.extend((tick.name, tick.tick_ms, 1 if tick.fire else 0, limit))
            raw.extend(self._call_durable(self._claim, keys, args))
        results = []
        for tick, (won, last, runs) in zip(ticks, raw, strict=True):
            last_ms = int(last)
            results.append(
                ClaimResult(
                    tick=tick,
                    won=bool(int(won)),
                    last_tick_ms=None if last_ms < 0 else last_ms,
                    run_count=int(runs),
                )
            )
        return results

    def mark_sent(self, ticks: Sequence[Tick]) -> None:
        if ticks:
            fields = [self.keys.pending_field(t.name, t.tick_ms) for t in ticks]
            if self.wait_replicas:  # a lost mark would make the claim be sent again
                self._durable(self.keys.pending, lambda p: p.hdel(self.keys.pending, *fields))
            else:
                self._run(lambda: self.client.hdel(self.keys.pending, *fields))

    def pending(self) -> list[PendingClaim]:
        raw: dict[str, str] = self._run(lambda: self.client.hgetall(self.keys.pending))
        out = []
        for field, node in raw.items():
            try:
                name, tick_ms = self.keys.parse_pending_field(field)
            except ValueError:
                logger.warning("dcron: dropping malformed pending claim %r", field)
                self._run(lambda f=field: self.client.hdel(self.keys.pending, f))
                continue
            out.append(
                PendingClaim(name=name, tick_ms=tick_ms, node=node, task_id="", claimed_ms=0)
            )
        return out

    def retake(self, ticks: Sequence[Tick], *, node_id: str, lock_ttl_ms: int) -> list[bool]:
        """Take over unsent claims that are ours or whose claimer is dead (one round trip
        per :data:`MAX_TICKS_PER_SCRIPT` ticks)."""
        k = self.keys
        raw: list[Any] = []
        for part in _parts(ticks):
            keys = [k.pending, k.alive] + [k.lock(t.name, t.tick_ms) for t in part]
            args: list[Any] = [node_id, lock_ttl_ms] + [
                k.pending_field(t.name, t.tick_ms) for t in part
            ]
            raw.extend(self._call_durable(self._retake, keys, args))
        return [bool(int(x)) for x in raw]

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        """Forget unsent claims (their entry was removed)."""
        self.mark_sent(ticks)

    # -- dynamic entries -------------------------------------------------------------

    def get_entry(self, name: str) -> EntrySpec | None:
        """The entry ``name``, or None. A malformed stored entry raises InvalidEntryError."""
        text = self._run(lambda: self.client.hget(self.keys.entries, name))
        if text is None:
            return None
        try:
            return EntrySpec.loads(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidEntryError(f"entry {name!r}: malformed in the registry: {exc}") from None

    def put_entry(
        self, spec: EntrySpec, *, expected_version: int | None, force: bool = False
    ) -> EntrySpec:
        """Write ``spec`` with compare-and-set on its version; returns it as stored.

        ``expected_version=None`` creates (refused when the name exists); an int updates
        the entry only if its stored version is still that. ``force`` writes over a
        tombstone or a static entry, and with ``expected_version=None`` over anything.
        """
        for _ in range(20):
            expected = expected_version
            if force and expected is None:
                current = self.get_entry_version(spec.name)
                expected = None if current < 0 else current
            new = spec.with_changes(version=(expected or 0) + 1)
            k = self.keys
            status, version = self._call(
                self._put_entry,
                [k.entries, k.static, k.tombstones, k.anchor, k.meta],
                [k.events, spec.name, new.dumps(), "" if expected is None else expected,
                 "1" if force else "0", *self._grid(spec)],
            )  # fmt: skip
            status, version = str(status), int(version)
            if status == "ok":
                return new
            if status in ("exists", "conflict") and force and expected_version is None:
                continue  # someone wrote in between: read the new version and force again
            raise _write_error(spec.name, status, version, expected)
        raise ConflictError(f"entry {spec.name!r}: too many concurrent writes; try again")

    def get_entry_version(self, name: str) -> int:
        """The stored version of ``name``; -1 when there is no such entry."""
        spec = self.get_entry(name)
        return -1 if spec is None else spec.version

    def remove_entry(
        self, name: str, *, tombstone: bool, expected_version: int | None = None
    ) -> bool:
        """Remove the definition and run state; False if there was none.

        With ``tombstone`` the name stays deleted: re-adding it is refused until
        :meth:`reuse_deleted` or a forced write (the tombstone is set even if absent).
        """
        k = self.keys
        status, version = self._call(
            self._remove_entry,
            [k.entries, k.static, k.tombstones, k.anchor, k.last, k.runs, k.lastnode, k.meta],
            [k.events, name, "1" if tombstone else "0",
             "" if expected_version is None else expected_version],
        )  # fmt: skip
        if str(status) == "conflict":
            raise _write_error(name, "conflict", int(version), expected_version)
        return str(status) == "ok"

    def cleanup(self, name: str) -> int:
        """Erase every trace of ``name``; returns how many fields were removed."""
        k = self.keys
        keys = [k.entries, k.static, k.tombstones, k.anchor, k.last, k.runs, k.lastnode]
        keys += [k.pending, k.requests, k.meta]
        return int(self._call(self._cleanup, keys, [k.events, name]))

    def reuse_deleted(self, name: str) -> bool:
        """Remove the tombstone of ``name``; False if it had none."""
        return bool(self._run(lambda: self.client.hdel(self.keys.tombstones, name)))

    def tombstones(self) -> dict[str, int]:
        """Deleted names and when they were deleted (ms)."""
        raw: dict[str, str] = self._run(lambda: self.client.hgetall(self.keys.tombstones))
        return {name: int(ms) for name, ms in raw.items()}

    def static_names(self) -> set[str]:
        return set(self._run(lambda: self.client.hkeys(self.keys.static)))

    def reset(self, name: str) -> bool:
        """Start ``name`` afresh (anchor now, no last tick, no runs); False if absent."""
        k = self.keys
        try:
            spec = self.get_entry(name)
        except InvalidEntryError:
            spec = None  # anchored at now: the engine skips a malformed entry anyway
        grid = self._grid(spec) if spec is not None else (0, 0)
        keys = [k.entries, k.anchor, k.last, k.runs, k.lastnode, k.meta]
        return bool(self._call(self._reset, keys, [k.events, name, *grid]))

    def _grid(self, spec: EntrySpec) -> tuple[int, int]:
        """``(every_ms, phase_ms)`` of an interval entry, ``(0, 0)`` for other schedules."""
        schedule = spec.schedule
        if not isinstance(schedule, IntervalSchedule):
            return (0, 0)
        every = schedule.every_ms
        return (every, interval_phase_ms(self.keys.namespace, spec.name, every))

    def set_enabled(self, name: str, enabled: bool) -> EntrySpec:
        """Enable or disable ``name`` (compare-and-set, retried on a concurrent write)."""
        for _ in range(20):
            spec = self.get_entry(name)
            if spec is None:
                raise EntryNotFoundError(f"entry {name!r}: not found")
            if spec.enabled is enabled:
                return spec
            try:
                return self.put_entry(
                    spec.with_changes(enabled=enabled), expected_version=spec.version, force=False
                )
            except ConflictError as exc:
                if "changed by someone else" not in str(exc):
                    raise
        raise ConflictError(f"entry {name!r}: too many concurrent writes; try again")

    def set_paused(self, paused: bool) -> None:
        """Pause (or resume) the whole namespace: no instance claims anything while set."""
        k = self.keys
        self._call(self._set_paused, [k.meta], [k.events, "1" if paused else "0"])

    def is_paused(self) -> bool:
        return bool(self._run(lambda: self.client.hget(self.keys.meta, "paused")) == "1")

    def run_now(self, name: str) -> int:
        """Ask the owner of ``name`` for an extra dispatch; returns the request time (ms)."""
        k = self.keys
        at = int(self._call(self._run_now, [k.entries, k.requests, k.meta], [k.events, name]))
        if at < 0:
            raise EntryNotFoundError(f"entry {name!r}: not found")
        return at

    def requests(self) -> list[RunRequest]:
        raw: dict[str, str] = self._run(lambda: self.client.hgetall(self.keys.requests))
        out = []
        for field, holder in raw.items():
            try:
                name, at = self.keys.parse_pending_field(field)
            except ValueError:
                logger.warning("dcron: dropping malformed run-now request %r", field)
                self._run(lambda f=field: self.client.hdel(self.keys.requests, f))
                continue
            out.append(RunRequest(name=name, request_ms=at, holder=holder))
        return out

    def take_requests(self, requests: Sequence[RunRequest], *, node_id: str) -> list[bool]:
        """Take run-now requests (waiting, ours, or a dead node's): one node wins each."""
        if not requests:
            return []
        k = self.keys
        fields = [k.pending_field(r.name, r.request_ms) for r in requests]
        raw = self._call(self._take_requests, [k.requests, k.alive], [node_id, *fields])
        return [bool(int(x)) for x in raw]

    def done_requests(self, requests: Sequence[RunRequest]) -> None:
        """Forget run-now requests that were sent (or whose entry is gone)."""
        if requests:
            fields = [self.keys.pending_field(r.name, r.request_ms) for r in requests]
            self._run(lambda: self.client.hdel(self.keys.requests, *fields))

    # -- read-only views -----------------------------------------------------------

    def snapshot(self, names: Iterable[str] | None = None) -> Snapshot:
        """Nodes, entries, states, flags and tombstones in one round trip (for status
        pages). With ``names``, only those entries' definitions and states are read;
        ``Snapshot.names`` still lists every entry (ownership needs the whole list)."""
        k = self.keys
        wanted = None if names is None else list(names)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(k.nodes)
        pipe.hgetall(k.status)
        pipe.zrange(k.alive, 0, -1, withscores=True)
        _queue_time(pipe, k)
        pipe.hkeys(k.entries)
        state_keys = (k.anchor, k.last, k.runs, k.lastnode)
        for key in (k.entries, *state_keys):
            if wanted is None:
                pipe.hgetall(key)
            elif wanted:
                pipe.hmget(key, wanted)
        pipe.hmget(k.meta, ["paused", "reset"])
        pipe.hgetall(k.tombstones)
        pipe.hkeys(k.static)
        raw = self._execute(pipe)
        nodes, server_ms = _parse_nodes(*raw[:4])
        all_names: list[str] = sorted(raw[4])
        if wanted == []:
            hashes: list[dict[str, Any]] = [{} for _ in range(5)]
            rest = raw[5:]
        else:
            hashes = raw[5:10]
            if wanted is not None:
                hashes = [dict(zip(wanted, r, strict=True)) for r in hashes]
            rest = raw[10:]
        texts, anchor, last, runs, lastnode = (
            {n: v for n, v in h.items() if v is not None} for h in hashes
        )
        entries: dict[str, EntrySpec] = {}
        bad: dict[str, str] = {}
        for name, text in texts.items():
            try:
                spec = EntrySpec.loads(text)
                if spec.name != name:
                    raise ValueError(f"stored under {name!r} but named {spec.name!r}")
            except (InvalidEntryError, ValueError, KeyError, TypeError) as exc:
                bad[name] = str(exc) or type(exc).__name__
                continue
            entries[name] = spec
        states = {
            name: EntryState(
                anchor_ms=_int_or_none(anchor.get(name)),
                last_tick_ms=_int_or_none(last.get(name)),
                run_count=int(runs.get(name) or 0),
                last_node=lastnode.get(name),
            )
            for name in set(anchor) | set(last) | set(runs)
        }
        (paused, reset), tombstones, static = rest
        return Snapshot(
            nodes=nodes,
            server_ms=server_ms,
            names=all_names,
            entries=entries,
            bad=bad,
            states=states,
            paused=paused == "1",
            tombstones={n: int(ms) for n, ms in tombstones.items()},
            static=set(static),
            reset_ms=_int_or_none(reset),
        )

    # -- events ------------------------------------------------------------------

    def pubsub(self) -> Any:
        """A subscription to the namespace's events (called again after each failure).

        On Redis Cluster the subscription goes to the node of the channel's slot; the
        slot map is read afresh first, or after a failover it could still name the dead
        node (only commands, not subscriptions, refresh it).
        """
        clients.refresh_cluster_map(self.client)
        ps = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        ps.subscribe(self.keys.events)
        return ps

    def follow_master(self) -> bool:
        """On Redis Sentinel, ask the sentinels where the master is; if it moved, the
        connections to the old one are dropped. True when it moved. Never raises.

        A master replaced by ``SENTINEL FAILOVER`` or cut off by a partition still takes
        writes until it is demoted, which can take sentinels several seconds: clients
        must not wait for its ``READONLY`` errors to move.
        """
        return clients.follow_master(self.client)

    # -- plumbing ----------------------------------------------------------------

    def server_ms(self) -> int:
        """The Redis server's time in milliseconds (the cluster clock): the time of the
        server holding the namespace (on Redis Cluster, the node of its slot)."""
        sec, usec = self._call(self._time, [self.keys.meta], [])
        return int(sec) * 1000 + int(usec) // 1000

    def ping(self) -> float:
        """Round trip to Redis in seconds; raises RegistryUnavailableError."""
        start = time.perf_counter()
        self._run(self.client.ping)
        return time.perf_counter() - start

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return self._run(lambda: script(keys=keys, args=args))

    def _call_durable(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """``_call``; with ``wait_replicas``, the writes count only once that many
        replicas have them (``WAIT``, same round trip)."""
        if not self.wait_replicas:
            return self._call(script, keys, args)
        return self._durable(
            keys[0],
            # not pipe.evalsha(): a Redis Cluster pipeline refuses that method
            lambda p: p.execute_command("EVALSHA", script.sha, len(keys), *keys, *args),
            script,
        )

    def _durable(self, key: str, queue: Any, script: Any = None) -> Any:
        """Run ``queue(pipe)`` then ``WAIT``. Too few replicas is an outage: the caller
        publishes nothing and retries (the scripts are idempotent for their claimer), so
        that neither a failover nor a master cut off from its replicas (a split brain)
        can make a claim that is sent twice."""
        reply, acked = self._run(
            lambda: clients.run_then_wait(
                self.client, key, queue, self.wait_replicas, self.wait_timeout_ms, script
            )
        )
        if acked < self.wait_replicas:
            reason = (
                f"writes reached {acked} of {self.wait_replicas} replicas within "
                f"{self.wait_timeout_ms}ms (dcron_redis_wait_replicas): not counted until "
                "replicated (replicas down or lagging, or this master was replaced)"
            )
            raise RegistryUnavailableError(f"dcron: {reason}") from redis.ConnectionError(reason)
        return reply

    def _execute(self, pipe: Any) -> Any:
        return self._run(pipe.execute)

    def _run(self, fn: Any) -> Any:
        try:
            return fn()
        except _CAUGHT as exc:
            wrong = clients.configuration_error(exc, self.target)
            if wrong is not None:
                raise wrong from exc
            if not (isinstance(exc, REDIS_ERRORS) or clients.cluster_unreachable(exc)):
                raise
            hint = clients.describe_error(exc, self.target)
            if hint is None:
                raise RegistryUnavailableError(f"dcron: Redis unreachable: {exc}") from exc
            # the engine logs the cause: let it carry the hint
            cause = redis.exceptions.ConnectionError(hint)
            cause.__cause__ = exc
            raise RegistryUnavailableError(f"dcron: Redis unreachable: {hint}") from cause


def _queue_time(pipe: Any, keys: Keys) -> None:
    """Add the server time to a pipeline: the TIME script, on the namespace's node (a
    plain TIME would go to any node of a Redis Cluster; EVAL, since a cluster pipeline
    has no script objects)."""
    pipe.execute_command("EVAL", TIME, 1, keys.meta)


def _write_error(name: str, status: str, version: int, expected: int | None) -> DcronError:
    if status == "missing":
        return EntryNotFoundError(f"entry {name!r}: not found; add it first")
    if status == "exists":
        return ConflictError(
            f"entry {name!r}: already exists (version {version}); use update() to change it "
            "or force_add() to replace it"
        )
    if status == "conflict":
        return ConflictError(
            f"entry {name!r}: version: changed by someone else (now version {version}, you "
            f"had {expected}); read it again and re-apply your change"
        )
    if status == "tombstoned":
        return ConflictError(
            f"entry {name!r}: the name is deleted (tombstoned); use force_add() to overwrite "
            "it or reuse_deleted() to free the name"
        )
    if status == "static":
        return ConflictError(
            f"entry {name!r}: a static entry (beat_schedule) has that name; change it in the "
            "config, or use force_add() to replace it by a dynamic entry"
        )
    return DcronError(f"entry {name!r}: write refused: {status}")


def _parse_nodes(
    raw_nodes: Mapping[str, str],
    statuses: Mapping[str, str],
    alive: Iterable[tuple[str, float]],
    now: tuple[int, int],
) -> tuple[list[Node], int]:
    """Live nodes (heartbeat not expired), by id, and the server time in ms."""
    server_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    expiry = {member: int(score) for member, score in alive}
    nodes = []
    for node_id, text in raw_nodes.items():
        if expiry.get(node_id, 0) <= server_ms:
            continue
        try:
            node = Node.from_json(_loads(text))
            status = NodeStatus(statuses.get(node_id, node.status.value))
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("dcron: skipping malformed node %r: %s", node_id, exc)
            continue
        nodes.append(_replace_node(node, status=status))
    nodes.sort(key=lambda n: n.id)
    return nodes, server_ms


def _json(data: Mapping[str, Any]) -> str:
    import json

    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


def _parts(ticks: Sequence[Tick]) -> list[Sequence[Tick]]:
    """``ticks`` cut in order into slices of at most :data:`MAX_TICKS_PER_SCRIPT`."""
    step = MAX_TICKS_PER_SCRIPT
    return [ticks[i : i + step] for i in range(0, len(ticks), step)]


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _replace_node(node: Node, **changes: Any) -> Node:
    from dataclasses import replace

    return replace(node, **changes)
