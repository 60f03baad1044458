"""The cluster clock (G7): Redis server time, tracked locally through an offset.

Instances never compare their own wall clocks. Each full heartbeat returns the Redis
server's ``TIME``; :class:`RedisClock` keeps ``server_ms - local_monotonic_ms`` from
the sample with the smallest round trip in a sliding window (the last 8 samples of the
last 30 s), so a skewed or stepped local clock changes nothing. :class:`ManualClock` is
for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

__all__ = ["ManualClock", "RedisClock"]


def _mono_ms() -> float:
    return time.monotonic() * 1000.0


class RedisClock:
    """Cluster time = local monotonic time + offset learned from Redis ``TIME``.

    ``now_ms()`` never goes backwards once synced. Until the first sample it follows the
    local wall clock (used only before any claim can be made: claims need Redis anyway),
    and those readings are not remembered: a skewed wall clock must not hold cluster time
    ahead of the server's.
    """

    def __init__(self, *, window: int = 8, max_age_ms: float = 30_000.0) -> None:
        self._lock = threading.Lock()
        # (rtt_ms, offset_ms, received_mono_ms)
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=window)
        #: samples older than this are dropped (full heartbeats can be seconds apart)
        self.max_age_ms = max_age_ms
        self._offset_ms: float | None = None
        self._last_ms = 0

    @property
    def synced(self) -> bool:
        return self._offset_ms is not None

    def observe(self, server_ms: float, sent_mono_ms: float, received_mono_ms: float) -> None:
        """Record one server time read between two local monotonic instants."""
        rtt = max(received_mono_ms - sent_mono_ms, 0.0)
        offset = server_ms - (sent_mono_ms + rtt / 2.0)
        with self._lock:
            self._samples.append((rtt, offset, received_mono_ms))
            while self._samples[0][2] < received_mono_ms - self.max_age_ms:
                self._samples.popleft()  # never the one just added
            self._offset_ms = min(self._samples)[1]

    def begin(self) -> float:
        """The local instant to pass to :meth:`observe` as ``sent_mono_ms``."""
        return _mono_ms()

    @property
    def offset_ms(self) -> float | None:
        return self._offset_ms

    @property
    def error_ms(self) -> int:
        """How far :meth:`now_ms` may be ahead of the server's clock, at most (ms).

        The server read its time somewhere within the sample's round trip, so the offset
        taken at its middle is off by at most half of it; plus 1 ms for the server time's
        millisecond floor, and a drift allowance of the local monotonic clock of 100 ppm
        since the sample. A tick due at ``T`` is published at ``T + error_ms`` cluster
        time, so never before ``T`` on the server's clock. Before the first sample:
        1,000 ms (nothing is claimed before Redis answers anyway).
        """
        with self._lock:
            if not self._samples:
                return 1_000
            rtt, _, at = min(self._samples)
        age = max(_mono_ms() - at, 0.0)
        return math.ceil(rtt / 2.0 + 1.0 + age * 1e-4)

    def now_ms(self) -> int:
        offset = self._offset_ms
        if offset is None:
            return int(time.time() * 1000)
        now = int(_mono_ms() + offset)
        with self._lock:
            if now < self._last_ms:
                now = self._last_ms
            self._last_ms = now
        return now

    def sleep_until(self, target_ms: int) -> None:
        """Return once ``now_ms() >= target_ms`` (at once if it already is)."""
        while True:
            delay_ms = target_ms - self.now_ms()
            if delay_ms <= 0:
                return
            time.sleep(delay_ms / 1000.0)


class ManualClock:
    """A clock that moves only when told to. For tests."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> int:
        return self._now_ms

    def begin(self) -> float:
        return 0.0

    def observe(self, server_ms: float, sent_mono_ms: float, received_mono_ms: float) -> None:
        """Ignored: a manual clock does not follow Redis."""

    #: a manual clock is exact
    error_ms = 0

    def sleep_until(self, target_ms: int) -> None:
        """Waiting takes no time here: the clock jumps to ``target_ms`` (never back)."""
        self._now_ms = max(self._now_ms, target_ms)

    def set(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def advance(self, delta_ms: int) -> int:
        self._now_ms += delta_ms
        return self._now_ms
