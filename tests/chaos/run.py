"""The shape every chaos scenario shares: start, inject faults, heal, stop, judge.

    run = Chaos(cluster, observer, "churn", policy="all", entries=every(12))
    beats = run.start(3, DCRON_E2E_POLICY="all")
    run.fault(f"SIGKILL {victim.name}")          # recorded for the summary
    report = run.finish()                        # heal, settle, stop, drain, judge, print
    report.assert_ok()

Durations: a scenario runs ``ci_s`` seconds in CI; ``DCRON_SOAK_SECONDS=600`` makes every
scenario that loops over faults run that long instead (a soak, by hand).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import pytest

from tests.chaos.observe import Fault, Observer, Report
from tests.e2e.harness import Beat, Cluster, Message

__all__ = [
    "HEARTBEAT_S",
    "SLACK_S",
    "SOAK_ENV",
    "TTL_S",
    "Chaos",
    "every",
    "soak_seconds",
    "soak_timeout",
]

TTL_S = 3.0  # DCRON_E2E_TTL of the harness
HEARTBEAT_S = 0.5  # DCRON_E2E_HEARTBEAT of the harness
#: Scheduling noise allowed on top of a bound (two cores shared with other test runs).
SLACK_S = 1.5
SOAK_ENV = "DCRON_SOAK_SECONDS"


def every(n: int) -> list[str]:
    return [f"every-1s-{i}" for i in range(n)]


def soak_seconds(ci_s: float) -> float:
    """How long the fault loop runs: ``$DCRON_SOAK_SECONDS`` if set, else ``ci_s``."""
    value = os.environ.get(SOAK_ENV)
    return float(value) if value else ci_s


def soak_timeout(ci_s: float) -> pytest.MarkDecorator:
    """A pytest-timeout mark that leaves room for a soak (the default is 300 s)."""
    return pytest.mark.timeout(max(300, int(soak_seconds(ci_s) * 1.5) + 120))


class Chaos:
    """One scenario: its cluster, its observer, the faults injected, and the verdict."""

    def __init__(
        self,
        cluster: Cluster,
        observer: Observer,
        name: str,
        *,
        policy: str,
        entries: Sequence[str],
    ) -> None:
        self.cluster = cluster
        self.observer = observer
        self.name = name
        self.policy = policy
        self.entries = list(entries)
        self.faults: list[Fault] = []
        self.started_s = time.time()
        self.extra: dict[str, object] = {}
        #: the messages ``finish(aside=...)`` kept out of the report
        self.aside: list[Message] = []

    def start(self, n: int, **env: str) -> list[Beat]:
        """Start ``n`` beats (all working) and wait until every entry arrives twice."""
        env = {"DCRON_E2E_POLICY": self.policy, "DCRON_E2E_ENTRIES": str(len(self.entries)), **env}
        beats = self.cluster.start(n, **env)
        self.observer.wait_each(self.entries, 2, since_s=time.time())
        self.started_s = time.time()
        return beats

    def fault(self, what: str) -> float:
        at = time.time()
        self.faults.append(Fault(at, what))
        return at

    def heal_beats(self) -> list[Beat]:
        """Resume every paused beat; the live ones (one per label) must be working."""
        live = self.cluster.live_beats()
        for beat in live:
            if beat.paused:
                beat.resume()
        self.cluster.wait_working(*live)
        return live

    def finish(
        self,
        *,
        settle: int = 3,
        allowed: Callable[[str, int], bool] | None = None,
        aside: Callable[[Message], bool] | None = None,
    ) -> Report:
        """Heal, let every entry arrive ``settle`` more times, stop all beats (SIGTERM),
        drain the queue and build the report (printed, and appended to the results file).
        ``aside(message)``: a message the scenario checks itself (a run-now), kept out of
        the report and put in :attr:`aside`."""
        duration = time.time() - self.started_s
        self.heal_beats()
        self.observer.wait_each(self.entries, settle, since_s=time.time(), timeout=40)
        codes = self.cluster.stop_all()
        deliveries = self.observer.stop()
        if aside is not None:
            self.aside = [d.message for d in deliveries if aside(d.message)]
            deliveries = [d for d in deliveries if not aside(d.message)]
        report = Report.build(
            self.name,
            self.cluster,
            deliveries,
            policy=self.policy,
            entries=self.entries,
            duration_s=duration,
            faults=self.faults,
            allowed=allowed,
        )
        report.extra.update(self.extra)
        bad_exits = {name: code for name, code in codes.items() if code != 0}
        if bad_exits:
            report.problems.append(f"beats exited with errors on SIGTERM: {bad_exits}")
        report.emit()
        return report
