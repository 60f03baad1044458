"""Membership scripts: join, heartbeat, leave, the server clock."""

from __future__ import annotations

from .base import _NOW, Script

__all__ = ["EXPIRE_CRASHED", "HEARTBEAT", "JOIN", "LEAVE", "TIME"]


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

# The full heartbeat (light ones: NodeStore.touch). Expires dead nodes, refreshes this
# node, bumps the membership version (and publishes "members") when the live set or a
# status changed. Writes the node record and status only when the record changed (the
# record's heartbeat time stays put: readers take the expiry in ``alive`` less the
# record's ttl_ms), so a heartbeat that changes nothing runs 5 commands: TIME, ZRANGE,
# HGET, ZADD, HMGET.
# Sets the namespace's epoch (server time) if it has none: a Redis that lost its data
# has a new one, whatever its versions have climbed back to.
# A heartbeat whose token is not the one of the node record stored under its id
# writes nothing and says so: another incarnation took the id over (JOIN), and this
# one must stop (two live processes under one id would re-publish each other's claims).
# KEYS: nodes, status, alive, meta
# ARGV: node_id, node_json, status, ttl_ms, channel, token ("": not checked)
# Returns {server_s, server_us, members_version, entries_version, paused (0|1), epoch,
# reset (ms, or nil on data that was never rebuilt after a loss), the earliest heartbeat
# expiry of another node (ms, or nil when alone), superseded (0|1), the live nodes
# {id, expiry, id, expiry, ...} (this one included unless superseded)}.
HEARTBEAT = Script(
    "heartbeat",
    ("nodes", "status", "alive", "meta"),
    _NOW
    + _TOKEN
    + """
local me = ARGV[1]
local changed = 0
local present = false
local peer = false
local live = {}
local scores = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #scores, 2 do
  local id, exp = scores[i], scores[i + 1]
  if tonumber(exp) <= now then
    if id ~= me then
      redis.call('ZREM', KEYS[3], id)
      redis.call('HDEL', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
    end
    changed = 1
  elseif id == me then
    present = true
  else
    if not peer then peer = exp end
    live[#live + 1] = id
    live[#live + 1] = exp
  end
end
local superseded = 0
local rec = redis.call('HGET', KEYS[1], me)
if ARGV[6] ~= '' then
  local held = token_of(rec)
  if held ~= '' and held ~= ARGV[6] then superseded = 1 end
end
if superseded == 0 then
  if rec ~= ARGV[2] then
    if redis.call('HGET', KEYS[2], me) ~= ARGV[3] then changed = 1 end
    redis.call('HSET', KEYS[1], me, ARGV[2])
    redis.call('HSET', KEYS[2], me, ARGV[3])
  end
  if not present then changed = 1 end
  local expiry = now + tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], expiry, me)
  live[#live + 1] = me
  live[#live + 1] = expiry
end
if changed == 1 then
  redis.call('HINCRBY', KEYS[4], 'members', 1)
  redis.call('PUBLISH', ARGV[5], 'members')
end
local m = redis.call('HMGET', KEYS[4], 'members', 'entries', 'paused', 'epoch', 'reset')
if not m[4] then
  m[4] = t[1] .. '.' .. t[2]
  redis.call('HSET', KEYS[4], 'epoch', m[4])
end
return {t[1], t[2], m[1] or '0', m[2] or '0', m[3] or '0', m[4], m[5], peer, superseded, live}
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

# Crash detection (celery_dcron/crashes.py): takes for dead each node given (the caller
# found no subscriber on its node channel: its process closed its connections) that is
# also overdue on the server clock: its last heartbeat (its expiry less the record's
# ttl_ms) is older than the record's watch_ms (its heartbeat interval) plus grace_ms. A
# node whose record has no watch_ms (it holds no node channel) is left to its TTL. Each
# one taken gets the expiry now, read and written in this one step (a heartbeat since
# the check moved it: not overdue, not taken); the caller's full heartbeat (HEARTBEAT)
# then forgets it and publishes "members".
# KEYS: nodes, alive
# ARGV: grace_ms, node_id, node_id, ...
# Returns {the ids taken for dead, the least ms until another of them becomes overdue
# (nil when none will: no record, no watch_ms, or expired)}.
EXPIRE_CRASHED = Script(
    "expire_crashed",
    ("nodes", "alive"),
    _NOW
    + """
local grace = tonumber(ARGV[1])
local out = {}
local soonest = false
for i = 2, #ARGV do
  local id = ARGV[i]
  local exp = tonumber(redis.call('ZSCORE', KEYS[2], id))
  local rec = redis.call('HGET', KEYS[1], id)
  if exp and rec and exp > now then
    local ok, data = pcall(cjson.decode, rec)
    if ok and type(data) == 'table' then
      local watch = tonumber(data['watch_ms']) or 0
      local ttl = tonumber(data['ttl_ms'])
      if watch > 0 and ttl then
        local wait = (exp - ttl) + watch + grace - now
        if wait < 0 then
          redis.call('ZADD', KEYS[2], 'XX', now, id)
          out[#out + 1] = id
        elseif not soonest or wait < soonest then
          soonest = wait
        end
      end
    end
  end
end
return {out, soonest}
""",
)

# KEYS: meta (not read: it routes the call to the namespace's node on Redis Cluster)
# ARGV: none
# Returns the server's TIME {seconds, microseconds}: the cluster clock (G7).
TIME = Script("time", ("meta",), "return redis.call('TIME')")
