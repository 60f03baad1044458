"""Prometheus metrics of one scheduler instance (optional: extra ``metrics``).

Off by default. With ``dcron_metrics_port`` set, each beat instance serves
``http://<dcron_metrics_addr>:<port>/metrics`` (prometheus-client's own HTTP server, in a
daemon thread). The metrics go to prometheus-client's default registry, so an
application that already exposes metrics gets these too.

The metrics and what to alert on: ``docs/monitoring.rst`` (checked against this module
by a test). Every metric carries the label ``namespace``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .exceptions import ConfigurationError

__all__ = ["LATENESS_BUCKETS", "Metrics", "NullMetrics", "PrometheusMetrics", "start_metrics"]

logger = logging.getLogger(__name__)

#: Buckets of the lateness histogram, in seconds.
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What the engine reports. The base class records nothing (metrics off)."""

    def dispatched(self, lateness_s: Iterable[float], catchup: int = 0) -> None:
        """Ticks published in one pass, each with its lateness; ``catchup`` of them late."""

    def skipped(self, reason: str, count: int = 1) -> None:
        """Missed ticks that were not fired (``skip``, ``grace``, ``max_catchup``)."""

    def claims_lost(self, count: int) -> None:
        """Claims refused because another node claimed those ticks first."""

    def publish_failed(self, count: int = 1) -> None:
        """Publishes that failed (they are retried with the same task id)."""

    def publish_rejected(self, reason: str, count: int = 1) -> None:
        """Publishes that can never succeed (not retried), by reason (``arguments``, ...)."""

    def run_now(self, count: int = 1) -> None:
        """Run-now requests sent."""

    def membership(self, nodes_by_status: Mapping[str, int], entries: int, owned: int) -> None:
        """The view after a membership or entries change."""

    def registry_up(self, up: bool) -> None:
        """Whether Redis answers."""


class NullMetrics(Metrics):
    """Metrics off."""


class PrometheusMetrics(Metrics):
    """Metrics in prometheus-client's default registry (created once per process)."""

    _lock = threading.Lock()
    _collectors: dict[str, Any] | None = None

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        c = self._get_collectors()
        ns = namespace
        self._dispatched = c["dispatched"].labels(ns)
        self._catchup = c["catchup"].labels(ns)
        self._skipped = c["skipped"]
        self._lost = c["lost"].labels(ns)
        self._failed = c["failed"].labels(ns)
        self._rejected = c["rejected"]
        self._run_now = c["run_now"].labels(ns)
        self._lateness = c["lateness"].labels(ns)
        self._nodes = c["nodes"]
        self._entries = c["entries"].labels(ns)
        self._owned = c["owned"].labels(ns)
        self._up = c["up"].labels(ns)
        self._statuses: set[str] = set()

    @classmethod
    def _get_collectors(cls) -> dict[str, Any]:
        with cls._lock:
            if cls._collectors is None:
                try:
                    from prometheus_client import Counter, Gauge, Histogram
                except ImportError:
                    raise ConfigurationError(
                        "dcron_metrics_port: metrics need prometheus-client; "
                        'pip install "celery-dcron[metrics]"'
                    ) from None
                ns = ["namespace"]
                cls._collectors = {
                    "dispatched": Counter(
                        "dcron_ticks_dispatched", "Ticks this instance published", ns
                    ),
                    "catchup": Counter(
                        "dcron_ticks_catchup", "Ticks published late (catch-up)", ns
                    ),
                    "skipped": Counter(
                        "dcron_ticks_skipped",
                        "Missed ticks not fired, by reason",
                        ["namespace", "reason"],
                    ),
                    "lost": Counter(
                        "dcron_claims_lost", "Claims refused: another node claimed first", ns
                    ),
                    "failed": Counter(
                        "dcron_publish_failures", "Publishes that failed (retried)", ns
                    ),
                    "rejected": Counter(
                        "dcron_publish_rejected",
                        "Publishes that can never succeed (not retried), by reason",
                        ["namespace", "reason"],
                    ),
                    "run_now": Counter("dcron_run_now", "Run-now requests sent", ns),
                    "lateness": Histogram(
                        "dcron_dispatch_lateness_seconds",
                        "Publish time minus tick time",
                        ns,
                        buckets=LATENESS_BUCKETS,
                    ),
                    "nodes": Gauge(
                        "dcron_nodes", "Nodes of the namespace by status", ["namespace", "status"]
                    ),
                    "entries": Gauge("dcron_entries", "Entries in the registry", ns),
                    "owned": Gauge("dcron_owned_entries", "Entries this instance owns", ns),
                    "up": Gauge("dcron_registry_up", "1 while Redis answers", ns),
                }
            return cls._collectors

    def dispatched(self, lateness_s: Iterable[float], catchup: int = 0) -> None:
        n = 0
        for late in lateness_s:
            self._lateness.observe(max(late, 0.0))
            n += 1
        if n:
            self._dispatched.inc(n)
        if catchup:
            self._catchup.inc(catchup)

    def skipped(self, reason: str, count: int = 1) -> None:
        if count:
            self._skipped.labels(self.namespace, reason).inc(count)

    def claims_lost(self, count: int) -> None:
        if count:
            self._lost.inc(count)

    def publish_failed(self, count: int = 1) -> None:
        self._failed.inc(count)

    def publish_rejected(self, reason: str, count: int = 1) -> None:
        if count:
            self._rejected.labels(self.namespace, reason).inc(count)

    def run_now(self, count: int = 1) -> None:
        self._run_now.inc(count)

    def membership(self, nodes_by_status: Mapping[str, int], entries: int, owned: int) -> None:
        for status in self._statuses - set(nodes_by_status):
            self._nodes.labels(self.namespace, status).set(0)
        for status, count in nodes_by_status.items():
            self._nodes.labels(self.namespace, status).set(count)
        self._statuses |= set(nodes_by_status)
        self._entries.set(entries)
        self._owned.set(owned)

    def registry_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)


_servers: dict[tuple[str, int], Any] = {}


def start_metrics(namespace: str, port: int | None, addr: str = "0.0.0.0") -> Metrics:
    """Metrics for an engine: Prometheus when ``port`` is set (its HTTP server started once
    per address and port), else :class:`NullMetrics`. ``port=0`` picks a free port (logged)."""
    if port is None:
        return NullMetrics()
    metrics = PrometheusMetrics(namespace)
    key = (addr, port)
    if key not in _servers:
        from prometheus_client import start_http_server

        try:
            server, _thread = start_http_server(port, addr=addr)
        except OSError as exc:
            raise ConfigurationError(
                f"dcron_metrics_port: cannot serve metrics on {addr}:{port}: {exc}; give each "
                "instance on one host its own port"
            ) from None
        _servers[key] = server
        logger.info(
            "dcron: serving Prometheus metrics on http://%s:%d/metrics",
            addr,
            server.server_address[1],
        )
    return metrics
