"""Read-only scripts: the owned entries' definitions and states, packed in one reply."""

from __future__ import annotations

from .base import Script

__all__ = ["LOAD", "LOAD_SEP"]

#: Separates the fields of :data:`LOAD`'s reply (ASCII unit separator: JSON text escapes
#: every control character, so no stored definition written by this package holds one).
LOAD_SEP = "\x1f"

# The definitions and run states of some entries, as one string: redis-py parses a reply
# of thousands of bulk strings one by one in Python (several µs each), one string at once.
# Per name: its definition, anchor, last tick, run count and time in the due index
# (keys.py), '' where absent, all joined by \31. A definition holding \31 itself (not
# written by this package) is sent as \30, which the reader takes for malformed.
# With ARGV[1] 'r' instead: one field per name, its last tick, or '' (never run).
# With 's': four fields per name, what tells when it is due without reading it whole:
# the JSON text of its schedule (the object after '"schedule": ') and its start_ms (the
# number after '"start_ms": '), both '' unless found for sure (each key at most once, the
# schedule there, no \31 in the text: as entrytext.due_fields), then its anchor and last
# tick; '' where absent.
# KEYS: entries, anchor, last, runs, due
# ARGV: '1' (definitions, states, due times), 'r' (last ticks) or 's' (due hints), then the
#       names
LOAD = Script(
    "load",
    ("entries", "anchor", "last", "runs", "due"),
    """
local n = #ARGV - 1
if n < 1 then return '' end
-- HMGET of the names in slices: unpack() of more than ~8,000 values fails
local function hmget(k)
  local out = {}
  for i = 2, #ARGV, 4000 do
    local part = redis.call('HMGET', KEYS[k], unpack(ARGV, i, math.min(i + 3999, #ARGV)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
if ARGV[1] == 'r' then
  local last = hmget(3)
  local out = {}
  for i = 1, n do out[i] = last[i] or '' end
  return table.concat(out, '\\31')
end
local texts = hmget(1)
local anchor = hmget(2)
local last = hmget(3)
if ARGV[1] == 's' then
  -- what follows key in text, read by pattern: '' if key is not there, or nothing read;
  -- false if key is there more than once
  local function once(text, key, pattern)
    local _, e = string.find(text, key, 1, true)
    if not e then return '' end
    if string.find(text, key, e + 1, true) then return false end
    return string.match(text, pattern, e + 1) or ''
  end
  local out = {}
  for i = 1, n do
    local text = texts[i]
    local j = 4 * (i - 1)
    local sched, start = '', ''
    if text and not string.find(text, '\\31', 1, true) then
      sched = once(text, '"schedule": ', '^%b{}')
      start = once(text, '"start_ms": ', '^%-?%d+')
      if sched == false or start == false or sched == '' then sched, start = '', '' end
    end
    out[j + 1], out[j + 2] = sched, start
    out[j + 3], out[j + 4] = anchor[i] or '', last[i] or ''
  end
  return table.concat(out, '\\31')
end
local runs = hmget(4)
local out = {}
for i = 1, n do
  local text = texts[i] or ''
  if string.find(text, '\\31', 1, true) then text = '\\30' end
  local j = 5 * (i - 1)
  out[j + 1] = text
  out[j + 2] = anchor[i] or ''
  out[j + 3] = last[i] or ''
  out[j + 4] = runs[i] or ''
  out[j + 5] = redis.call('ZSCORE', KEYS[5], ARGV[i + 1]) or ''
end
return table.concat(out, '\\31')
""",
)
