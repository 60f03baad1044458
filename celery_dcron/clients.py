"""redis-py clients for the three topologies of ``dcron_redis_url``, and what differs
between them: single server, Redis Sentinel, Redis Cluster.

Every client has bounded timeouts and at most one quick retry, so that an unreachable
Redis shows up within ``dcron_socket_timeout`` (the engine then publishes nothing and
retries, G5). The registry talks to all three through the same ``redis.Redis`` methods:

- **Sentinel**: ``Sentinel(...).master_for(master_name)``; every new connection asks the
  sentinels for the current master, and a connection to a demoted master fails
  (``READONLY``), so after a failover the next attempt reaches the new master.
- **Cluster**: a :class:`LazyCluster` around ``redis.RedisCluster``. redis-py's
  constructor connects at once; built lazily, an unreachable cluster at start is an
  outage like any other (retried) instead of a crash. Every key of a namespace shares
  one hash tag, so each script, pipeline and the pub/sub channel go to one node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis
from redis._parsers import Encoder
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from .config import Settings
from .exceptions import ConfigurationError
from .topology import OPTIONS_SETTING, URL_SETTING, RedisTarget, Topology, mask_url

__all__ = [
    "LazyCluster",
    "cluster_node_error",
    "cluster_unreachable",
    "configuration_error",
    "connect",
    "describe_error",
    "follow_master",
    "is_cluster",
    "refresh_cluster_map",
    "run_then_wait",
]


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)


def connect(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``; no I/O happens here."""
    target = settings.redis_target
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "health_check_interval": 30,
    }
    try:
        if target.topology is Topology.SENTINEL:
            return _sentinel_master(target, common)
        if target.topology is Topology.CLUSTER:
            # The proxy has the methods the registry calls on a redis.Redis.
            return cast("redis.Redis", LazyCluster(lambda: _cluster(target, common)))
        return redis.Redis.from_url(target.url, retry=_retry(), **common)
    except ValueError as exc:
        raise ConfigurationError(
            f"{URL_SETTING}: cannot use {mask_url(settings.redis_url)!r}: {exc}"
        ) from None


def _sentinel_master(target: RedisTarget, common: Mapping[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        "retry": _retry(),
    }
    sentinel_kwargs.update(target.sentinel_kwargs)
    master: dict[str, Any] = dict(common)
    master.update(retry=_retry(), db=target.db, username=target.username)
    master["password"] = target.password
    if target.ssl:
        master["ssl"] = True
        if isinstance(target.ssl, Mapping):
            master.update(target.ssl)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(target.hosts),
        min_other_sentinels=target.min_other_sentinels,
        sentinel_kwargs=sentinel_kwargs,
        **master,
    )
    assert target.master_name is not None
    master_client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        target.master_name, redis_class=redis.Redis
    )
    return master_client


def _cluster(target: RedisTarget, common: Mapping[str, Any]) -> redis.RedisCluster:
    from redis.cluster import ClusterNode

    others = [ClusterNode(h, p) for h, p in target.hosts[1:]]  # type: ignore[no-untyped-call]
    return redis.RedisCluster.from_url(target.url, startup_nodes=others, retry=_retry(), **common)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (LazyCluster, redis.RedisCluster))


class LazyCluster:
    """A ``redis.RedisCluster`` built on first use (its constructor connects at once).

    ``register_script`` works before that: scripts are hashed with the client's
    encoding (UTF-8) without asking the cluster. Anything else builds the cluster
    client (raising redis-py's errors, which the registry treats as an outage) and is
    delegated to it.
    """

    def __init__(self, factory: Callable[[], redis.RedisCluster]) -> None:
        self._factory = factory
        self._client: redis.RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> redis.RedisCluster:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def get_encoder(self) -> Encoder:
        return Encoder("utf-8", "strict", True)  # type: ignore[no-untyped-call]

    def register_script(self, script: str) -> Script:
        return Script(cast("redis.Redis", self), script)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __getattr__(self, name: str) -> Any:
        if callable(getattr(redis.RedisCluster, name, None)):
            # a method: build the client when it is called (``_run(client.ping)``), not
            # when it is looked up, so that the errors are raised where they are caught
            def method(*args: Any, **kwargs: Any) -> Any:
                return getattr(self.cluster, name)(*args, **kwargs)

            return method
        return getattr(self.cluster, name)


def run_then_wait(
    client: Any,
    key: str,
    queue: Callable[[Any], object],
    replicas: int,
    timeout_ms: int,
    script: Script | None = None,
) -> tuple[Any, int]:
    """Send what ``queue(pipe)`` adds to a pipeline, then ``WAIT replicas timeout_ms``, on
    one connection in one round trip. Returns the first reply and how many replicas
    acknowledged the writes.

    ``WAIT`` counts the writes of its own connection, hence one pipeline; on Redis
    Cluster it goes to the node of ``key`` (every key of a namespace is there). A
    ``NOSCRIPT`` reply (a restarted or newly promoted server) loads ``script`` and retries.
    """
    target: dict[str, Any] = {}
    if is_cluster(client):
        target["target_nodes"] = client.get_node_from_key(key)
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        queue(pipe)
        pipe.execute_command("WAIT", replicas, timeout_ms, **target)
        try:
            reply, acked = pipe.execute()
        except redis.exceptions.NoScriptError:
            if script is None or attempt == 2:
                raise
            client.script_load(script.script)
            continue
        return reply, int(acked)
    raise AssertionError("unreachable")


def follow_master(client: Any) -> bool:
    """On a Sentinel-managed client: rediscover the master; when it moved, idle
    connections are dropped at once and busy ones when released (redis-py's
    ``SentinelConnectionPool``), so every next command goes to the new master. True
    when it moved. A no-op elsewhere; sentinels that do not answer change nothing."""
    from redis.sentinel import SentinelConnectionPool

    pool = getattr(client, "connection_pool", None)
    if not isinstance(pool, SentinelConnectionPool):
        return False
    before = pool.master_address
    try:
        after = pool.get_master_address()  # type: ignore[no-untyped-call]
    except (redis.exceptions.RedisError, OSError):
        return False
    return before is not None and tuple(after) != tuple(before)


def refresh_cluster_map(client: Any) -> None:
    """On Redis Cluster, read the slot map afresh (after a failover it may still name a
    dead node: commands refresh it when they fail, subscriptions do not)."""
    if is_cluster(client):
        client.nodes_manager.initialize()


def cluster_unreachable(exc: BaseException) -> bool:
    """redis-py's error when no node of a Redis Cluster answers (an outage, retried).

    redis-py raises a bare RedisClusterException here, with no subclass or field to tell
    it from a configuration error: its text is all there is (the one place we read one)."""
    return isinstance(exc, redis.exceptions.RedisClusterException) and (
        "cannot be connected" in str(exc)
    )


def describe_error(exc: BaseException, target: RedisTarget | None) -> str | None:
    """What to check when ``exc`` keeps happening, naming the setting; None if nothing
    more useful than redis-py's own message can be said."""
    if target is None:
        return None
    hosts = ", ".join(f"{h}:{p}" for h, p in target.hosts)
    if target.topology is Topology.SENTINEL and isinstance(exc, MasterNotFoundError):
        return (
            f"no sentinel of {hosts} named a live master {target.master_name!r}: a failover "
            "in progress, unreachable sentinels, or a wrong master name; check the sentinel "
            f"addresses in {URL_SETTING} and {OPTIONS_SETTING}['master_name']"
        )
    if target.topology is Topology.CLUSTER and isinstance(
        exc, redis.exceptions.RedisClusterException
    ):
        return (
            f"Redis Cluster not reachable through the startup nodes {hosts}: {exc}; check "
            f"the redis+cluster:// nodes in {URL_SETTING}"
        )
    return None


def cluster_node_error(detail: str = "cluster_enabled:1") -> ConfigurationError:
    """A single-server URL names a node of a Redis Cluster."""
    return ConfigurationError(
        f"{URL_SETTING}: the server is a Redis Cluster node ({detail}); use "
        "redis+cluster://host:6379;redis+cluster://host2:6379 (any of its nodes)"
    )


def configuration_error(
    exc: BaseException, target: RedisTarget | None
) -> ConfigurationError | None:
    """A ConfigurationError when ``exc`` shows ``dcron_redis_url`` names the wrong kind of
    Redis (a Cluster node as a single server, or the reverse); else None."""
    text = str(exc)
    if isinstance(exc, (redis.exceptions.MovedError, redis.exceptions.AskError)) and not (
        target is not None and target.topology is Topology.CLUSTER
    ):
        return cluster_node_error(text)
    if (
        target is not None
        and target.topology is Topology.CLUSTER
        and "Cluster mode is not enabled" in text
    ):
        return ConfigurationError(
            f"{URL_SETTING}: {target.describe()}: the server is not a Redis Cluster node "
            "(cluster mode is not enabled); use redis://host:6379/0 for a single server"
        )
    return None
