"""The cluster clock follows Redis server time whatever the local clock says (G7)."""

from __future__ import annotations

import time

import pytest

from celery_dcron.clock import ManualClock, RedisClock


def test_offset_comes_from_the_sample_with_the_smallest_round_trip() -> None:
    clock = RedisClock()
    mono = time.monotonic() * 1000
    # server is 1 hour ahead of our monotonic-based estimate; a slow sample is off by 40 ms
    clock.observe(server_ms=mono + 3_600_000 + 40, sent_mono_ms=mono - 100, received_mono_ms=mono)
    clock.observe(server_ms=mono + 3_600_000, sent_mono_ms=mono - 1, received_mono_ms=mono + 1)
    assert clock.synced
    assert (
        clock.offset_ms is not None and abs(clock.offset_ms - 3_600_000) < 1e-3
    )  # the precise sample
    expected = time.monotonic() * 1000 + 3_600_000
    assert abs(clock.now_ms() - expected) < 50


def test_cluster_time_never_goes_backwards() -> None:
    clock = RedisClock()
    mono = time.monotonic() * 1000
    clock.observe(server_ms=mono + 10_000, sent_mono_ms=mono, received_mono_ms=mono)
    first = clock.now_ms()
    clock.observe(server_ms=mono - 10_000, sent_mono_ms=mono, received_mono_ms=mono)  # a step back
    assert clock.now_ms() >= first


def test_two_instances_with_skewed_local_clocks_agree() -> None:
    # Each instance's monotonic origin differs; both observe the same server time.
    a, b = RedisClock(), RedisClock()
    mono = time.monotonic() * 1000
    server = 1_800_000_000_000
    a.observe(server_ms=server, sent_mono_ms=mono, received_mono_ms=mono)
    b.observe(server_ms=server, sent_mono_ms=mono, received_mono_ms=mono)
    assert abs(a.now_ms() - b.now_ms()) < 5
    assert abs(a.now_ms() - server) < 1000


def test_a_reading_before_the_first_sample_does_not_hold_the_clock_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by tests/chaos/test_clock_skew.py: a beat whose wall clock was 30 s ahead read
    # the clock once before its first heartbeat (its node's start time), and the
    # never-backwards guard then held cluster time 30 s ahead: it fired 30 ticks early at
    # once, then nothing for 30 s.
    clock = RedisClock()
    real_s = time.time()
    monkeypatch.setattr(time, "time", lambda: real_s + 30.0)  # the local wall clock
    early = clock.now_ms()  # before any sample: the local wall clock
    monkeypatch.undo()
    assert abs(early - (real_s + 30.0) * 1000) < 1000
    mono = time.monotonic() * 1000
    clock.observe(server_ms=time.time() * 1000, sent_mono_ms=mono, received_mono_ms=mono)
    assert abs(clock.now_ms() - time.time() * 1000) < 1000, "cluster time is the server's"


def test_manual_clock() -> None:
    c = ManualClock(start_ms=1000)
    assert c.now_ms() == 1000
    assert c.advance(500) == 1500
    c.set(42)
    assert c.now_ms() == 42


def test_the_error_bound_covers_where_in_the_round_trip_the_server_read_its_time() -> None:
    """The server reads TIME anywhere in the round trip: half of it (of the best sample),
    plus 1 ms for the millisecond floor and a little drift, bounds how far cluster time can
    be ahead of the server's clock. Not synced: a large bound."""
    clock = RedisClock()
    assert clock.error_ms == 1_000
    mono = time.monotonic() * 1000
    clock.observe(server_ms=mono + 500, sent_mono_ms=mono - 20, received_mono_ms=mono)
    assert 11 <= clock.error_ms <= 12  # 10 ms half round trip + 1 ms
    clock.observe(server_ms=mono + 500, sent_mono_ms=mono - 4, received_mono_ms=mono)
    assert 3 <= clock.error_ms <= 4  # the better sample decides, as for the offset
    # Whatever instant of the round trip the server read, the truth is within the bound.
    for read_at in (mono - 4, mono - 2, mono):
        true_offset = 500 + mono - read_at  # server_ms - local instant of the read
        assert abs(clock.offset_ms - true_offset) <= clock.error_ms  # type: ignore[operator]
