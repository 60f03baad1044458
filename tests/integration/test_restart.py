"""A restarted instance takes its id back at once (issue 12): engines on a real
redis-server, a crash (the engine stops stepping; its process is declared dead through
the injected ``pid_alive`` check), and a new incarnation on the same host.

Nothing here waits for the node TTL: the new incarnation owns the same entries and
re-publishes its predecessor's unsent claim, with the same task id, on its first step.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from celery_dcron.config import Settings
from celery_dcron.engine import Engine
from celery_dcron.entries import Node, NodeStatus, Tick
from celery_dcron.exceptions import ConfigurationError
from celery_dcron.strategies import get_strategy
from celery_dcron.ticks import task_id
from tests.enginekit import decisions, entries
from tests.integration.test_engine import Cluster

#: tokens of the incarnations declared dead (their pid is gone)
Dead = set[str]


def _kw(dead: Dead) -> dict[str, object]:
    return {"pid_alive": lambda node: node.token not in dead}


def _crash(cluster: Cluster, engine: Engine, dead: Dead) -> None:
    """SIGKILL: no more steps, no leave; the process is gone."""
    engine.stopped = True
    cluster.engines.remove(engine)
    dead.add(engine.membership.node.token)


def test_a_restart_takes_its_entries_and_unsent_claim_back_at_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    dead: Dead = set()
    a = cluster.add("a", entries(12), engine_kw=_kw(dead))
    b = cluster.add("b", entries(12))
    cluster.step_all(3)
    owned, owned_b = a.owned, b.owned
    assert owned and owned_b
    name = sorted(owned)[0]
    tick = cluster.clock.now_ms() - 10
    # "a" claims a tick, then crashes before publishing it
    assert a.registry.claim([Tick(name=name, tick_ms=tick)], node_id="a", lock_ttl_ms=30_000)[0].won
    old_token = a.membership.node.token
    _crash(cluster, a, dead)
    crashed_at = time.monotonic()
    a2 = cluster.add("a", entries(12), engine_kw=_kw(dead))
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        a2.step()
    elapsed = time.monotonic() - crashed_at
    assert elapsed < a2.settings.node_ttl_s  # well within the TTL: nothing waited for it
    assert a2.node_id == "a" and a2.membership.node.token != old_token
    assert a2.owned == owned  # ownership hashes the id: the same entries at once
    assert (name, tick, task_id("default", name, tick), "a") in cluster.recorder.sent
    assert a2.registry.pending() == []
    [reclaimed] = decisions(caplog, "node_reclaimed")
    assert (reclaimed["node"], reclaimed["previous"]) == ("a", old_token)
    cluster.step_all(2)
    assert b.owned == owned_b  # the others saw no membership change of their share
    assert [n.id for n in b.membership.working_nodes()] == ["a", "b"]


def test_the_old_incarnation_if_it_wakes_stops_and_overwrites_nothing(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """G1: a process taken for dead that was only frozen must not share the id."""
    dead: Dead = set()
    a = cluster.add("a", entries(4), engine_kw=_kw(dead))
    cluster.step_all(3)
    _crash(cluster, a, dead)
    a2 = cluster.add("a", entries(4), engine_kw=_kw(dead))
    cluster.step_all(2)
    sent = len(cluster.recorder.sent)
    a.stopped = False  # it wakes up
    a._next_beat = 0.0
    with caplog.at_level(logging.ERROR, logger="celery_dcron"):
        a.step()
        cluster.clock.advance(3000)
        a.step()
    assert a.membership.superseded and a.membership.status is NodeStatus.LEAVING
    assert [d["node"] for d in decisions(caplog, "node_superseded")] == ["a"]
    assert all(node == "a" for *_, node in cluster.recorder.sent[sent:])
    ((node,),) = [a2.registry.nodes()[0]]
    assert node.token == a2.membership.node.token and node.status is NodeStatus.WORKING
    a.stop()  # deregisters nothing: the id is the new incarnation's
    assert [n.id for n in a2.registry.nodes()[0]] == ["a"]
    cluster.advance(2000)
    assert a2.membership.status is NodeStatus.WORKING and not a2.membership.superseded


def test_an_explicit_id_held_by_a_live_process_is_refused(cluster: Cluster) -> None:
    cluster.add("a", entries(2))
    cluster.step_all(2)
    twin = cluster.add("a", entries(2))  # same process: its pid is alive
    with pytest.raises(ConfigurationError) as caught:
        twin.step()
    message = str(caught.value)
    assert "dcron_node_id" in message and "'a'" in message
    assert f"{socket.gethostname()}:{twin.membership.node.pid}" in message
    # held on another host, heartbeat not expired: refused too, whatever the local pid says
    twin.registry.heartbeat(
        Node(id="x", host="elsewhere", pid=1, token="1:1:zz", status=NodeStatus.WORKING),
        ttl_ms=60_000,
    )
    other = cluster.add("x", entries(2), engine_kw={"pid_alive": lambda node: False})
    with pytest.raises(ConfigurationError, match="elsewhere:1"):
        other.step()


def _default(cluster: Cluster, label: str, dead: Dead) -> Engine:
    """An engine without ``dcron_node_id`` (``label`` names its publishes)."""
    s = Settings(**{**cluster.base_settings, "node_id": None})  # type: ignore[arg-type]
    engine = Engine(
        settings=s, registry=cluster.registry_for(s), clock=cluster.clock,
        strategy=get_strategy(s.strategy), publish=cluster.recorder(label),  # type: ignore[arg-type]
        static_entries=entries(6), listen=False, pid_alive=lambda node: node.token not in dead,
    )  # fmt: skip
    cluster.engines.append(engine)
    return engine


def test_the_default_id_is_the_lowest_free_slot_of_the_host(cluster: Cluster) -> None:
    host = socket.gethostname()
    dead: Dead = set()
    a = _default(cluster, "a", dead)
    b = _default(cluster, "b", dead)
    cluster.step_all(2)
    assert (a.node_id, b.node_id) == (f"{host}:0", f"{host}:1")  # b: slot 0 is live
    owned = a.owned
    _crash(cluster, a, dead)
    a2 = _default(cluster, "a2", dead)
    c = _default(cluster, "c", dead)
    cluster.step_all(1)
    assert (a2.node_id, c.node_id) == (f"{host}:0", f"{host}:2")
    assert a2.owned == owned
