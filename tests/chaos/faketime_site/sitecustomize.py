"""Loaded (as ``sitecustomize``) only by the beats that the clock-skew test runs under
libfaketime: this folder is first on their ``PYTHONPATH``, and nowhere else.

libfaketime 0.9.10 (Debian 12) with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` breaks
``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``, which ``time.sleep`` uses since
Python 3.11: every ``time.sleep`` fails with ``OSError: [Errno 22] Invalid argument``
(wolfcw/libfaketime#426). Faking the monotonic clock instead hangs every timed wait of
a thread (``Event.wait``: ``sem_clockwait`` is not intercepted). So the monotonic clock
stays real and ``time.sleep`` waits in ``select()``: the same wait, through a call that
libfaketime leaves alone. The wall clock (``time.time``, ``datetime.now``, logging) is
the one libfaketime skews, which is what the test is about.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [], [], left)


time.sleep = _sleep
