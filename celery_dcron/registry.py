"""The Redis registry: the only module that knows Redis keys, scripts and channels.

Schema (every key of one namespace shares the hash tag ``{prefix:namespace}``, so
all scripts touch one Redis Cluster slot; ``B`` below stands for that tag)::

    B:nodes       hash    node id -> node JSON (host, pid, version, weight, ...)
    B:status      hash    node id -> "starting" | "working" | "leaving"
    B:alive       zset    node id -> heartbeat expiry (Redis server time, ms)
    B:meta        hash    "members" -> membership version, "entries" -> entries version
    B:entries     hash    entry name -> entry JSON (static and dynamic)
    B:static      hash    entry name -> "1" for entries written from beat_schedule
    B:tombstones  hash    entry name -> deletion time (ms); re-adding is refused
    B:anchor      hash    entry name -> registration time (ms); no earlier tick fires
    B:last        hash    entry name -> last claimed tick (ms); only ever grows
    B:runs        hash    entry name -> number of ticks claimed for dispatch
    B:lastnode    hash    entry name -> node id of the last claim
    B:pending     hash    "<tick_ms>:<name>" -> node id: claimed, not yet marked sent
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
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import Settings, mask_url
from .entries import ClaimResult, EntrySpec, EntryState, Node, NodeStatus, PendingClaim, Tick
from .exceptions import InvalidEntryError, RegistryUnavailableError

__all__ = ["Heartbeat", "Keys", "Registry", "StaticSyncResult", "connect"]

logger = logging.getLogger(__name__)

#: Errors that mean "Redis is unreachable right now"; callers retry later.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    OSError,
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
        )  # fmt: skip


# -- Lua scripts -----------------------------------------------------------------
# Each takes every key it touches in KEYS (Cluster-safe) and never builds key names.

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: nodes, status, alive, meta
# ARGV: node_id, node_json, status, ttl_ms, channel
# Expires dead nodes, refreshes this node, bumps the membership version (and
# publishes "members") when the live set or a status changed.
# Returns {server_s, server_us, members_version, entries_version}.
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
local m = redis.call('HMGET', KEYS[4], 'members', 'entries')
return {t[1], t[2], m[1] or '0', m[2] or '0'}
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
# ARGV: channel, n, name_1, json_1, ..., name_n, json_n
# Writes the static entries of one beat_schedule in one step: a tombstoned name or
# a dynamic entry of the same name is left alone (reported); static entries no
# longer in the schedule are removed; anchors are set once (HSETNX).
# Returns {changed, name, reason, name, reason, ...}.
SYNC_STATIC = (
    _NOW
    + """
local n = tonumber(ARGV[2])
local changed = 0
local out = {}
local keep = {}
for i = 1, n do
  local name = ARGV[1 + 2 * i]
  local json = ARGV[2 + 2 * i]
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
    redis.call('HSETNX', KEYS[4], name, now)
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


@dataclass(frozen=True, slots=True)
class Heartbeat:
    server_ms: int
    members_version: int
    entries_version: int


@dataclass(frozen=True, slots=True)
class StaticSyncResult:
    changed: int
    #: name -> reason ("tombstoned" or "dynamic") for entries that were not written.
    skipped: Mapping[str, str]


def connect(settings: Settings) -> redis.Redis:
    """A redis-py client for ``settings.redis_url`` with bounded timeouts."""
    try:
        client: redis.Redis = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=settings.socket_timeout_s,
            socket_connect_timeout=settings.socket_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
            health_check_interval=30,
        )
    except ValueError as exc:
        from .exceptions import ConfigurationError

        raise ConfigurationError(
            f"dcron_redis_url: cannot use {mask_url(settings.redis_url)!r}: {exc}"
        ) from None
    return client


class Registry:
    """Typed access to one namespace of the registry."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)
        self._sync_static = client.register_script(SYNC_STATIC)
        self._claim = client.register_script(CLAIM)
        self._retake = client.register_script(RETAKE)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> Registry:
        return cls(client or connect(settings), Keys(settings.key_prefix, settings.namespace))

    def load_scripts(self) -> None:
        """Load every script in one round trip (redis-py reloads them after a restart)."""
        pipe = self.client.pipeline(transaction=False)
        for script in (self._heartbeat, self._leave, self._sync_static, self._claim, self._retake):
            pipe.script_load(script.script)
        self._execute(pipe)

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
        pipe.time()
        raw_nodes, statuses, alive, now = self._execute(pipe)
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

    # -- entries -----------------------------------------------------------------

    def sync_static(self, specs: Sequence[EntrySpec]) -> StaticSyncResult:
        k = self.keys
        args: list[Any] = [k.events, len(specs)]
        for spec in specs:
            args.extend((spec.name, spec.dumps()))
        raw = self._call(
            self._sync_static, [k.entries, k.static, k.tombstones, k.anchor, k.meta], args
        )
        skipped = {str(raw[i]): str(raw[i + 1]) for i in range(1, len(raw), 2)}
        return StaticSyncResult(changed=int(raw[0]), skipped=skipped)

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
        """Claim a batch of ticks in one round trip. Ticks of one entry go oldest first."""
        if not ticks:
            return []
        k = self.keys
        keys = [k.last, k.runs, k.lastnode, k.pending]
        args: list[Any] = [node_id, lock_ttl_ms]
        for tick in ticks:
            keys.append(k.lock(tick.name, tick.tick_ms))
            limit = (max_runs or {}).get(tick.name) or 0
            args.extend((tick.name, tick.tick_ms, 1 if tick.fire else 0, limit))
        raw = self._call(self._claim, keys, args)
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
        """Take over unsent claims that are ours or whose claimer is dead."""
        if not ticks:
            return []
        k = self.keys
        keys = [k.pending, k.alive] + [k.lock(t.name, t.tick_ms) for t in ticks]
        args: list[Any] = [node_id, lock_ttl_ms] + [
            k.pending_field(t.name, t.tick_ms) for t in ticks
        ]
        raw = self._call(self._retake, keys, args)
        return [bool(int(x)) for x in raw]

    def drop_pending(self, ticks: Sequence[Tick]) -> None:
        """Forget unsent claims (their entry was removed)."""
        self.mark_sent(ticks)

    # -- events ------------------------------------------------------------------

    def pubsub(self) -> Any:
        ps = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        ps.subscribe(self.keys.events)
        return ps

    # -- plumbing ----------------------------------------------------------------

    def ping(self) -> float:
        """Round trip to Redis in seconds; raises RegistryUnavailableError."""
        start = time.perf_counter()
        self._run(self.client.ping)
        return time.perf_counter() - start

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return self._run(lambda: script(keys=keys, args=args))

    def _execute(self, pipe: Any) -> Any:
        return self._run(pipe.execute)

    def _run(self, fn: Any) -> Any:
        try:
            return fn()
        except REDIS_ERRORS as exc:
            raise RegistryUnavailableError(f"dcron: Redis unreachable: {exc}") from exc


def _json(data: Mapping[str, Any]) -> str:
    import json

    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _replace_node(node: Node, **changes: Any) -> Node:
    from dataclasses import replace

    return replace(node, **changes)
