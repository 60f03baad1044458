"""Talking to Redis: the client, the registered scripts, and what a failure means.

Every Redis call of the registry goes through :meth:`Transport.run`, which turns an
outage into :class:`~celery_dcron.exceptions.RegistryUnavailableError` (the engine
retries), a refused password or ACL permission into a
:class:`~celery_dcron.exceptions.RegistryAuthenticationError`, and a reply that shows a
wrong ``dcron_redis_url`` into a :class:`~celery_dcron.exceptions.ConfigurationError`
(neither is retried: a setting must change). Scripts are called by their
:class:`~celery_dcron.registry.scripts.Script`, which binds their keys by name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.commands.core import Script as RedisScript

from .. import clients
from ..config import Settings
from ..exceptions import RegistryAuthenticationError, RegistryUnavailableError
from ..topology import URL_SETTING, RedisTarget, Topology
from . import scripts
from .codec import decode_fields, time_ms
from .keys import Keys
from .scripts import Script

__all__ = ["REDIS_ERRORS", "Store", "Transport", "access_error", "connect"]

logger = logging.getLogger(__name__)

#: Errors that mean "Redis is unreachable right now"; callers retry later. (redis-py's
#: AuthenticationError is a ConnectionError too: :meth:`Transport.run` takes it out first.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
)
#: Redis refused this client: a wrong or missing password, an unknown ACL user (WRONGPASS,
#: NOAUTH; an ACL user name sent to a Redis before 6), or an ACL user without a permission
#: the registry needs (NOPERM). A configuration error, never an outage.
_DENIED: tuple[type[BaseException], ...] = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
    redis.exceptions.NoPermissionError,
)
#: What :meth:`Transport.run` looks at: outages, refusals, and replies that show a wrong
#: dcron_redis_url.
_CAUGHT: tuple[type[BaseException], ...] = (
    *REDIS_ERRORS,
    redis.exceptions.ResponseError,
    redis.exceptions.RedisClusterException,  # "cannot be connected": no reachable node
)


def access_error(
    exc: BaseException, target: RedisTarget | None, keys: Keys
) -> RegistryAuthenticationError | None:
    """The error that names the setting to fix when Redis refused this client (see
    ``_DENIED``), or None. Decided by the exception's class and the configured URL (does it
    carry a password, a user), never by the message, which is only quoted."""
    if not isinstance(exc, _DENIED):
        return None
    where = f"Redis at {target.describe()}" if target is not None else "Redis"
    setting = f"{URL_SETTING} (or broker_url, its default)"
    user, password = _credentials(target)
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return RegistryAuthenticationError(
            f"{where}: permission denied to the ACL user {user or 'default'!r} (allow it "
            f"the registry's commands on the keys and channel {keys.base}:*): {exc}"
        )
    if target is not None and password is None:
        return RegistryAuthenticationError(
            f"{where}: authentication required (put the password in {setting}: "
            f"redis://:PASSWORD@host:6379/0, or redis://USER:PASSWORD@host:6379/0): {exc}"
        )
    what = f"the ACL user {user!r} and its password" if user else "the password"
    return RegistryAuthenticationError(
        f"{where}: authentication failed (check {what} in {setting}): {exc}"
    )


def _credentials(target: RedisTarget | None) -> tuple[str | None, str | None]:
    """(user, password) that ``target`` gives Redis: a single server's come from its URL
    (``redis://user:password@host``, or ``?password=`` as redis-py also reads)."""
    if target is None:
        return None, None
    if target.topology is not Topology.SINGLE:
        return target.username, target.password
    split = urlsplit(target.url)
    query = parse_qs(split.query)
    user = split.username or next(iter(query.get("username", [])), None)
    password = split.password
    if password is None:
        password = next(iter(query.get("password", [])), None)
    return (unquote(user) if user else None), password


def connect(settings: Settings) -> redis.Redis:
    """A redis-py client for ``settings.redis_url`` (single server, Sentinel or Cluster)
    with bounded timeouts; see :mod:`celery_dcron.clients`."""
    return clients.connect(settings)


class Transport:
    """One namespace's connection: runs commands, pipelines and scripts, and maps
    their failures to dcron errors."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        target: RedisTarget | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self.client = client
        self.keys = keys
        #: what dcron_redis_url points at (for error messages); None: not known
        self.target = target
        #: claims and "sent" marks count once this many replicas have them (WAIT)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        # registering does no I/O: redis-py loads a script on its first NOSCRIPT reply
        self._scripts = {s.name: client.register_script(s.source) for s in scripts.ALL}

    def registered(self, script: Script) -> RedisScript:
        """The redis-py script object of ``script`` (its ``sha``)."""
        return self._scripts[script.name]

    def load_scripts(self) -> None:
        """Load every script in one round trip (redis-py reloads them after a restart).

        On a single server or Sentinel master, also refuse a Redis Cluster node (the
        wrong URL scheme would work by chance, until the slot moves).
        """
        loaded = [self.registered(s) for s in scripts.ALL]
        if clients.is_cluster(self.client):
            for script in loaded:  # SCRIPT LOAD goes to every master; not in a pipeline
                self.run(partial(self.client.script_load, script.script))
            return
        pipe = self.pipeline()
        for script in loaded:
            pipe.script_load(script.script)
        pipe.info("cluster")
        *_, info = self.run(lambda: pipe.execute(raise_on_error=False))
        if isinstance(info, dict) and str(info.get("cluster_enabled")) == "1":
            raise clients.cluster_node_error()

    # -- calls -------------------------------------------------------------------

    def pipeline(self) -> Any:
        """A pipeline without MULTI (send it with :meth:`execute`)."""
        return self.client.pipeline(transaction=False)

    def execute(self, pipe: Any) -> Any:
        return self.run(pipe.execute)

    def call(self, script: Script, args: Sequence[Any], extra_keys: Sequence[str] = ()) -> Any:
        """Run ``script`` with its named keys (then ``extra_keys``) and ``args``."""
        keys = script.bind(self.keys, extra_keys)
        registered = self.registered(script)
        return self.run(lambda: registered(keys=keys, args=list(args)))

    def call_many(self, script: Script, calls: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``script`` once per argument list of ``calls``, pipelined (no MULTI): one
        round trip, each call atomic on its own. Returns the replies in order.

        A call the server refused (``NOSCRIPT`` after a restart) did not run: the script is
        loaded and those calls sent again. Any other error is raised (as :meth:`run` maps
        it) once the replies are in, so the calls before and after it may have run.
        """
        keys = script.bind(self.keys)
        registered = self.registered(script)

        def send(batch: Sequence[Sequence[Any]]) -> list[Any]:
            pipe = self.pipeline()
            for args in batch:
                # not registered(client=pipe): redis-py would add a SCRIPT EXISTS round trip
                pipe.execute_command("EVALSHA", registered.sha, len(keys), *keys, *args)
            return list(pipe.execute(raise_on_error=False))

        replies = self.run(lambda: send(calls))
        unloaded = [
            i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if unloaded:
            self.run(partial(self.client.script_load, registered.script))
            again = self.run(lambda: send([calls[i] for i in unloaded]))
            for i, reply in zip(unloaded, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                self.run(partial(_reraise, reply))
        return list(replies)

    def call_durable(
        self, script: Script, args: Sequence[Any], extra_keys: Sequence[str] = ()
    ) -> Any:
        """:meth:`call`; with ``wait_replicas``, the writes count only once that many
        replicas have them (``WAIT``, same round trip)."""
        if not self.wait_replicas:
            return self.call(script, args, extra_keys)
        keys = script.bind(self.keys, extra_keys)
        registered = self.registered(script)
        return self.durable(
            keys[0],
            # not pipe.evalsha(): a Redis Cluster pipeline refuses that method
            lambda p: p.execute_command("EVALSHA", registered.sha, len(keys), *keys, *args),
            registered,
        )

    def durable(self, key: str, queue: Callable[[Any], object], script: Any = None) -> Any:
        """Run ``queue(pipe)`` then ``WAIT``. Too few replicas is an outage: the caller
        publishes nothing and retries (the scripts are idempotent for their claimer), so
        that neither a failover nor a master cut off from its replicas (a split brain)
        can make a claim that is sent twice."""
        reply, acked = self.run(
            lambda: clients.run_then_wait(
                self.client, key, queue, self.wait_replicas, self.wait_timeout_ms, script
            )
        )
        if acked < self.wait_replicas:
            reason = (
                f"writes reached {acked} of {self.wait_replicas} replicas within "
                f"{self.wait_timeout_ms}ms (dcron_redis_wait_replicas): not counted until "
                "replicated (replicas down or lagging, or this master was replaced)"
            )
            raise RegistryUnavailableError(f"dcron: {reason}") from redis.ConnectionError(reason)
        return reply

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()``, with Redis failures mapped to dcron errors."""
        try:
            return fn()
        except _CAUGHT as exc:
            denied = access_error(exc, self.target, self.keys)
            if denied is not None:
                raise denied from exc
            wrong = clients.configuration_error(exc, self.target)
            if wrong is not None:
                raise wrong from exc
            if not (isinstance(exc, REDIS_ERRORS) or clients.cluster_unreachable(exc)):
                raise
            hint = clients.describe_error(exc, self.target)
            if hint is None:
                raise RegistryUnavailableError(f"dcron: Redis unreachable: {exc}") from exc
            # the engine logs the cause: let it carry the hint
            cause = redis.exceptions.ConnectionError(hint)
            cause.__cause__ = exc
            raise RegistryUnavailableError(f"dcron: Redis unreachable: {hint}") from cause

    # -- the server ----------------------------------------------------------------

    def queue_time(self, pipe: Any) -> None:
        """Add the server time to a pipeline: the TIME script, on the namespace's node (a
        plain TIME would go to any node of a Redis Cluster; EVAL, since a cluster pipeline
        has no script objects)."""
        keys = scripts.TIME.bind(self.keys)
        pipe.execute_command("EVAL", scripts.TIME.source, len(keys), *keys)

    def server_ms(self) -> int:
        """The Redis server's time in milliseconds (the cluster clock): the time of the
        server holding the namespace (on Redis Cluster, the node of its slot)."""
        return time_ms(*self.call(scripts.TIME, []))

    def ping(self) -> float:
        """Round trip to Redis in seconds; raises RegistryUnavailableError."""
        start = time.perf_counter()
        self.run(self.client.ping)
        return time.perf_counter() - start

    def follow_master(self) -> bool:
        """On Redis Sentinel, ask the sentinels where the master is; if it moved, the
        connections to the old one are dropped. True when it moved. Never raises."""
        return clients.follow_master(self.client)


def _reraise(exc: Exception) -> None:
    raise exc


class Store:
    """Base of the registry's stores: one concern each, sharing one :class:`Transport`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def keys(self) -> Keys:
        return self.transport.keys

    def read_fields(self, key: str, what: str) -> list[tuple[str, int, str]]:
        """``(name, ms, value)`` of each ``"<ms>:<name>"`` field of the hash ``key``; a
        malformed field is logged (as a malformed ``what``) and deleted."""
        t = self.transport
        good, bad = decode_fields(t.run(lambda: t.client.hgetall(key)))
        for field in bad:
            logger.warning("dcron: dropping malformed %s %r", what, field)
        if bad:
            t.run(lambda: t.client.hdel(key, *bad))
        return good
