"""The dispatcher's enqueue path (the broker is the registry's Redis), on the memory
registry: ticks are built into a capture and sent with their claims in one step, never
marked sent apart, and a claim taken over while its node was frozen is not sent by it."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator

import pytest

from celery_dcron.engine import Engine
from celery_dcron.entries import EntrySpec, Tick
from celery_dcron.registry import BrokerCommand
from celery_dcron.registry.memory import MemoryRegistry
from tests.enginekit import MemoryCluster, decisions, entries


class FakeCapture:
    """Stands for :class:`celery_dcron.enqueue.Capture`: what "publish" built."""

    def __init__(self) -> None:
        self.commands: list[BrokerCommand] = []

    def take(self) -> list[BrokerCommand]:
        out, self.commands = self.commands, []
        return out

    def discard(self) -> None:
        self.commands = []


def wire(engine: Engine, on_publish: object = None) -> FakeCapture:
    capture = FakeCapture()

    @contextlib.contextmanager
    def open_capture() -> Iterator[FakeCapture]:
        yield capture

    def publish(spec: EntrySpec, tick: Tick, tid: str) -> None:
        capture.commands.append(BrokerCommand("lpush", "q", tid))
        if callable(on_publish):
            on_publish(engine, tick)

    engine.publish = publish
    engine.dispatcher.capture = open_capture
    return capture


def sent(c: MemoryCluster) -> Counter[tuple[str, int]]:
    registry: MemoryRegistry = c.registry
    return Counter((t.name, t.tick_ms) for t, _ in registry.enqueued)


def test_ticks_are_sent_with_their_claims_and_never_marked_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = MemoryCluster()
    engines = [c.add(n, entries(4)) for n in ("a", "b")]
    for e in engines:
        wire(e)
    marked: list[Tick] = []
    monkeypatch.setattr(c.registry, "mark_sent", marked.extend)
    c.step_all(2)
    c.align()
    c.advance(5000)
    counts = sent(c)
    assert len(counts) >= 16 and set(counts.values()) == {1}
    assert marked == [] and c.registry.pending() == []
    assert all(commands[0].value for _, commands in c.registry.enqueued)


def test_a_claim_taken_over_while_its_node_froze_is_sent_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owner freezes after building the message and before the script: the other
    node takes its claim over and sends it; the owner, awake, sends nothing."""
    c = MemoryCluster()
    a, b = c.add("a", entries(1)), c.add("b", entries(1))
    froze: list[Tick] = []

    def freeze(engine: Engine, tick: Tick) -> None:
        if froze:
            return
        froze.append(tick)
        other = b if engine is a else a
        c.clock.advance(c.ttl_ms + 1000)  # frozen past the node TTL
        for _ in range(3):
            other._next_beat = other._next_recover = 0.0
            other.step()

    wire(a, freeze)
    wire(b, freeze)
    c.step_all(2)
    c.align()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        c.advance(1000)
    (tick,) = froze
    assert sent(c)[(tick.name, tick.tick_ms)] == 1
    (taken,) = decisions(caplog, "taken_over")
    assert (taken["entry"], taken["tick_ms"]) == (tick.name, tick.tick_ms)
    assert c.registry.pending() == []


def test_a_command_redis_refuses_leaves_the_tick_pending_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_dcron.registry import Enqueued

    c = MemoryCluster()
    e = c.add("a", entries(1))
    wire(e)
    real = c.registry.enqueue
    refused: list[Tick] = []

    def refuse_once(sends: list[tuple[Tick, list[BrokerCommand]]], *, node_id: str) -> object:
        if not refused:
            refused.extend(t for t, _ in sends)
            return [Enqueued(t, sent=False, error="WRONGTYPE ...") for t, _ in sends]
        return real(sends, node_id=node_id)

    monkeypatch.setattr(c.registry, "enqueue", refuse_once)
    c.step_all(2)
    c.align()
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        for _ in range(30):
            c.clock.advance(100)
            e._next_recover = 0.0
            c.step_all()
    (tick,) = refused
    assert sent(c)[(tick.name, tick.tick_ms)] == 1  # retried, sent once
    failed = decisions(caplog, "publish_failed")
    assert [(f["entry"], f["tick_ms"]) for f in failed] == [(tick.name, tick.tick_ms)]
    assert "WRONGTYPE" in failed[0]["error"]


def test_a_run_now_taken_over_while_its_node_froze_is_sent_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owner takes a run-now request, builds its message and freezes before the
    script: the other node takes the request over (its holder is dead) and sends it; the
    owner, awake, finds the request no longer its own and sends nothing."""
    c = MemoryCluster()
    a, b = c.add("a", entries(1, every_s=3600)), c.add("b", entries(1, every_s=3600))
    c.step_all(2)
    owner, other = (a, b) if "e0" in a.view.owned else (b, a)
    asked: list[int] = []
    froze: list[Tick] = []

    def freeze(engine: Engine, tick: Tick) -> None:
        if engine is not owner or froze or tick.tick_ms not in asked:
            return
        froze.append(tick)
        c.clock.advance(c.ttl_ms + 1000)  # frozen past the node TTL
        for _ in range(3):
            other._next_beat = other._next_recover = 0.0
            other.requests.due = True
            other.step()

    wire(a, freeze)
    wire(b, freeze)
    asked.append(c.registry.run_now("e0"))
    owner.requests.due = True
    with caplog.at_level(logging.INFO, logger="celery_dcron"):
        owner.step()
    assert froze and "e0" in other.view.owned
    assert sent(c)[("e0", asked[0])] == 1
    assert c.registry.requests() == []
    assert "no longer held by this node; not sent" in caplog.text
    fired = [d for d in decisions(caplog, "fired") if d.get("run_now")]
    assert [(d["entry"], d["node"]) for d in fired] == [("e0", other.node_id)]
