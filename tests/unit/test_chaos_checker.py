"""The chaos suite's duplicate checker (tests/chaos/observe.py) excuses only the windows
the README documents: here, a publish the broker held past the node TTL."""

from __future__ import annotations

from tests.chaos.observe import HELD_RE, _held, broker_held
from tests.e2e.harness import Fired

HOLD_START = 1_000.0  # epoch s
HOLD = [(HOLD_START, 3.0)]


def fired(beat: str, tick_s: float, logged_at: float) -> Fired:
    return Fired(
        entry="every-1s-0", tick_ms=int(tick_s * 1000), node=beat, task_id="id",
        logged_at=logged_at, beat=beat,
    )  # fmt: skip


def held(tick_s: float, logged_at: float, *, ids: int = 1, again: tuple[str, ...] = ("b",)) -> str:
    key = ("every-1s-0", int(tick_s * 1000))
    senders = [fired("a", tick_s, logged_at), fired("b", tick_s, logged_at + 1)]
    return _held(key, 2, {str(i) for i in range(ids)}, senders, list(again), HOLD)


def test_a_tick_published_as_the_broker_began_to_hold_is_the_documented_window() -> None:
    # a published its tick just before the hold, then blocked on its next publish; it
    # logged "fired" once that failed, after b took it for dead and re-published the claim
    assert "taken for dead" in held(HOLD_START - 0.5, HOLD_START + 3.2)
    assert "taken for dead" in held(HOLD_START + 2.5, HOLD_START + 3.2)


def test_any_other_duplicate_is_not() -> None:
    assert held(HOLD_START - 30, HOLD_START + 3.2) == ""  # a tick long before the hold
    assert held(HOLD_START + 10, HOLD_START + 10.2) == ""  # after it
    assert held(HOLD_START - 0.5, HOLD_START - 0.4) == ""  # a logged it before the hold
    assert held(HOLD_START - 0.5, HOLD_START + 3.2, ids=2) == ""  # another task id
    assert held(HOLD_START - 0.5, HOLD_START + 3.2, again=()) == ""  # nobody re-published
    no_hold = _held(("every-1s-0", int(HOLD_START * 1000)), 2, {"id"}, [], ["b"], [])
    assert no_hold == ""


def test_the_scenarios_fault_name_gives_the_hold() -> None:
    (seconds,) = HELD_RE.match(f"{broker_held(3.0)}, then broker-down 4s").groups()  # type: ignore[union-attr]
    assert float(seconds) == 3.0
    assert HELD_RE.match("broker-down 4s") is None


def test_the_e2e_checker_excuses_a_tick_sent_just_before_the_registry_was_cut_off() -> None:
    """tests/e2e/harness.py: a beat that sent a tick and lost the registry's master before
    its "sent" mark landed leaves a pending claim that the next owner re-publishes (the
    window G1 documents, "cut off from Redis"); nothing else is excused."""
    from collections import Counter

    from tests.e2e.harness import Published

    key = ("every-1s-0", 1_000_000)

    def why(cut_at: float, *, again: set[str] | None = None) -> str:
        pub = Published(
            counts=Counter({key: 2}), messages=[],
            fired=[fired("a", 1_000.0, 1_000.01), fired("b", 1_000.0, 1_003.0)],
            republished={key: {"b"} if again is None else again},
            registry_cut_at=[cut_at],
        )  # fmt: skip
        return pub.kill_window(key, 2)

    assert "registry master killed +0.190s after a sent" in why(1_000.2)
    # the line comes before the mark, which can be under way when the master dies; and a
    # claim made just before the cut can be sent just after it
    assert "registry master killed +0.002s after a sent" in why(1_000.012)
    assert "registry master killed -0.400s after a sent" in why(999.61)
    assert why(999.4) == ""  # sent long after the cut
    assert why(1_001.5) == ""  # long after: its mark had landed
    assert why(1_000.2, again=set()) == ""  # not a re-published claim
