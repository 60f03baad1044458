"""Settings, read once from the Celery app's configuration and validated.

Every setting is a lower-case Celery setting prefixed ``dcron_``; the table
:data:`SETTINGS` (:mod:`celery_dcron.settings_table`) is the single source of the names,
defaults and docs (the documentation's reference page is checked against it by a test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .enums import MisfirePolicy, StrategyName
from .exceptions import ConfigurationError, InvalidEntryError
from .settings_table import DEFAULT_REDIS_URL, SETTINGS, Setting
from .strategies import parse_strategy
from .topology import (
    SENTINEL_OPTIONS,
    RedisTarget,
    mask_url,
    parse_redis_target,
    redis_url_from_broker,
)

__all__ = ["SETTINGS", "Setting", "Settings", "mask_url"]

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
    #: a crashed instance (its Redis connections closed) is dropped in about a heartbeat
    crash_detection: bool = True
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
            "crash_detection": _typed("dcron_crash_detection", get("dcron_crash_detection"), bool),
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
