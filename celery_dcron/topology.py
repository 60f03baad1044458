"""Where the registry lives: ``dcron_redis_url`` and its transport options, parsed (pure).

Three topologies, told apart by the URL scheme, in the forms Celery and kombu users know:

- **single**: ``redis://[user:pw@]host:6379/0``, ``rediss://...`` (TLS),
  ``unix:///path.sock?db=0``; no transport options.
- **sentinel**: ``sentinel://[user:pw@]host:26379/0;sentinel://host2:26379``, as kombu's
  broker and Celery's result backend write it (the first URL's credentials and db are the
  master's); transport options ``master_name`` (required), ``sentinel_kwargs``,
  ``min_other_sentinels``, ``ssl``.
- **cluster**: ``redis+cluster://[user:pw@]host:6379;redis+cluster://host2:6379``
  (``rediss+cluster://`` with TLS): startup nodes, database 0 only; no transport options.

:func:`parse_redis_target` validates both and returns a :class:`RedisTarget`; errors are
:class:`~celery_dcron.exceptions.ConfigurationError` naming the setting and the fix. The
client is built from the target by :mod:`celery_dcron.clients`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from .exceptions import ConfigurationError

__all__ = [
    "SENTINEL_OPTIONS",
    "RedisTarget",
    "Topology",
    "mask_url",
    "parse_redis_target",
    "redis_url_from_broker",
]

URL_SETTING = "dcron_redis_url"
OPTIONS_SETTING = "dcron_redis_transport_options"
SENTINEL_PORT = 26379
REDIS_PORT = 6379

#: Transport options of a ``sentinel://`` URL (the keys kombu and Celery use for it).
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels", "ssl")

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class Topology(enum.Enum):
    SINGLE = "single"
    SENTINEL = "sentinel"
    CLUSTER = "cluster"


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisTarget:
    """A validated ``dcron_redis_url`` (with its transport options)."""

    topology: Topology
    #: single: the URL itself; cluster: the first startup node as a ``redis://`` or
    #: ``rediss://`` URL (credentials and query kept); sentinel: ``""``
    url: str = field(repr=False)
    #: sentinel: the sentinels; cluster: the startup nodes (the first one is ``url``'s)
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    master_name: str | None = None
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    min_other_sentinels: int = 0
    #: sentinel only: TLS to the master (True, or redis-py ``ssl_*`` options)
    ssl: bool | Mapping[str, Any] = False

    def describe(self) -> str:
        """How the registry is reached, for logs and error messages (no secrets)."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        if self.topology is Topology.SENTINEL:
            return f"sentinel master {self.master_name!r} via {hosts} db {self.db}"
        if self.topology is Topology.CLUSTER:
            return f"Redis Cluster via {hosts}"
        return mask_url(self.url)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and reprs.

    A ``;``-separated list (sentinels, cluster nodes) is masked part by part.
    """
    if ";" in url:
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_redis_target(url: str, options: Mapping[str, Any] | None = None) -> RedisTarget:
    """Validate ``dcron_redis_url`` and ``dcron_redis_transport_options`` together."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{URL_SETTING}: expected a URL string, got {url!r}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{OPTIONS_SETTING}: expected a dict (like broker_transport_options), got {options!r}"
        )
    parts = [p.strip() for p in url.split(";") if p.strip()]
    schemes = {_scheme(p) for p in parts}
    if schemes == {"sentinel"}:
        return _sentinel(parts, options)
    if len(schemes) == 1 and next(iter(schemes)) in _CLUSTER_SCHEMES:
        _no_options(options, "redis+cluster://")
        return _cluster(parts)
    if len(parts) == 1 and schemes <= set(_SINGLE_SCHEMES):
        _no_options(options, f"{next(iter(schemes))}://")
        return RedisTarget(topology=Topology.SINGLE, url=parts[0])
    if len(parts) > 1 and schemes <= set(_SINGLE_SCHEMES):
        raise ConfigurationError(
            f"{URL_SETTING}: {mask_url(url)!r} lists several servers; for Redis Sentinel use "
            "sentinel://host:26379;sentinel://host2:26379 with master_name in "
            f"{OPTIONS_SETTING}, for Redis Cluster redis+cluster://host:6379;"
            "redis+cluster://host2:6379"
        )
    raise ConfigurationError(
        f"{URL_SETTING}: {mask_url(url)!r} is not a Redis URL; use redis://host:port/db, "
        "rediss://... (TLS), unix:///path.sock, sentinel://host:26379;sentinel://host2:26379 "
        "(Redis Sentinel) or redis+cluster://host:6379;redis+cluster://host2:6379 (Redis "
        "Cluster), one scheme for all the parts"
    )


def redis_url_from_broker(broker_url: str | None) -> str | None:
    """The registry URL to use when ``dcron_redis_url`` is unset: a Redis broker's URL
    (its first server for a failover list), or all its sentinels. None for other brokers."""
    if not broker_url:
        return None
    parts = [p.strip() for p in broker_url.split(";") if p.strip()]
    if not parts:
        return None
    scheme = _scheme(parts[0])
    if scheme in ("redis", "rediss"):
        return parts[0]
    if scheme == "redis+socket":
        return "unix" + parts[0][len("redis+socket") :]
    if scheme == "sentinel":
        return ";".join(p for p in parts if _scheme(p) == "sentinel")
    return None


# -- the topologies ------------------------------------------------------------------------


def _scheme(part: str) -> str:
    return part.split("://", 1)[0].lower() if "://" in part else ""


def _no_options(options: Mapping[str, Any], scheme: str) -> None:
    if options:
        raise ConfigurationError(
            f"{OPTIONS_SETTING}: {sorted(options)} do not apply to a {scheme} URL; they are "
            "options of a sentinel:// URL (leave the setting unset otherwise)"
        )


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    try:
        split = urlsplit(part)
        port = split.port or default_port
    except ValueError as exc:
        raise ConfigurationError(f"{URL_SETTING}: {mask_url(part)!r}: {exc}") from None
    if not split.hostname:
        raise ConfigurationError(
            f"{URL_SETTING}: {mask_url(part)!r} has no host; write {split.scheme}://host:port"
        )
    return split.hostname, port


def _credentials(part: str) -> tuple[str | None, str | None]:
    split = urlsplit(part)
    user = unquote(split.username) if split.username else None
    password = unquote(split.password) if split.password is not None else None
    return user, password


def _db(part: str) -> int:
    split = urlsplit(part)
    raw = parse_qs(split.query).get("db", [split.path.strip("/") or "0"])[0]
    try:
        db = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{URL_SETTING}: {mask_url(part)!r}: the database must be a number (/0), got {raw!r}"
        ) from None
    if db < 0:
        raise ConfigurationError(f"{URL_SETTING}: {mask_url(part)!r}: db {db} must be >= 0")
    return db


def _sentinel(parts: list[str], options: Mapping[str, Any]) -> RedisTarget:
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"{OPTIONS_SETTING}: unknown option(s) {unknown} for a sentinel:// URL; known: "
            f"{', '.join(SENTINEL_OPTIONS)}"
        )
    master = options.get("master_name")
    if not isinstance(master, str) or not master:
        raise ConfigurationError(
            f"{OPTIONS_SETTING}: a sentinel:// {URL_SETTING} needs the name of the monitored "
            f"master: {OPTIONS_SETTING} = {{'master_name': 'mymaster'}} (the name in the "
            "sentinels' 'sentinel monitor' line; when the URL is the broker's, "
            "broker_transport_options['master_name'] is used)"
        )
    for part in parts:
        if urlsplit(part).query:
            raise ConfigurationError(
                f"{URL_SETTING}: {mask_url(part)!r}: a sentinel:// URL takes no query options; "
                f"put them in {OPTIONS_SETTING}"
            )
    sentinel_kwargs = options.get("sentinel_kwargs") or {}
    if not isinstance(sentinel_kwargs, Mapping):
        raise ConfigurationError(
            f"{OPTIONS_SETTING}['sentinel_kwargs']: expected a dict of connection options for "
            f"the sentinels (e.g. {{'password': '...'}}), got {sentinel_kwargs!r}"
        )
    min_other = options.get("min_other_sentinels", 0)
    if isinstance(min_other, bool) or not isinstance(min_other, int) or min_other < 0:
        raise ConfigurationError(
            f"{OPTIONS_SETTING}['min_other_sentinels']: expected an integer >= 0, got {min_other!r}"
        )
    ssl = options.get("ssl", False)
    if not isinstance(ssl, (bool, Mapping)):
        raise ConfigurationError(
            f"{OPTIONS_SETTING}['ssl']: expected True/False or a dict of redis-py ssl_* "
            f"options (e.g. {{'ssl_cert_reqs': 'required'}}), got {ssl!r}"
        )
    user, password = _credentials(parts[0])
    return RedisTarget(
        topology=Topology.SENTINEL,
        url="",
        hosts=tuple(_host_port(p, SENTINEL_PORT) for p in parts),
        db=_db(parts[0]),
        username=user,
        password=password,
        master_name=master,
        sentinel_kwargs=dict(sentinel_kwargs),
        min_other_sentinels=min_other,
        ssl=ssl if isinstance(ssl, bool) else dict(ssl),
    )


def _cluster(parts: list[str]) -> RedisTarget:
    hosts = tuple(_host_port(p, REDIS_PORT) for p in parts)
    for part in parts:
        if _db(part) != 0:
            raise ConfigurationError(
                f"{URL_SETTING}: {mask_url(part)!r}: Redis Cluster has only database 0; drop "
                "the /db (use dcron_namespace or dcron_key_prefix to keep registries apart)"
            )
    first = urlsplit(parts[0])
    plain = _CLUSTER_SCHEMES[first.scheme.lower()]
    user, password = _credentials(parts[0])
    return RedisTarget(
        topology=Topology.CLUSTER,
        url=urlunsplit((plain, first.netloc, "", first.query, "")),
        hosts=hosts,
        username=user,
        password=password,
    )
