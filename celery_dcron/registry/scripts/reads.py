"""Read-only scripts: the owned entries' definitions and states, packed in one reply."""

from __future__ import annotations

from .base import Script

__all__ = ["LOAD", "LOAD_SEP"]

#: Separates the fields of :data:`LOAD`'s reply (ASCII unit separator: JSON text escapes
#: every control character, so no stored definition written by this package holds one).
LOAD_SEP = "\x1f"

# The definitions and run states of some entries, as one string: redis-py parses a reply
# of thousands of bulk strings one by one in Python (several µs each), one string at once.
# Per name: its definition, anchor, last tick and run count, '' where absent, all joined
# by \31. A definition holding \31 itself (not written by this package)
# is sent as \30, which the reader takes for malformed.
# With ARGV[1] 'r' instead: one field per name, its last tick, or '' (never run).
# With 's': four fields per name, what tells when it is due without reading it whole:
# the JSON text of its schedule (the object after the definition's last '"schedule": ';
# keys are sorted, so that is the entry's own, see entrytext.py), its start_ms (after the
# last '"start_ms": '), anchor and last tick; '' where absent (no definition: all four).
# KEYS: entries, anchor, last, runs
# ARGV: '1' (definitions and states), 'r' (last ticks) or 's' (due hints), then the names
LOAD = Script(
    "load",
    ("entries", "anchor", "last", "runs"),
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
  -- what follows the last (plain) occurrence of key in text, read by pattern
  local function after_last(text, key, pattern)
    local at, from = nil, 1
    while true do
      local _, e = string.find(text, key, from, true)
      if not e then break end
      at, from = e + 1, e + 1
    end
    return at and string.match(text, pattern, at) or ''
  end
  local out = {}
  for i = 1, n do
    local text = texts[i]
    local j = 4 * (i - 1)
    if text then
      out[j + 1] = after_last(text, '"schedule": ', '^%b{}')
      out[j + 2] = after_last(text, '"start_ms": ', '^%-?%d+')
      out[j + 3] = anchor[i] or ''
      out[j + 4] = last[i] or ''
    else
      out[j + 1], out[j + 2], out[j + 3], out[j + 4] = '', '', '', ''
    end
  end
  return table.concat(out, '\\31')
end
local runs = hmget(4)
local out = {}
for i = 1, n do
  local text = texts[i] or ''
  if string.find(text, '\\31', 1, true) then text = '\\30' end
  local j = 4 * (i - 1)
  out[j + 1] = text
  out[j + 2] = anchor[i] or ''
  out[j + 3] = last[i] or ''
  out[j + 4] = runs[i] or ''
end
return table.concat(out, '\\31')
""",
)
