"""Claim scripts: claim, retake, mark sent, reject; run-now requests."""

from __future__ import annotations

from .base import _FEED, _NOW, Script

# Defines ``sent(name, tick)`` for MARK_SENT and ENQUEUE (KEYS[1] pending, KEYS[2]
# errors): forgets the pending claim of a tick sent, and clears the entry's last publish
# error unless it is newer than the tick (or unreadable: then it goes too). Errors are
# rare: they are looked up per tick only when there is one at all.
_SENT = """
local any_error = redis.call('EXISTS', KEYS[2]) == 1
local function sent(name, tick)
  redis.call('HDEL', KEYS[1], tick .. ':' .. name)
  local err = any_error and redis.call('HGET', KEYS[2], name)
  if err then
    local ok, data = pcall(cjson.decode, err)
    local at = ok and type(data) == 'table' and tonumber(data['tick_ms'])
    if not at or at <= tonumber(tick) then redis.call('HDEL', KEYS[2], name) end
  end
end
"""

# Defines ``push(first, n)`` and ``send_each(pushed)`` for ENQUEUE and ENQUEUE_REQUESTS.
# push runs the n broker commands of one message, from ARGV[first] on, 3 values each: op
# ('lpush' | 'pexpire' | 'publish'), target (the key's index in KEYS; for 'publish' the
# channel), value (the message; for 'pexpire' the ms); it returns 1, or the text of the
# first error (the commands before it ran: a Lua script is not rolled back).
_PUSH = """
local function push(first, n)
  for j = first, first + 3 * n - 1, 3 do
    local op, target, value = ARGV[j], ARGV[j + 1], ARGV[j + 2]
    local r
    if op == 'lpush' then
      r = redis.pcall('LPUSH', KEYS[tonumber(target)], value)
    elseif op == 'pexpire' then
      r = redis.pcall('PEXPIRE', KEYS[tonumber(target)], value)
    elseif op == 'publish' then
      r = redis.pcall('PUBLISH', target, value)
    else
      r = {err = 'unknown broker command ' .. op}
    end
    if type(r) == 'table' and r['err'] then return r['err'] end
  end
  return 1
end

-- ARGV: node_id, then per message: name, at, n, then its n commands. Pushes each message
-- whose field "<at>:<name>" in KEYS[1] holds node_id, then calls pushed(name, at); per
-- message 1 (pushed), 0 (not held by node_id) or the error's text.
local function send_each(pushed)
  local out = {}
  local i = 2
  while i <= #ARGV do
    local name, at, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local result = 0
    if redis.call('HGET', KEYS[1], at .. ':' .. name) == ARGV[1] then
      result = push(i + 3, n)
      if result == 1 then pushed(name, at) end
    end
    out[#out + 1] = result
    i = i + 3 + 3 * n
  end
  return out
end
"""

__all__ = [
    "CLAIM", "ENQUEUE", "ENQUEUE_REQUESTS", "MARK_SENT", "REJECT", "RETAKE", "RUN_NOW",
    "TAKE_REQUESTS",
]  # fmt: skip


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
    _SENT
    + """
for i = 1, #ARGV - 1, 2 do
  sent(ARGV[i], ARGV[i + 1])
end
return 1
""",
)

# Sends claimed ticks when the broker is this Redis: for each tick whose pending claim
# this node holds, runs the broker commands of its message (kombu's Redis transport:
# LPUSH onto the queue list, PEXPIRE of a queue with x-expires, PUBLISH for a fanout)
# and forgets the claim (clearing the entry's last publish error as MARK_SENT does),
# atomically: a tick's message is pushed only while its claim is pending, and its claim
# stops being pending as it is pushed, so no crash, freeze or retry can push it twice.
# A tick whose claim is gone (sent) or held by another node is not pushed. A command
# Redis refuses (WRONGTYPE, OOM) leaves its tick pending and is returned as its result.
# KEYS: pending, errors, then the queue keys of the messages (each once)
# ARGV: node_id, then per tick: name, tick_ms, n, then n commands: op ('lpush' |
#   'pexpire' | 'publish'), target (the key's index in KEYS; for 'publish' the channel),
#   value (the message; for 'pexpire' the ms)
# Returns per tick 1 (pushed), 0 (not this node's pending claim), or the error's text.
ENQUEUE = Script(
    "enqueue",
    ("pending", "errors"),
    _SENT
    + _PUSH
    + """
return send_each(sent)
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
# KEYS: entries, requests, meta, feed
# ARGV: channel, name
# Returns the request time (ms), or -1 when there is no such entry.
RUN_NOW = Script(
    "run_now",
    ("entries", "requests", "meta", "feed"),
    _NOW
    + _FEED
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return -1 end
redis.call('HSETNX', KEYS[2], now .. ':' .. ARGV[2], '')
feed(3, 4, ARGV[2], 'run')
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

# Sends run-now requests when the broker is this Redis, as ENQUEUE sends ticks: for each
# request this node took (TAKE_REQUESTS), runs the broker commands of its message and
# forgets the request, atomically: a request's message is pushed only while the request
# is held by this node, and the request is gone as it is pushed, so no crash, freeze or
# retry (by this node, or by the one that takes it over) can push it twice. A request
# that is gone (sent) or held by another node is not pushed; a command Redis refuses
# leaves its request held (retried) and is returned as its result.
# KEYS: requests, then the queue keys of the messages (each once)
# ARGV: node_id, then per request: name, request_ms, n, then n commands (as ENQUEUE)
# Returns per request 1 (pushed), 0 (not held by this node), or the error's text.
ENQUEUE_REQUESTS = Script(
    "enqueue_requests",
    ("requests",),
    _PUSH
    + """
return send_each(function(name, at) redis.call('HDEL', KEYS[1], at .. ':' .. name) end)
""",
)
