"""The Prometheus metrics record what the engine reports, and each one is documented."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from celery_dcron.metrics import NullMetrics, PrometheusMetrics, start_metrics

ROOT = Path(__file__).resolve().parents[2]


def value(name: str, **labels: str) -> float:
    got = REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_counters_histogram_and_gauges_record_per_namespace() -> None:
    m = PrometheusMetrics("unit-a")
    other = PrometheusMetrics("unit-b")
    before = value("dcron_ticks_dispatched_total", namespace="unit-a")
    m.dispatched([0.004, 0.03, 2.0], catchup=1)
    m.skipped("grace", 2)
    m.claims_lost(3)
    m.publish_failed()
    m.publish_rejected("arguments")
    m.publish_rejected("routing", 2)
    m.run_now()
    m.membership({"working": 3, "starting": 1}, entries=12, owned=4)
    m.membership({"working": 2}, entries=12, owned=6)
    m.registry_up(False)
    other.dispatched([0.001])
    assert value("dcron_ticks_dispatched_total", namespace="unit-a") == before + 3
    assert value("dcron_ticks_catchup_total", namespace="unit-a") == 1
    assert value("dcron_ticks_skipped_total", namespace="unit-a", reason="grace") == 2
    assert value("dcron_claims_lost_total", namespace="unit-a") == 3
    assert value("dcron_publish_failures_total", namespace="unit-a") == 1
    assert value("dcron_publish_rejected_total", namespace="unit-a", reason="arguments") == 1
    assert value("dcron_publish_rejected_total", namespace="unit-a", reason="routing") == 2
    assert value("dcron_run_now_total", namespace="unit-a") == 1
    assert value("dcron_dispatch_lateness_seconds_bucket", namespace="unit-a", le="0.005") == 1
    assert value("dcron_dispatch_lateness_seconds_bucket", namespace="unit-a", le="0.05") == 2
    assert value("dcron_dispatch_lateness_seconds_count", namespace="unit-a") == 3
    assert value("dcron_nodes", namespace="unit-a", status="working") == 2
    assert value("dcron_nodes", namespace="unit-a", status="starting") == 0  # gone: zeroed
    assert value("dcron_owned_entries", namespace="unit-a") == 6
    assert value("dcron_registry_up", namespace="unit-a") == 0
    assert value("dcron_ticks_dispatched_total", namespace="unit-b") == 1


def test_off_by_default_and_served_over_http_when_a_port_is_set() -> None:
    assert isinstance(start_metrics("unit-c", None), NullMetrics)
    import urllib.request

    from celery_dcron import metrics as module

    m = start_metrics("unit-c", 0, addr="127.0.0.1")
    m.dispatched([0.01])
    (server,) = [s for (addr, port), s in module._servers.items() if port == 0]
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'dcron_ticks_dispatched_total{namespace="unit-c"} 1.0' in body


def test_every_metric_is_documented() -> None:
    page = (ROOT / "docs" / "monitoring.rst").read_text()
    PrometheusMetrics("unit-d")
    names = {metric.name for metric in REGISTRY.collect() if metric.name.startswith("dcron_")}
    assert names, "no dcron_ metric registered"
    for name in names:
        documented = f"``{name}_total" in page or f"``{name}``" in page or f"``{name}{{" in page
        assert documented, name
