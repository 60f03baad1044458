"""Settings: defaults, validation errors that name the setting, masked secrets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from celery_dcron.config import SETTINGS, Settings, mask_url
from celery_dcron.entries import MisfirePolicy
from celery_dcron.exceptions import ConfigurationError


def test_defaults() -> None:
    s = Settings.from_mapping({})
    assert s.redis_url == "redis://localhost:6379/0"
    assert (s.key_prefix, s.namespace, s.strategy) == ("dcron", "default", "consistent_hash")
    # failover within ~2.5 s out of the box; heartbeat and socket timeout follow the TTL
    assert (s.node_ttl_s, s.heartbeat_interval_s, s.socket_timeout_s) == (2.5, 0.833, 1.25)
    assert s.misfire_policy is MisfirePolicy.ONCE and s.misfire_grace_s is None


@pytest.mark.parametrize(
    ("ttl", "heartbeat", "socket_timeout"),
    [(2, 0.666, 1.0), (0.3, 0.1, 0.15), (6, 2.0, 2.0), (15, 5.0, 2.0)],
)
def test_setting_the_node_ttl_alone_is_enough(
    ttl: float, heartbeat: float, socket_timeout: float
) -> None:
    """Heartbeat (a third) and socket timeout (half, at most 2 s) follow the TTL unless set;
    before, ``dcron_node_ttl = 2`` alone stopped every beat (heartbeat must be <= TTL/3)."""
    s = Settings.from_mapping({"dcron_node_ttl": ttl})
    assert (s.node_ttl_s, s.heartbeat_interval_s, s.socket_timeout_s) == (
        ttl,
        heartbeat,
        socket_timeout,
    )
    explicit = Settings.from_mapping(
        {"dcron_node_ttl": 9, "dcron_heartbeat_interval": 1, "dcron_socket_timeout": 0.5}
    )
    assert (explicit.heartbeat_interval_s, explicit.socket_timeout_s) == (1.0, 0.5)


def test_redis_url_falls_back_to_a_redis_broker_only() -> None:
    assert Settings.from_mapping({}, broker_url="redis://b:6380/2").redis_url == "redis://b:6380/2"
    assert Settings.from_mapping({}, broker_url="rediss://b/0").redis_url == "rediss://b/0"
    amqp = Settings.from_mapping({}, broker_url="amqp://guest@localhost//")
    assert amqp.redis_url == "redis://localhost:6379/0"
    explicit = Settings.from_mapping(
        {"dcron_redis_url": "unix:///tmp/r.sock"}, broker_url="redis://b"
    )
    assert explicit.redis_url == "unix:///tmp/r.sock"


@pytest.mark.parametrize(
    ("conf", "names"),
    [
        ({"dcron_redis_url": "http://x"}, "dcron_redis_url"),
        ({"dcron_node_ttl": 1, "dcron_heartbeat_interval": 1}, "dcron_node_ttl"),
        ({"dcron_node_ttl": "5"}, "dcron_node_ttl"),
        ({"dcron_heartbeat_interval": -1}, "dcron_heartbeat_interval"),
        ({"dcron_misfire_policy": "sometimes"}, "dcron_misfire_policy"),
        ({"dcron_namespace": "a:b"}, "dcron_namespace"),
        ({"dcron_key_prefix": "{x}"}, "dcron_key_prefix"),
        ({"dcron_virtual_nodes": 0}, "dcron_virtual_nodes"),
        ({"dcron_virtual_nodes": True}, "dcron_virtual_nodes"),
        ({"dcron_misfire_grace": 0}, "dcron_misfire_grace"),
        ({"dcron_socket_timeout": 10}, "dcron_socket_timeout"),
        ({"dcron_check_tasks": "yes"}, "dcron_check_tasks"),
    ],
)
def test_invalid_settings_name_the_setting(conf: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigurationError, match=names):
        Settings.from_mapping(conf)


def test_timedeltas_are_accepted_for_durations() -> None:
    s = Settings.from_mapping(
        {"dcron_node_ttl": timedelta(seconds=9), "dcron_misfire_grace": timedelta(minutes=1)}
    )
    assert s.node_ttl_s == 9.0 and s.misfire_grace_s == 60.0


def test_repr_masks_the_password() -> None:
    s = Settings(redis_url="redis://user:s3cret@host:6379/0")
    assert "s3cret" not in repr(s) and "***" in repr(s)
    assert mask_url("rediss://:pw@h:1/0") == "rediss://:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_every_setting_is_documented_with_a_default() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert all(n.startswith("dcron_") and s.doc for n, s in zip(names, SETTINGS, strict=True))
    fields = set(Settings.__dataclass_fields__)
    # every field of Settings is reachable from exactly one documented setting
    assert len(fields) == len(SETTINGS)
