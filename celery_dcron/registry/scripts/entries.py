"""Entry scripts: static sync, dynamic writes, removal, reset, pause."""

from __future__ import annotations

from ...ticks import FOLD_MS
from ..keys import KeyName
from .base import _ANCHOR, _FEED, _FIRST_DUE, _NOW, _VERSION, FEED_MAXLEN, Script

__all__ = [
    "CLEANUP", "DROP_STATIC", "PUT_ENTRIES", "PUT_ENTRIES_MAX", "PUT_ENTRIES_MAX_BYTES",
    "PUT_ENTRY", "REMOVE_ENTRY", "RESET", "SET_DUE", "SET_DUE_MAX", "SET_PAUSED", "SYNC_STATIC",
]  # fmt: skip


# -- entries ----------------------------------------------------------------------
# Every write records which entry changed in the change feed (bumping the entries
# version) and publishes "entries", so that the entry's owner applies it.

# The keys holding an entry's definition and run state (and its last publish error):
# REMOVE_ENTRY and CLEANUP clear KEYS[1..8] (REMOVE_ENTRY keeps the tombstone, KEYS[3]).
_DEFINITION_AND_STATE: tuple[KeyName, ...] = (
    "entries", "static", "tombstones", "anchor", "last", "runs", "lastnode", "errors",
)  # fmt: skip

# Writes static entries of one beat_schedule, all of it or a page: a tombstoned name or
# a dynamic entry of the same name is left alone (reported); anchors are set once
# (HSETNX, on the entry's grid). With final '1' (the whole schedule), the static entries
# it does not list are then removed (a schedule written in pages: DROP_STATIC).
# KEYS: entries, static, tombstones, anchor, meta, feed, due
# ARGV: channel, n, then per entry i: name, json, every_ms (0 = not an interval),
#       phase_ms; then final ('1' | '0')
# Returns {changed, name, reason, name, reason, ...}.
SYNC_STATIC = Script(
    "sync_static",
    ("entries", "static", "tombstones", "anchor", "meta", "feed", "due"),
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
      feed(5, 6, name, 'put', 7)
      changed = changed + 1
    end
    redis.call('HSETNX', KEYS[4], name, anchor_at(ARGV[b + 2], ARGV[b + 3]))
  end
end
for _, name in ipairs(ARGV[3 + 4 * n] == '1' and redis.call('HKEYS', KEYS[2]) or {}) do
  if not keep[name] then
    redis.call('HDEL', KEYS[2], name)
    redis.call('HDEL', KEYS[1], name)
    feed(5, 6, name, 'del', 7)
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

# Removes static entries no longer in the beat_schedule (a schedule written in pages
# finds them with HSCAN): each name that is still a static entry.
# KEYS: entries, static, meta, feed, due
# ARGV: channel, names...
# Returns how many were removed.
DROP_STATIC = Script(
    "drop_static",
    ("entries", "static", "meta", "feed", "due"),
    _FEED
    + """
local changed = 0
for i = 2, #ARGV do
  local name = ARGV[i]
  if redis.call('HDEL', KEYS[2], name) == 1 then
    redis.call('HDEL', KEYS[1], name)
    feed(3, 4, name, 'del', 5)
    changed = changed + 1
  end
end
if changed > 0 then redis.call('PUBLISH', ARGV[1], 'entries') end
return changed
""",
)

# Compare-and-set of one entry definition; sets the anchor once (HSETNX, server time on
# the entry's grid), and its due time (0, or first_due when it anchors it).
# KEYS: entries, static, tombstones, anchor, meta, feed, due, last
# ARGV: channel, name, json, expected ('' = must not exist, else the current version),
#       force ('1' = write over a tombstone or a static entry, and drop both marks),
#       every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns {status, current version}: status 'ok', 'exists', 'missing', 'conflict',
# 'tombstoned' or 'static' (a new dynamic entry may not take a static entry's name).
PUT_ENTRY = Script(
    "put_entry",
    ("entries", "static", "tombstones", "anchor", "meta", "feed", "due", "last"),
    _NOW
    + _ANCHOR
    + _VERSION
    + _FEED
    + _FIRST_DUE
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
local anchor = anchor_at(ARGV[6], ARGV[7])
local anchored = redis.call('HSETNX', KEYS[4], name, anchor)
if redis.call('HEXISTS', KEYS[8], name) == 1 then anchored = 0 end  -- a claim outlived it
feed(5, 6, name, 'put', 7)
local first = first_due(anchored, anchor, ARGV[6], ARGV[3])
if first > 0 then redis.call('ZADD', KEYS[7], first, name) end
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
""",
)

#: The most entries one PUT_ENTRIES call takes, and the most bytes of entry JSON: a few ms
#: of Redis time (an entry costs a few µs inside the script, most of it the feed record;
#: large entries, their size), so that a bulk write never blocks Redis (heartbeats,
#: claims) for long. Callers send several calls per round trip.
PUT_ENTRIES_MAX = 500
PUT_ENTRIES_MAX_BYTES = 512 * 1024

# Many PUT_ENTRY writes in one call, each on its own as PUT_ENTRY (without force) makes
# it, in order: a tombstoned or static name is refused (also when replacing); the anchor
# is set once (HSETNX, server time on the entry's grid); one feed record per entry
# written (as _FEED's ``feed`` records it: the entries version is bumped once per record,
# in one HINCRBY, and the stream trimmed once, at the end); one PUBLISH for the whole
# call. An entry named twice sees the first write. Each entry written gets due time 0
# (unknown until its owner computes it: keys.py), or, anchored by this call (and without
# a last tick), the first_due of its anchor, else its row's first tick bound.
# KEYS: entries, static, tombstones, anchor, meta, feed, due, last
# ARGV: channel, since, rows, texts. since: the server time ('' = none) the rows' first
#       tick bounds count from; they are used only if the server's time now is not
#       earlier (its clock stepped back, or another server answers since: they may be
#       late), nor FOLD_MS later (ticks.py: they hold for anchors within it). rows: a
#       JSON array (cjson), 6 values per entry: name, the length in bytes of its JSON,
#       expected (the current version, -1 = must not exist, -2 = create or overwrite:
#       its JSON is at version 1, ending in '"version": 1}', and an overwrite writes it
#       at the stored version + 1, in place of that 1; refused as 'conflict' when that
#       would take more than 15 digits), every_ms, phase_ms (the
#       interval grid; every_ms 0 = not an interval), and a lower bound of its first
#       tick if this call anchors it (0 = unknown: a cron or one-off entry's first tick
#       after since). texts: the entries' JSON, one after the other (not escaped again
#       inside rows: half the bytes to decode). At most PUT_ENTRIES_MAX entries (and
#       about PUT_ENTRIES_MAX_BYTES of JSON).
# Returns {written, i, status, version, i, status, version, ...}: how many entries were
# written, then each entry refused: its position in rows (1-based), its status as
# PUT_ENTRY returns it ('exists', 'missing', 'conflict', 'tombstoned' or 'static') and
# the current version; then, if entries given with expected -2 were overwritten, one
# more triple: 0, 'ok', and "i:version,i:version,..." (their positions in rows, 1-based,
# and the versions written; one string: a reply element costs the client more than the
# script). An entry not listed was written at the version its JSON holds.
PUT_ENTRIES = Script(
    "put_entries",
    ("entries", "static", "tombstones", "anchor", "meta", "feed", "due", "last"),
    _NOW
    + _ANCHOR
    + _VERSION
    + _FIRST_DUE
    + """
local since = tonumber(ARGV[2])
local bounded = since ~= nil and now >= since and now - since < {fold}
local rows = cjson.decode(ARGV[3])
local blob = ARGV[4]
local n = #rows / 6
if n == 0 then return {0} end
local names = {}
for i = 1, n do names[i] = rows[6 * i - 5] end
local stored = redis.call('HMGET', KEYS[1], unpack(names))
local static = redis.call('HMGET', KEYS[2], unpack(names))
local tombs = redis.call('HMGET', KEYS[3], unpack(names))
local anchors = redis.call('HMGET', KEYS[4], unpack(names))
local lasts = redis.call('HMGET', KEYS[8], unpack(names))
local out, o = {0}, 1       -- the reply, and its length
local renumbered, r = {}, 0 -- "i:version" of each entry overwritten with expected -2
local texts = {}            -- name -> json written by this call (a name given twice sees it)
local puts, p = {}, 0       -- HSET entries: name, json, ...
local marks, m = {}, 0      -- HSET anchor: name, anchor, ... (the names without an anchor)
local anchored = {}         -- names given an anchor by this call
local fed, f = {}, 0        -- the names written, in order: one feed record each
local dues = {}             -- ZADD due: 0, name, ...
local at = 1                -- where the next entry's JSON starts in blob
for i = 1, n do
  local b = 6 * i - 5
  local name, size, expected = rows[b], rows[b + 1], rows[b + 2]
  local text = string.sub(blob, at, at + size - 1)
  at = at + size
  local ver = version_of(texts[name] or stored[i])
  local status = nil
  if tombs[i] then status = 'tombstoned'
  elseif static[i] then status = 'static'
  elseif expected == -2 then
    if ver >= 1e15 - 1 then  -- past the 15 digits a Lua number numbers exactly
      status = 'conflict'
    elseif ver >= 0 then  -- an overwrite: the text (at version 1) at the next version
      local v = string.format('%d', ver + 1)
      text = string.sub(text, 1, -3) .. v .. '}'
      r = r + 1
      renumbered[r] = i .. ':' .. v
    end
  elseif expected < 0 then
    if ver >= 0 then status = 'exists' end
  elseif ver < 0 then status = 'missing'
  elseif expected ~= ver then status = 'conflict'
  end
  if status then
    out[o + 1], out[o + 2], out[o + 3] = i, status, ver
    o = o + 3
  else
    texts[name] = text
    puts[p + 1], puts[p + 2] = name, text
    p = p + 2
    f = f + 1
    fed[f] = name
    dues[2 * f - 1], dues[2 * f] = 0, name
    if not anchors[i] and not anchored[name] then
      local anchor = anchor_at(rows[b + 3], rows[b + 4])
      anchored[name] = true
      marks[m + 1], marks[m + 2] = name, anchor
      m = m + 2
      if not lasts[i] then
        local first = first_due(1, anchor, rows[b + 3], text)
        if first == 0 and bounded then first = rows[b + 5] end
        dues[2 * f - 1] = first
      end
    end
  end
end
if r > 0 then out[o + 1], out[o + 2], out[o + 3] = 0, 'ok', table.concat(renumbered, ',') end
if f == 0 then return out end
redis.call('HSET', KEYS[1], unpack(puts))
if m > 0 then redis.call('HSET', KEYS[4], unpack(marks)) end
redis.call('ZADD', KEYS[7], unpack(dues))
local seq = redis.call('HINCRBY', KEYS[5], 'entries', f) - f
for j = 1, f do redis.call('XADD', KEYS[6], '*', 'n', fed[j], 'k', 'put', 's', seq + j) end
redis.call('XTRIM', KEYS[6], 'MAXLEN', '~', {maxlen})
redis.call('PUBLISH', ARGV[1], 'entries')
out[1] = f
return out
""".replace("{maxlen}", str(FEED_MAXLEN)).replace("{fold}", str(FOLD_MS)),
)

# Removes the definition and run state; with tombstone, records the deletion time so
# that re-adding the name (also from a static beat_schedule) is refused.
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, meta, feed, due
# ARGV: channel, name, tombstone ('1'|'0'), expected ('' = any version)
# Returns {status, current version}: 'ok', 'missing' (tombstone still set) or 'conflict'.
REMOVE_ENTRY = Script(
    "remove_entry",
    (*_DEFINITION_AND_STATE, "meta", "feed", "due"),
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
feed(9, 10, name, 'del', 11)
redis.call('PUBLISH', ARGV[1], 'entries')
return {'ok', ver}
""",
)

# Erases every trace of an entry: definition, state, last publish error, tombstone, unsent
# claims and run-now requests. (Per-tick locks expire on their own after dcron_lock_ttl.)
# KEYS: entries, static, tombstones, anchor, last, runs, lastnode, errors, pending,
#       requests, meta, feed, due
# ARGV: channel, name
# Returns the number of fields removed.
CLEANUP = Script(
    "cleanup",
    (*_DEFINITION_AND_STATE, "pending", "requests", "meta", "feed", "due"),
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
feed(11, 12, name, 'del', 13)
redis.call('PUBLISH', ARGV[1], 'entries')
return n
""",
)

# Starts an entry afresh: anchor at now (server time, on the entry's grid), no last
# tick, no runs, no last publish error.
# KEYS: entries, anchor, last, runs, lastnode, errors, meta, feed, due
# ARGV: channel, name, every_ms, phase_ms (the interval grid; every_ms 0 = not an interval)
# Returns 1, or 0 when there is no such entry.
RESET = Script(
    "reset",
    ("entries", "anchor", "last", "runs", "lastnode", "errors", "meta", "feed", "due"),
    _NOW
    + _ANCHOR
    + _FEED
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], anchor_at(ARGV[3], ARGV[4]))
for i = 3, 6 do redis.call('HDEL', KEYS[i], ARGV[2]) end
feed(7, 8, ARGV[2], 'state', 9)
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

# -- the due index ------------------------------------------------------------------
# (keys.py: entry name -> the earliest its next tick can be.) Entry writes set 0 (in
# ``feed``); an entry's owner writes the next tick it computed.

#: The most entries one SET_DUE call takes (~1 µs of Redis time each).
SET_DUE_MAX = 2_000

# Sets the due times of entries that still exist (a name removed meanwhile is not put
# back in the index): one HMGET, one ZADD.
# KEYS: entries, due
# ARGV: name, ms, name, ms, ... (at most SET_DUE_MAX pairs)
# Returns how many were set.
SET_DUE = Script(
    "set_due",
    ("entries", "due"),
    """
local names = {}
for i = 1, #ARGV, 2 do names[#names + 1] = ARGV[i] end
if #names == 0 then return 0 end
local found = redis.call('HMGET', KEYS[1], unpack(names))
local adds, n = {}, 0
for i = 1, #names do
  if found[i] then
    adds[2 * n + 1], adds[2 * n + 2] = ARGV[2 * i], names[i]
    n = n + 1
  end
end
if n > 0 then redis.call('ZADD', KEYS[2], unpack(adds)) end
return n
""",
)
