"""Settings, read once from the Celery app's configuration and validated.

Every setting is a lower-case Celery setting prefixed ``dcron_``; the table
:data:`SETTINGS` is the single source of the names, defaults and docs (the
documentation's reference page is checked against it by a test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .enums import MisfirePolicy, StrategyName
from .exceptions import ConfigurationError, InvalidEntryError
from .strategies import parse_strategy
from .topology import (
    SENTINEL_OPTIONS,
    RedisTarget,
    mask_url,
    parse_redis_target,
    redis_url_from_broker,
)

__all__ = ["SETTINGS", "Setting", "Settings", "mask_url"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: Any
    type: str
    doc: str


#: Every ``dcron_*`` setting: name, default, type and meaning.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "dcron_redis_url",
        None,
        "str",
        "Redis holding the registry. ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL, "
        "with password or ACL user; for Redis Sentinel ``sentinel://host:26379;"
        "sentinel://host2:26379`` (with ``master_name`` in "
        "``dcron_redis_transport_options``), for Redis Cluster ``redis+cluster://host:6379;"
        "redis+cluster://host2:6379`` (``rediss+cluster://`` with TLS). Default: the broker "
        "URL when it is a ``redis://``, ``rediss://`` or ``sentinel://`` URL, else "
        f"``{DEFAULT_REDIS_URL}``.",
    ),
    Setting(
        "dcron_redis_transport_options",
        None,
        "dict or None",
        "Options of a ``sentinel://`` ``dcron_redis_url``, with the keys of Celery's "
        "``broker_transport_options``: ``master_name`` (required), ``sentinel_kwargs`` "
        "(connection options of the sentinels themselves, e.g. their ``password``), "
        "``min_other_sentinels``, and ``ssl`` (TLS to the master: ``True`` or a dict of "
        "redis-py ``ssl_*`` options). ``None``: when the URL is the broker's, the "
        "sentinel keys of ``broker_transport_options``.",
    ),
    Setting(
        "dcron_redis_wait_replicas",
        0,
        "int",
        "A claim counts only once this many replicas have it (Redis ``WAIT``, in the "
        "claim's round trip): until then its tick is not published and the claim is "
        "retried, as when Redis is unreachable. Guards against a failover that loses the "
        "last writes; see Redis Sentinel and Cluster in the operations guide for the value "
        "to choose. ``0``: do not wait.",
    ),
    Setting(
        "dcron_redis_wait_timeout",
        0.5,
        "float (seconds)",
        "How long a claim waits for ``dcron_redis_wait_replicas`` before this attempt is "
        "given up (and retried). Must be below ``dcron_socket_timeout``.",
    ),
    Setting(
        "dcron_key_prefix",
        "dcron",
        "str",
        "Prefix of every Redis key and channel of celery_dcron.",
    ),
    Setting(
        "dcron_namespace",
        "default",
        "str",
        "Cluster name: instances share entries and ownership only within one namespace, "
        "so one Redis can serve several isolated clusters.",
    ),
    Setting(
        "dcron_heartbeat_interval",
        None,
        "float (seconds) or None",
        "How often an instance refreshes its heartbeat and checks for changes. ``None``: "
        "a third of ``dcron_node_ttl`` (0.833 s by default), so that setting the TTL alone "
        "is enough.",
    ),
    Setting(
        "dcron_node_ttl",
        2.5,
        "float (seconds)",
        "An instance whose heartbeat is older than this is dead; its entries move to the "
        "others: a crashed or frozen instance's entries fire again within about this long. "
        "Must be at least 3 heartbeat intervals. Raise it (with nothing else) where a "
        "process may stall longer, e.g. long GC pauses or a slow broker.",
    ),
    Setting(
        "dcron_node_id",
        None,
        "str or None",
        "This instance's node id (its entries follow it). A restarted instance with the "
        "same id takes over its previous incarnation at once: its entries, and its claims "
        "not yet sent (re-published with their task ids), without waiting for "
        "``dcron_node_ttl``. An id held by a running instance is refused at start. Set it "
        "where the host name changes between restarts, e.g. to the pod name of a "
        "StatefulSet. ``None``: ``<host>:<slot>``, the slot the lowest number that no "
        "running instance of this host holds.",
    ),
    Setting(
        "dcron_strategy",
        "consistent_hash",
        "str",
        "How entries are split between instances: ``consistent_hash``, ``rendezvous``, "
        "``hash_slot``, ``modulo``, ``weighted``, ``round_robin``, ``range``, or a dotted "
        "path to a class.",
    ),
    Setting(
        "dcron_virtual_nodes",
        160,
        "int",
        "Virtual nodes per instance on the consistent-hash ring.",
    ),
    Setting(
        "dcron_node_weight",
        1.0,
        "float",
        "This instance's weight under the ``weighted`` and ``consistent_hash`` strategies (a "
        "weight of 2 takes about twice the share).",
    ),
    Setting(
        "dcron_misfire_policy",
        "once",
        "str",
        "What a new owner does with ticks missed while nobody fired them: ``once`` "
        "(coalesce into one run), ``all`` (run each, bounded), ``skip``. Per entry: "
        "the ``misfire_policy`` key of a ``beat_schedule`` item.",
    ),
    Setting(
        "dcron_misfire_grace",
        None,
        "float (seconds) or None",
        "A missed tick older than this is dropped and logged instead of run. ``None``: no "
        "limit (like Celery beat). Per entry: the ``misfire_grace`` key.",
    ),
    Setting(
        "dcron_misfire_max_catchup",
        100,
        "int",
        "Under the ``all`` policy, at most this many missed ticks of one entry run; older "
        "ones are dropped and logged.",
    ),
    Setting(
        "dcron_lock_ttl",
        30.0,
        "float (seconds)",
        "Lifetime of a per-tick fire lock (``SET NX PX``): the same tick cannot be claimed "
        "again while it lives, even after a ``reset``. A claim never marked sent is "
        "re-published by the entry's owner once its claimer is dead.",
    ),
    Setting(
        "dcron_enqueue",
        "auto",
        "str",
        "How a claimed tick reaches the broker. ``auto``: when the broker is the "
        "registry's Redis (same server and database, kombu's ``redis://`` transport; the "
        "default deployment, where ``dcron_redis_url`` falls back to the broker URL), the "
        "message Celery would publish is pushed onto its queue list and the claim marked "
        "sent by one Lua script, so no crash or freeze can send a tick twice; with any "
        "other broker, as ``publish``. ``publish``: always Celery's own publish, then a "
        'separate "mark sent" (a crash between the two can send a tick twice, with the '
        "same task id). The instance logs which one it uses, and why, once.",
    ),
    Setting(
        "dcron_check_tasks",
        False,
        "bool",
        "What an instance does with an entry whose task its Celery app does not import: "
        "``False`` sends it by name, as Celery beat does (the workers must know it); ``True`` "
        "skips it and logs an error. Either way, an entry whose args or kwargs do not fit "
        "the signature of a task the instance imports is skipped and logged, naming the "
        "field: Celery would refuse to send it (a task with ``typing=False`` is not "
        "checked). The API and the CLI do not read this setting: they refuse unknown task "
        "names unless given ``check_tasks=False`` or ``--no-check-task``.",
    ),
    Setting(
        "dcron_default_task",
        None,
        "str or None",
        "Task that runs dynamic entries defined by a payload only (no task): it is called "
        "with the payload as its ``payload`` keyword argument. ``None``: such entries are "
        "refused.",
    ),
    Setting(
        "dcron_max_payload_bytes",
        65536,
        "int",
        "Largest JSON size of a dynamic entry's args, kwargs and payload together; bigger "
        "entries are refused when they are added.",
    ),
    Setting(
        "dcron_socket_timeout",
        None,
        "float (seconds) or None",
        "Socket timeout of Redis commands; must be below the node TTL. ``None``: half of "
        "``dcron_node_ttl``, at most 2 s (1.25 s by default).",
    ),
    Setting(
        "dcron_reconcile_interval",
        60.0,
        "float (seconds)",
        "How often each instance asks an external source of entries (the Django app "
        "``celery_dcron.contrib.django``, or any receiver of the ``reconcile`` signal) to "
        "bring the registry up to date. It also asks when it starts and after Redis lost "
        "its data. ``0`` turns the periodic call off.",
    ),
    Setting(
        "dcron_full_reconcile_interval",
        3600.0,
        "float (seconds)",
        "How often the reconcile of the Django app (``celery_dcron.contrib.django``) is a "
        "full one: every row compared with the registry, and the admin entries whose row "
        "is gone removed. The reconciles in between read only the rows changed since the "
        "last one. A beat instance also reconciles in full when it starts and after Redis "
        "lost its data. ``0``: every reconcile is a full one.",
    ),
    Setting(
        "dcron_metrics_port",
        None,
        "int or None",
        "Serve Prometheus metrics on this port (extra ``metrics``: prometheus-client); "
        "``None``: off; ``0``: a free port, logged. One port per instance on a host.",
    ),
    Setting(
        "dcron_metrics_addr",
        "0.0.0.0",
        "str",
        "Address the metrics server listens on.",
    ),
)

_DEFAULTS = {s.name: s.default for s in SETTINGS}

#: A timing setting left unset (``None`` in app.conf): derived from ``node_ttl_s`` when
#: Settings is built. (No number of seconds a user could mean.)
AUTO = float("-inf")
#: The socket timeout derived from a long node TTL stops here.
MAX_AUTO_SOCKET_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Validated ``dcron_*`` settings. Build with :meth:`from_app` or directly in tests."""

    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    #: options of a sentinel:// URL (``master_name``, ``sentinel_kwargs``, ...)
    redis_transport_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    redis_wait_replicas: int = 0
    redis_wait_timeout_s: float = 0.5
    key_prefix: str = "dcron"
    namespace: str = "default"
    #: ``AUTO``: a third of ``node_ttl_s``
    heartbeat_interval_s: float = AUTO
    node_ttl_s: float = 2.5
    #: a built-in strategy, or the dotted path of one of yours
    strategy: StrategyName | str = StrategyName.CONSISTENT_HASH
    virtual_nodes: int = 160
    node_weight: float = 1.0
    misfire_policy: MisfirePolicy = MisfirePolicy.ONCE
    misfire_grace_s: float | None = None
    misfire_max_catchup: int = 100
    lock_ttl_s: float = 30.0
    check_tasks: bool = False
    #: ``auto``: one script claims-to-sent when the broker is the registry's Redis
    enqueue: Literal["auto", "publish"] = "auto"
    #: ``AUTO``: half of ``node_ttl_s``, at most ``MAX_AUTO_SOCKET_TIMEOUT_S``
    socket_timeout_s: float = AUTO
    default_task: str | None = None
    max_payload_bytes: int = 65536
    reconcile_interval_s: float = 60.0
    #: the Django app's reconcile is a full one this often (0: always)
    full_reconcile_interval_s: float = 3600.0
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    #: ``None``: ``<host>:<slot>``, the slot chosen when joining
    node_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", parse_strategy(self.strategy))
        # Timings left to AUTO follow the node TTL, so that setting it alone is enough.
        if self.heartbeat_interval_s == AUTO:
            object.__setattr__(self, "heartbeat_interval_s", int(self.node_ttl_s * 1000 / 3) / 1000)
        if self.socket_timeout_s == AUTO:
            auto = min(self.node_ttl_s / 2, MAX_AUTO_SOCKET_TIMEOUT_S)
            object.__setattr__(self, "socket_timeout_s", auto)
        self._validate()

    def __repr__(self) -> str:
        return (
            f"Settings(redis_url={mask_url(self.redis_url)!r}, namespace={self.namespace!r}, "
            f"key_prefix={self.key_prefix!r}, strategy={str(self.strategy)!r}, "
            f"node_ttl_s={self.node_ttl_s}, heartbeat_interval_s={self.heartbeat_interval_s}, "
            f"node_id={self.node_id!r})"
        )

    @property
    def node_ttl_ms(self) -> int:
        return int(self.node_ttl_s * 1000)

    @property
    def heartbeat_interval_ms(self) -> int:
        return int(self.heartbeat_interval_s * 1000)

    @property
    def lock_ttl_ms(self) -> int:
        return int(self.lock_ttl_s * 1000)

    @property
    def redis_target(self) -> RedisTarget:
        """``redis_url`` and its transport options, parsed: single, sentinel or cluster."""
        return parse_redis_target(self.redis_url, self.redis_transport_options)

    def _validate(self) -> None:
        parse_redis_target(self.redis_url, self.redis_transport_options)  # names the setting
        if self.redis_wait_replicas < 0:
            raise ConfigurationError(
                f"dcron_redis_wait_replicas: {self.redis_wait_replicas} must be >= 0 (0: no wait)"
            )
        if self.redis_wait_timeout_s <= 0 or (
            self.redis_wait_replicas and self.redis_wait_timeout_s >= self.socket_timeout_s
        ):
            raise ConfigurationError(
                f"dcron_redis_wait_timeout: {self.redis_wait_timeout_s}s must be > 0 and below "
                f"dcron_socket_timeout ({self.socket_timeout_s}s)"
            )
        for name, value in (
            ("dcron_key_prefix", self.key_prefix),
            ("dcron_namespace", self.namespace),
        ):
            if not value or any(c in value for c in "{}:\n\r\t ") or len(value) > 100:
                raise ConfigurationError(
                    f"{name}: {value!r} must be 1-100 characters without spaces, ':', '{{' or '}}'"
                )
        _positive("dcron_heartbeat_interval", self.heartbeat_interval_s)
        _positive("dcron_node_ttl", self.node_ttl_s)
        if self.node_ttl_s < 3 * self.heartbeat_interval_s - 1e-9:
            raise ConfigurationError(
                f"dcron_node_ttl: {self.node_ttl_s}s must be at least 3 x "
                f"dcron_heartbeat_interval ({self.heartbeat_interval_s}s), or instances "
                "would expire between two heartbeats"
            )
        if self.socket_timeout_s <= 0 or self.socket_timeout_s >= self.node_ttl_s:
            raise ConfigurationError(
                f"dcron_socket_timeout: {self.socket_timeout_s}s must be > 0 and below "
                f"dcron_node_ttl ({self.node_ttl_s}s)"
            )
        if self.enqueue not in ("auto", "publish"):
            raise ConfigurationError(f"dcron_enqueue: {self.enqueue!r} must be 'auto' or 'publish'")
        _positive("dcron_lock_ttl", self.lock_ttl_s)
        _positive("dcron_node_weight", self.node_weight)
        if self.virtual_nodes < 1 or self.virtual_nodes > 10_000:
            raise ConfigurationError(
                f"dcron_virtual_nodes: {self.virtual_nodes} must be between 1 and 10000"
            )
        if self.misfire_max_catchup < 1:
            raise ConfigurationError(
                f"dcron_misfire_max_catchup: {self.misfire_max_catchup} must be >= 1"
            )
        if self.misfire_grace_s is not None:
            _positive("dcron_misfire_grace", self.misfire_grace_s)
        if self.max_payload_bytes < 1:
            raise ConfigurationError(
                f"dcron_max_payload_bytes: {self.max_payload_bytes} must be a positive integer"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigurationError(
                f"dcron_metrics_port: {self.metrics_port} must be a port 0-65535 or None"
            )
        if self.reconcile_interval_s < 0:
            raise ConfigurationError(
                f"dcron_reconcile_interval: {self.reconcile_interval_s} must be >= 0 (0: off)"
            )
        if self.full_reconcile_interval_s < 0:
            raise ConfigurationError(
                f"dcron_full_reconcile_interval: {self.full_reconcile_interval_s} must be "
                ">= 0 (0: every reconcile is a full one)"
            )
        if self.node_id is not None and (
            not self.node_id or len(self.node_id) > 200 or any(c in self.node_id for c in "\n\r\t ")
        ):
            raise ConfigurationError(
                f"dcron_node_id: {self.node_id!r} must be 1-200 characters without spaces, "
                "or None for the per-host default"
            )
        if self.default_task is not None and not self.default_task:
            raise ConfigurationError("dcron_default_task: must be a task name or None")

    @classmethod
    def from_app(cls, app: Any, **overrides: Any) -> Settings:
        """Read ``dcron_*`` settings from ``app.conf``; errors name the setting."""
        return cls.from_mapping(app.conf, broker_url=_broker_url(app), **overrides)

    @classmethod
    def from_mapping(
        cls, conf: Mapping[str, Any], *, broker_url: str | None = None, **overrides: Any
    ) -> Settings:
        def get(name: str) -> Any:
            value = conf.get(name)
            return _DEFAULTS[name] if value is None else value

        redis_url = conf.get("dcron_redis_url")
        options = conf.get("dcron_redis_transport_options")
        if not redis_url:
            redis_url = redis_url_from_broker(broker_url) or DEFAULT_REDIS_URL
            if options is None and redis_url.startswith("sentinel://"):
                broker_options = conf.get("broker_transport_options") or {}
                options = {k: broker_options[k] for k in SENTINEL_OPTIONS if k in broker_options}
        if not isinstance(redis_url, str):
            raise ConfigurationError(f"dcron_redis_url: expected a URL string, got {redis_url!r}")
        try:
            policy = MisfirePolicy.parse(
                get("dcron_misfire_policy"), field_name="dcron_misfire_policy"
            )
        except InvalidEntryError as exc:
            raise ConfigurationError(str(exc)) from None
        grace = conf.get("dcron_misfire_grace")
        kwargs: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_transport_options": {} if options is None else options,
            "redis_wait_replicas": _typed(
                "dcron_redis_wait_replicas", get("dcron_redis_wait_replicas"), int
            ),
            "redis_wait_timeout_s": _seconds(
                "dcron_redis_wait_timeout", get("dcron_redis_wait_timeout")
            ),
            "key_prefix": _typed("dcron_key_prefix", get("dcron_key_prefix"), str),
            "namespace": _typed("dcron_namespace", get("dcron_namespace"), str),
            "heartbeat_interval_s": _seconds_or_auto(
                "dcron_heartbeat_interval", get("dcron_heartbeat_interval")
            ),
            "node_ttl_s": _seconds("dcron_node_ttl", get("dcron_node_ttl")),
            "strategy": _typed("dcron_strategy", get("dcron_strategy"), str),
            "virtual_nodes": _typed("dcron_virtual_nodes", get("dcron_virtual_nodes"), int),
            "node_weight": _seconds("dcron_node_weight", get("dcron_node_weight")),
            "misfire_policy": policy,
            "misfire_grace_s": None if grace is None else _seconds("dcron_misfire_grace", grace),
            "misfire_max_catchup": _typed(
                "dcron_misfire_max_catchup", get("dcron_misfire_max_catchup"), int
            ),
            "lock_ttl_s": _seconds("dcron_lock_ttl", get("dcron_lock_ttl")),
            "check_tasks": _typed("dcron_check_tasks", get("dcron_check_tasks"), bool),
            "enqueue": _typed("dcron_enqueue", get("dcron_enqueue"), str),
            "socket_timeout_s": _seconds_or_auto(
                "dcron_socket_timeout", get("dcron_socket_timeout")
            ),
            "default_task": (
                None
                if conf.get("dcron_default_task") is None
                else _typed("dcron_default_task", conf.get("dcron_default_task"), str)
            ),
            "max_payload_bytes": _typed(
                "dcron_max_payload_bytes", get("dcron_max_payload_bytes"), int
            ),
            "reconcile_interval_s": _seconds(
                "dcron_reconcile_interval", get("dcron_reconcile_interval")
            ),
            "full_reconcile_interval_s": _seconds(
                "dcron_full_reconcile_interval", get("dcron_full_reconcile_interval")
            ),
            "metrics_port": (
                None
                if conf.get("dcron_metrics_port") is None
                else _typed("dcron_metrics_port", conf.get("dcron_metrics_port"), int)
            ),
            "metrics_addr": _typed("dcron_metrics_addr", get("dcron_metrics_addr"), str),
            "node_id": (
                None
                if conf.get("dcron_node_id") is None
                else _typed("dcron_node_id", conf.get("dcron_node_id"), str)
            ),
        }
        kwargs.update(overrides)
        return cls(**kwargs)


def _broker_url(app: Any) -> str | None:
    url = app.conf.broker_url or app.conf.get("broker_url")
    if isinstance(url, (list, tuple)):  # kombu's failover list: one ';'-joined URL
        url = ";".join(u for u in url if isinstance(u, str)) or None
    return url if isinstance(url, str) else None


def _typed(name: str, value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, bool):
        raise ConfigurationError(f"{name}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigurationError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _seconds(name: str, value: Any) -> float:
    from datetime import timedelta

    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name}: expected a number of seconds, got {value!r}")
    return float(value)


def _seconds_or_auto(name: str, value: Any) -> float:
    """Seconds, or ``AUTO`` for ``None`` (the setting follows ``dcron_node_ttl``)."""
    return AUTO if value is None else _seconds(name, value)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{name}: {value} must be a positive number")
