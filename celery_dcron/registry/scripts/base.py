"""The :class:`Script` record and the Lua fragments the scripts share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..keys import KeyName, Keys

__all__ = ["FEED_MAXLEN", "Script"]

#: Records the change feed keeps (about: ``XADD MAXLEN ~`` trims whole nodes of the
#: stream). An instance that falls further behind than this reloads in full, once.
FEED_MAXLEN = 10_000


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

# The version of the stored entry JSON in ``cur`` (-1: no entry, 0: no version field):
# read from its end when it ends with it, as every text this package writes does (its
# last key; entrytext.stored_version reads it so too), else decoded.
_VERSION = """
local function version_of(cur)
  if not cur then return -1 end
  if string.byte(cur, 1) == 123 then  -- the last 28 bytes hold a tail of up to 15 digits
    local digits = string.match(string.sub(cur, -28), '[ {]"version": (%d+)}$')
    if digits and #digits <= 15 then return tonumber(digits) end
  end
  local ok, data = pcall(cjson.decode, cur)
  if ok and type(data) == 'table' and tonumber(data['version']) then
    return tonumber(data['version'])
  end
  return 0
end
"""

# Defines ``feed(meta, stream, name, kind, due)`` (``meta``, ``stream``, ``due``: the
# indexes in KEYS of the meta hash, the feed stream and the due index; ``due`` may be nil
# for a write that changes no entry's ticks): bumps the entries version and records in
# the change feed which entry changed and how (kind: put, del, state, run, pause); returns
# the new version, which the record carries as ``s`` (gap-free: every bump writes a
# record). A put or a state write sets the entry's due time to 0 (unknown until its owner
# computes it again), a del takes it out of the due index (keys.py).
_FEED = """
local function feed(meta, stream, name, kind, due)
  local seq = redis.call('HINCRBY', KEYS[meta], 'entries', 1)
  redis.call('XADD', KEYS[stream], 'MAXLEN', '~', {maxlen}, '*', 'n', name, 'k', kind, 's', seq)
  if due then
    if kind == 'del' then
      redis.call('ZREM', KEYS[due], name)
    elseif kind == 'put' or kind == 'state' then
      redis.call('ZADD', KEYS[due], 0, name)
    end
  end
  return seq
end
""".replace("{maxlen}", str(FEED_MAXLEN))

# The due time of an entry written now (keys.py): if ``anchored`` (1: its anchor was set
# by this write, and it has no last tick: a claim can outlive a removal), it is an
# interval entry (``every_s`` > 0) and its JSON ``text`` has no
# "start_ms" (which can move its first tick earlier than a whole interval after the
# anchor; a mere mention in its arguments counts too), its first tick, ``anchor + every``;
# else 0, unknown.
_FIRST_DUE = """
local function first_due(anchored, anchor, every_s, text)
  local every = tonumber(every_s)
  if anchored == 1 and every > 0 and not string.find(text, '"start_ms"', 1, true) then
    return anchor + every
  end
  return 0
end
"""
