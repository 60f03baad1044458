"""Entry scripts: static sync, dynamic writes, removal, reset, pause."""

from __future__ import annotations

from ..keys import KeyName
from .base import _ANCHOR, _FEED, _NOW, _VERSION, Script

__all__ = ["CLEANUP", "PUT_ENTRY", "REMOVE_ENTRY", "RESET", "SET_PAUSED", "SYNC_STATIC"]


# -- entries ----------------------------------------------------------------------
# Every write records which entry changed in the change feed (bumping the entries
# version) and publishes "entries", so that the entry's owner applies it.

# The keys holding an entry's definition and run state (and its last publish error):
# REMOVE_ENTRY and CLEANUP clear KEYS[1..8] (REMOVE_ENTRY keeps the tombstone, KEYS[3]).
_DEFINITION_AND_STATE: tuple[KeyName, ...] = (
    "entries", "static", "tombstones", "anchor", "last", "runs", "lastnode", "errors",
)  # fmt: skip

# Writes the static entries of one beat_schedule in one step: a tombstoned name or
# a dynamic entry of the same name is left alone (reported); static entries no
# longer in the schedule are removed; anchors are set once (HSETNX, on the entry's grid).
# KEYS: entries, static, tombstones, anchor, meta, feed
# ARGV: channel, n, then per entry i: name, json, every_ms (0 = not an interval), phase_ms
# Returns {changed, name, reason, name, reason, ...}.
SYNC_STATIC = Script(
    "sync_static",
    ("entries", "static", "tombstones", "anchor", "meta", "feed"),
    _NOW
    + _ANCHOR
    + _FEED
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
      feed(5, 6, name, 'put')
      changed = changed + 1
    end
    redis.call('HSETNX', KEYS[4], name, anchor_at(ARGV[b + 2], ARGV[b + 3]))
  end
end
for _, name in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not keep[name] then
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[1], name)
    feed(5, 6, name, 'del')
    changed = changed + 1
  end
end
if changed > 0 then
  redis.call('PUBLISH', ARGV[1], 'entries')
end
table.insert(out, 1, changed)
return out
""",
)

# Compare-and-set of one entry definition; sets the anchor once (HSETNX, server time on
# the entry's grid).
# KEYS: entries, static, tombstones, anchor, meta, feed
# ARGV: channel, name, json, expected ('' = must not exist, else the current version),
#       force ('1' = write over a tombstone or a static entry, and drop both marks),
#       every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns {status, current version}: status 'ok', 'exists', 'missing', 'conflict',
# 'tombstoned' or 'static' (a new dynamic entry may not take a static entry's name).
PUT_ENTRY = Script(
    "put_entry",
    ("entries", "static", "tombstones", "anchor", "meta", "feed"),
    _NOW
    + _ANCHOR
    + _VERSION
    + _FEED
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
feed(5, 6, name, 'put')
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
""",
)

# Removes the definition and run state; with tombstone, records the deletion time so
# that re-adding the name (also from a static beat_schedule) is refused.
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, meta, feed
# ARGV: channel, name, tombstone ('1'|'0'), expected ('' = any version)
# Returns {status, current version}: 'ok', 'missing' (tombstone still set) or 'conflict'.
REMOVE_ENTRY = Script(
    "remove_entry",
    (*_DEFINITION_AND_STATE, "meta", "feed"),
    _NOW
    + _VERSION
    + _FEED
    + """
local name = ARGV[2]
local ver = version_of(redis.call('HGET', KEYS[1], name))
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= ver then return {'conflict', ver} end
if ARGV[3] == '1' then redis.call('HSET', KEYS[3], name, now) end
if ver < 0 then return {'missing', ver} end
for i = 1, 8 do
  if i ~= 3 then redis.call('HDEL', KEYS[i], name) end
end
feed(9, 10, name, 'del')
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
""",
)

# Erases every trace of an entry: definition, state, last publish error, tombstone, unsent
# claims and run-now requests. (Per-tick locks expire on their own after dcron_lock_ttl.)
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, pending,
#       requests, meta, feed
# ARGV: channel, name
# Returns the number of fields removed.
CLEANUP = Script(
    "cleanup",
    (*_DEFINITION_AND_STATE, "pending", "requests", "meta", "feed"),
    _FEED
    + """
local name = ARGV[2]
local n = 0
for i = 1, 8 do n = n + redis.call('HDEL', KEYS[i], name) end
for i = 9, 10 do
  for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
    local c = string.find(f, ':', 1, true)
    if c and string.sub(f, c + 1) == name then n = n + redis.call('HDEL', KEYS[i], f) end
  end
end
feed(11, 12, name, 'del')
redis.call('PUBLISH', ARGV[1], 'entries')
return n
""",
)

# Starts an entry afresh: anchor at now (server time, on the entry's grid), no last
# tick, no runs, no last publish error.
# KEYS: entries, anchor, last, runs, lastnode, errors, meta, feed
# ARGV: channel, name, every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns 1, or 0 when there is no such entry.
RESET = Script(
    "reset",
    ("entries", "anchor", "last", "runs", "lastnode", "errors", "meta", "feed"),
    _NOW
    + _ANCHOR
    + _FEED
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], anchor_at(ARGV[3], ARGV[4]))
for i = 3, 6 do redis.call('HDEL', KEYS[i], ARGV[2]) end
feed(7, 8, ARGV[2], 'state')
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
""",
)

# Sets or clears the cluster-wide pause; heartbeats return it.
# KEYS: meta, feed
# ARGV: channel, paused ('1'|'0')
# Returns 1.
SET_PAUSED = Script(
    "set_paused",
    ("meta", "feed"),
    _FEED
    + """
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'paused', '1')
else
  redis.call('HDEL', KEYS[1], 'paused')
end
feed(1, 2, '', 'pause')
redis.call('PUBLISH', ARGV[1], 'entries')
return 1
""",
)
