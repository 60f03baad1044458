"""dcron_redis_url forms (single, Sentinel, Cluster), transport options, broker fallback,
and the clients built from them (without connecting)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from celery_dcron import clients
from celery_dcron.config import Settings
from celery_dcron.exceptions import ConfigurationError
from celery_dcron.registry import Registry, scripts
from celery_dcron.topology import Topology, mask_url, parse_redis_target

SENTINELS = "sentinel://:s3cret@s1:26379/2;sentinel://s2;sentinel://s3:26380"
MASTER = {"master_name": "mymaster"}


def test_single_server_urls() -> None:
    for url in ("redis://h:1/0", "rediss://u:p@h/3", "unix:///tmp/r.sock?db=1"):
        target = parse_redis_target(url)
        assert target.topology is Topology.SINGLE and target.url == url


def test_sentinel_url_as_kombu_writes_it() -> None:
    target = parse_redis_target(SENTINELS, {**MASTER, "sentinel_kwargs": {"password": "x"}})
    assert target.topology is Topology.SENTINEL
    assert target.hosts == (("s1", 26379), ("s2", 26379), ("s3", 26380))
    # like kombu and Celery: the first URL's credentials and db are the master's
    assert (target.db, target.password, target.master_name) == (2, "s3cret", "mymaster")
    assert target.sentinel_kwargs == {"password": "x"}
    assert "s3cret" not in repr(target) and "'x'" not in repr(target)
    assert target.describe() == "sentinel master 'mymaster' via s1:26379,s2:26379,s3:26380 db 2"


def test_cluster_url() -> None:
    target = parse_redis_target(
        "rediss+cluster://u:p@n1:7000?ssl_cert_reqs=none;rediss+cluster://n2"
    )
    assert target.topology is Topology.CLUSTER
    assert target.hosts == (("n1", 7000), ("n2", 6379))
    assert target.url == "rediss://u:p@n1:7000?ssl_cert_reqs=none"  # what redis-py parses
    assert (target.username, target.password) == ("u", "p")
    assert parse_redis_target("redis+cluster://n1/0").url == "redis://n1"


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        (SENTINELS, None, r"dcron_redis_transport_options.*master_name"),
        (SENTINELS, {"master_name": ""}, r"master_name"),
        (SENTINELS, {**MASTER, "visibility_timeout": 3600}, r"unknown option.*visibility_timeout"),
        (SENTINELS, {**MASTER, "sentinel_kwargs": "pw"}, r"sentinel_kwargs"),
        (SENTINELS, {**MASTER, "min_other_sentinels": -1}, r"min_other_sentinels"),
        (SENTINELS, {**MASTER, "ssl": "yes"}, r"\['ssl'\]"),
        ("sentinel://s1?socket_timeout=1", MASTER, r"takes no query options"),
        ("sentinel://s1/x", MASTER, r"database must be a number"),
        ("sentinel://:26379", MASTER, r"has no host"),
        ("redis://h", MASTER, r"do not apply to a redis:// URL"),
        ("redis+cluster://h", MASTER, r"do not apply to a redis\+cluster:// URL"),
        ("redis+cluster://h:7000/1", None, r"only database 0"),
        ("redis+cluster://h:7000?db=2", None, r"only database 0"),
        ("redis://a;redis://b", None, r"several servers.*sentinel://.*redis\+cluster://"),
        ("redis+cluster://a;sentinel://b", MASTER, r"one scheme for all the parts"),
        ("http://h", None, r"not a Redis URL"),
        ("redis://h", "master_name=x", r"expected a dict"),
    ],
)
def test_bad_urls_and_options_name_the_setting_and_the_fix(
    url: str, options: Any, match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        Settings.from_mapping({"dcron_redis_url": url, "dcron_redis_transport_options": options})
    assert "dcron_redis_" in str(info.value)


def test_a_sentinel_broker_is_used_with_the_sentinel_keys_of_its_transport_options() -> None:
    conf = {
        "broker_transport_options": {
            "master_name": "cache",
            "visibility_timeout": 3600,  # kombu's, not ours: left out
            "sentinel_kwargs": {"password": "pw"},
        }
    }
    s = Settings.from_mapping(conf, broker_url="sentinel://a:26379;sentinel://b:26379")
    target = s.redis_target
    assert target.topology is Topology.SENTINEL and target.master_name == "cache"
    assert target.hosts == (("a", 26379), ("b", 26379))
    # dcron_redis_transport_options, when set, wins over the broker's
    own = Settings.from_mapping(
        {**conf, "dcron_redis_transport_options": {"master_name": "registry"}},
        broker_url="sentinel://a:26379",
    )
    assert own.redis_target.master_name == "registry"
    with pytest.raises(ConfigurationError, match="broker_transport_options"):
        Settings.from_mapping({}, broker_url="sentinel://a:26379")


def test_broker_fallback_keeps_single_server_behaviour() -> None:
    assert Settings.from_mapping({}, broker_url="redis://a;redis://b").redis_url == "redis://a"
    assert Settings.from_mapping({}, broker_url="redis+socket:///r.sock").redis_url == (
        "unix:///r.sock"
    )
    # an explicit URL ignores the broker's transport options
    s = Settings.from_mapping(
        {"dcron_redis_url": "redis://r", "broker_transport_options": {"master_name": "m"}},
        broker_url="sentinel://a",
    )
    assert s.redis_target.topology is Topology.SINGLE


def test_wait_settings_are_validated() -> None:
    s = Settings.from_mapping({"dcron_redis_wait_replicas": 1, "dcron_redis_wait_timeout": 0.2})
    assert (s.redis_wait_replicas, s.redis_wait_timeout_s) == (1, 0.2)
    with pytest.raises(ConfigurationError, match="dcron_redis_wait_replicas"):
        Settings.from_mapping({"dcron_redis_wait_replicas": -1})
    with pytest.raises(ConfigurationError, match=r"dcron_redis_wait_timeout.*dcron_socket_timeout"):
        Settings.from_mapping({"dcron_redis_wait_replicas": 1, "dcron_redis_wait_timeout": 3})


def test_lists_of_urls_are_masked_part_by_part() -> None:
    assert mask_url("sentinel://:a@h:1/0;sentinel://u:b@g:2") == (
        "sentinel://:***@h:1/0;sentinel://u:***@g:2"
    )
    s = Settings(redis_url=SENTINELS, redis_transport_options=MASTER)
    assert "s3cret" not in repr(s)


# -- clients, built without connecting ----------------------------------------------------


def test_sentinel_client_asks_the_sentinels_for_the_master() -> None:
    s = Settings(
        redis_url=SENTINELS,
        redis_transport_options={**MASTER, "sentinel_kwargs": {"password": "spw"}},
        socket_timeout_s=1.5,
    )
    client = clients.connect(s)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_class is SentinelManagedConnection
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"
    sentinels = pool.sentinel_manager.sentinels
    assert len(sentinels) == 3
    kwargs = sentinels[0].connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["socket_timeout"]) == ("spw", 1.5)
    tls = clients.connect(
        Settings(redis_url=SENTINELS, redis_transport_options={**MASTER, "ssl": True})
    )
    assert tls.connection_pool.connection_class is SentinelManagedSSLConnection


def test_cluster_client_is_built_on_first_use() -> None:
    """redis-py's RedisCluster connects in its constructor: an unreachable cluster at start
    must be an outage the engine retries, not a crash while the scheduler is set up."""
    s = Settings(redis_url="redis+cluster://127.0.0.1:1;redis+cluster://127.0.0.1:2")
    client = clients.connect(s)
    assert isinstance(client, clients.LazyCluster) and clients.is_cluster(client)
    registry = Registry.from_settings(s, client)  # registers the scripts: no I/O
    assert len(registry.transport.registered(scripts.CLAIM).sha) == 40
    with pytest.raises(redis.exceptions.RedisClusterException):
        client.ping()
