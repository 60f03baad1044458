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

from collections.abc import Sequence
from dataclasses import dataclass

from .keys import KeyName, Keys

__all__ = [
    "ALL",
    "CLAIM",
    "CLEANUP",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "MARK_SENT",
    "PUT_ENTRY",
    "REJECT",
    "REMOVE_ENTRY",
    "RESET",
    "RETAKE",
    "RUN_NOW",
    "SET_PAUSED",
    "SYNC_STATIC",
    "TAKE_REQUESTS",
    "TIME",
    "Script",
]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and the fixed keys it takes, by name, in ``KEYS`` order."""

    name: str
    keys: tuple[KeyName, ...]
    source: str

    def bind(self, keys: Keys, extra: Sequence[str] = ()) -> list[str]:
        """The ``KEYS`` list of a call: the named keys of ``keys``, then ``extra``."""
        return [keys.named(name) for name in self.keys] + list(extra)


# -- fragments --------------------------------------------------------------------

# Defines ``t`` (the server's TIME) and ``now`` (its milliseconds).
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


# -- membership -------------------------------------------------------------------

# Defines ``token_of(record)``: the incarnation token of a node record ("" when the
# record is absent, does not parse or has none).
_TOKEN = """
local function token_of(rec)
  if not rec then return '' end
  local ok, data = pcall(cjson.decode, rec)
  if ok and type(data) == 'table' and type(data['token']) == 'string' then
    return data['token']
  end
  return ''
end
"""

# Expires dead nodes, refreshes this node, bumps the membership version (and
# publishes "members") when the live set or a status changed.
# Sets the namespace's epoch (server time) if it has none: a Redis that lost its data
# has a new one, whatever its versions have climbed back to.
# A heartbeat whose token is not the one of the node record stored under its id
# writes nothing and says so: another incarnation took the id over (JOIN), and this
# one must stop (two live processes under one id would re-publish each other's claims).
# KEYS: nodes, status, alive, meta
# ARGV: node_id, node_json, status, ttl_ms, channel, token ("": not checked)
# Returns {server_s, server_us, members_version, entries_version, paused (0|1), epoch,
# reset (ms, or nil on data that was never rebuilt after a loss), the earliest heartbeat
# expiry of another node (ms, or nil when alone), superseded (0|1)}.
HEARTBEAT = Script(
    "heartbeat",
    ("nodes", "status", "alive", "meta"),
    _NOW
    + _TOKEN
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
local superseded = 0
if ARGV[6] and ARGV[6] ~= '' then
  local held = token_of(redis.call('HGET', KEYS[1], ARGV[1]))
  if held ~= '' and held ~= ARGV[6] then superseded = 1 end
end
if superseded == 0 then
  local old = redis.call('HGET', KEYS[2], ARGV[1])
  if old ~= ARGV[3] then changed = 1 end
  if redis.call('ZSCORE', KEYS[3], ARGV[1]) == false then changed = 1 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
end
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
return {t[1], t[2], m[1] or '0', m[2] or '0', m[3] or '0', m[4], m[5], peer, superseded}
""",
)

# Registers a new incarnation under node_id (before its first heartbeat), iff the id
# is free, expired, already this incarnation's (same token), or held by the incarnation
# whose token the caller passes as dead_token (the caller proved that process dead: same
# host, pid gone or reused). Compare-and-swap on the token: two processes starting at
# once cannot both win one id.
# KEYS: nodes, status, alive, meta
# ARGV: node_id, node_json, status, ttl_ms, channel, token, dead_token ("": none)
# Returns {1, the record replaced or ""} when won, else {0, the live holder's record}.
JOIN = Script(
    "join",
    ("nodes", "status", "alive", "meta"),
    _NOW
    + _TOKEN
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local exp = redis.call('ZSCORE', KEYS[3], ARGV[1])
if cur and exp and tonumber(exp) > now then
  local held = token_of(cur)
  if held ~= ARGV[6] and (ARGV[7] == '' or held ~= ARGV[7]) then return {0, cur} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HINCRBY', KEYS[4], 'members', 1)
redis.call('PUBLISH', ARGV[5], 'members')
return {1, cur or ''}
""",
)

# Removes a node at once (graceful stop) and bumps the membership version.
# KEYS: nodes, status, alive, meta
# ARGV: node_id, channel
# Returns 1.
LEAVE = Script(
    "leave",
    ("nodes", "status", "alive", "meta"),
    """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'members', 1)
redis.call('PUBLISH', ARGV[2], 'members')
return 1
""",
)

# KEYS: meta (not read: it routes the call to the namespace's node on Redis Cluster)
# ARGV: none
# Returns the server's TIME {seconds, microseconds}: the cluster clock (G7).
TIME = Script("time", ("meta",), "return redis.call('TIME')")


# -- entries ----------------------------------------------------------------------
# Every write bumps the entries version and publishes "entries", so owners reload.

# The keys holding an entry's definition and run state (and its last publish error):
# REMOVE_ENTRY and CLEANUP clear KEYS[1..8] (REMOVE_ENTRY keeps the tombstone, KEYS[3]).
_DEFINITION_AND_STATE: tuple[KeyName, ...] = (
    "entries", "static", "tombstones", "anchor", "last", "runs", "lastnode", "errors",
)  # fmt: skip

# Writes the static entries of one beat_schedule in one step: a tombstoned name or
# a dynamic entry of the same name is left alone (reported); static entries no
# longer in the schedule are removed; anchors are set once (HSETNX, on the entry's grid).
# KEYS: entries, static, tombstones, anchor, meta
# ARGV: channel, n, then per entry i: name, json, every_ms (0 = not an interval), phase_ms
# Returns {changed, name, reason, name, reason, ...}.
SYNC_STATIC = Script(
    "sync_static",
    ("entries", "static", "tombstones", "anchor", "meta"),
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
""",
)

# Compare-and-set of one entry definition; sets the anchor once (HSETNX, server time on
# the entry's grid).
# KEYS: entries, static, tombstones, anchor, meta
# ARGV: channel, name, json, expected ('' = must not exist, else the current version),
#       force ('1' = write over a tombstone or a static entry, and drop both marks),
#       every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns {status, current version}: status 'ok', 'exists', 'missing', 'conflict',
# 'tombstoned' or 'static' (a new dynamic entry may not take a static entry's name).
PUT_ENTRY = Script(
    "put_entry",
    ("entries", "static", "tombstones", "anchor", "meta"),
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
""",
)

# Removes the definition and run state; with tombstone, records the deletion time so
# that re-adding the name (also from a static beat_schedule) is refused.
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, meta
# ARGV: channel, name, tombstone ('1'|'0'), expected ('' = any version)
# Returns {status, current version}: 'ok', 'missing' (tombstone still set) or 'conflict'.
REMOVE_ENTRY = Script(
    "remove_entry",
    (*_DEFINITION_AND_STATE, "meta"),
    _NOW
    + _VERSION
    + """
local name = ARGV[2]
local ver = version_of(redis.call('HGET', KEYS[1], name))
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= ver then return {'conflict', ver} end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], name, now) end
if ver < 0 then return {'missing', ver} end
for i = 1, 8 do
  if i ~= 3 then redis.call('HDEL', KEYS[i], name) end
end
redis.call('HINCRBY', KEYS[9], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
""",
)

# Erases every trace of an entry: definition, state, last publish error, tombstone, unsent
# claims and run-now requests. (Per-tick locks expire on their own after dcron_lock_ttl.)
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, pending,
#       requests, meta
# ARGV: channel, name
# Returns the number of fields removed.
CLEANUP = Script(
    "cleanup",
    (*_DEFINITION_AND_STATE, "pending", "requests", "meta"),
    """
local name = ARGV[2]
local n = 0
for i = 1, 8 do n = n + redis.call('HDEL', KEYS[i], name) end
for i = 9, 10 do
  for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
    local c = string.find(f, ':', 1, true)
    if c and string.sub(f, c + 1) == name then n = n + redis.call('HDEL', KEYS[i], f) end
  end
end
redis.call('HINCRBY', KEYS[11], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return n
""",
)

# Starts an entry afresh: anchor at now (server time, on the entry's grid), no last
# tick, no runs, no last publish error.
# KEYS: entries, anchor, last, runs, lastnode, errors, meta
# ARGV: channel, name, every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns 1, or 0 when there is no such entry.
RESET = Script(
    "reset",
    ("entries", "anchor", "last", "runs", "lastnode", "errors", "meta"),
    _NOW
    + _ANCHOR
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], anchor_at(ARGV[3], ARGV[4]))
for i = 3, 6 do redis.call('HDEL', KEYS[i], ARGV[2]) end
redis.call('HINCRBY', KEYS[7], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
""",
)

# Sets or clears the cluster-wide pause; heartbeats return it.
# KEYS: meta
# ARGV: channel, paused ('1'|'0')
# Returns 1.
SET_PAUSED = Script(
    "set_paused",
    ("meta",),
    """
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
else
  redis.call('HDEL', KEYS[1], 'paused')
end
redis.call('HINCRBY', KEYS[1], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
""",
)


# -- claims -----------------------------------------------------------------------

# Claim i wins iff tick > last tick (and, to fire, runs < max_runs and the per-tick
# lock is free); winning advances last (and runs, lastnode, pending when firing).
# A retried call (reply lost) is idempotent: our own pending claim counts as won.
# KEYS: last, runs, lastnode, pending, then lock_1, ..., lock_n (one per claim)
# ARGV: node_id, lock_ttl_ms, then per claim i: name, tick_ms, fire (0|1), max_runs (0 = none)
# Returns per claim {won (0|1), last_tick (-1 = none), runs}.
CLAIM = Script(
    "claim",
    ("last", "runs", "lastnode", "pending"),
    """
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
""",
)

# Takes over claims that were never marked sent: ours (a retry), or those of a
# node that is no longer alive.
# KEYS: pending, alive, then lock_1, ..., lock_n (one per field)
# ARGV: node_id, lock_ttl_ms, field_1, ..., field_n ("<tick_ms>:<name>")
# Returns per field 1 (ours now) or 0.
RETAKE = Script(
    "retake",
    ("pending", "alive"),
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
""",
)


# Forgets the pending claims of published ticks, and clears the last publish error of
# their entries unless it is newer than the tick sent (or unreadable: then it goes too).
# KEYS: pending, errors
# ARGV: per tick i: name, tick_ms
# Returns 1.
MARK_SENT = Script(
    "mark_sent",
    ("pending", "errors"),
    """
for i = 1, #ARGV - 1, 2 do
  local name, tick = ARGV[i], ARGV[i + 1]
  redis.call('HDEL', KEYS[1], tick .. ':' .. name)
  local err = redis.call('HGET', KEYS[2], name)
  if err then
    local ok, data = pcall(cjson.decode, err)
    local at = ok and type(data) == 'table' and tonumber(data['tick_ms'])
    if not at or at <= tonumber(tick) then redis.call('HDEL', KEYS[2], name) end
  end
end
return 1
""",
)

# Finishes ticks whose publish can never succeed: forgets their pending claims and keeps
# each one as its entry's last error (a later call replaces it).
# KEYS: pending, errors
# ARGV: per tick i: name, tick_ms ('' for a run-now request: it has no claim), record JSON
# Returns 1.
REJECT = Script(
    "reject",
    ("pending", "errors"),
    """
for i = 1, #ARGV - 2, 3 do
  local name, tick = ARGV[i], ARGV[i + 1]
  if tick ~= '' then redis.call('HDEL', KEYS[1], tick .. ':' .. name) end
  redis.call('HSET', KEYS[2], name, ARGV[i + 2])
end
return 1
""",
)


# -- run-now requests -------------------------------------------------------------

# Records a run-now request at the server time; the entry's owner takes it.
# KEYS: entries, requests, meta
# ARGV: channel, name
# Returns the request time (ms), or -1 when there is no such entry.
RUN_NOW = Script(
    "run_now",
    ("entries", "requests", "meta"),
    _NOW
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return -1 end
redis.call('HSETNX', KEYS[2], now .. ':' .. ARGV[2], '')
redis.call('HINCRBY', KEYS[3], 'entries', 1)
redis.call('PUBLISH', ARGV[1], 'entries')
return now
""",
)

# Takes run-now requests: a waiting one (""), our own (a retry), or one whose taker is
# no longer alive. Exactly one node takes a request.
# KEYS: requests, alive
# ARGV: node_id, field_1, ..., field_n ("<request_ms>:<name>")
# Returns per field 1 (ours) or 0.
TAKE_REQUESTS = Script(
    "take_requests",
    ("requests", "alive"),
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
""",
)

#: Every script, in the order :meth:`Transport.load_scripts
#: <celery_dcron.registry.transport.Transport.load_scripts>` loads them.
ALL: tuple[Script, ...] = (
    HEARTBEAT, JOIN, LEAVE, SYNC_STATIC, CLAIM, RETAKE, MARK_SENT, REJECT, PUT_ENTRY, REMOVE_ENTRY,
    CLEANUP, RESET, SET_PAUSED, RUN_NOW, TAKE_REQUESTS, TIME,
)  # fmt: skip
