"""Each beat serves its Prometheus metrics: what it dispatched, lateness, the node view."""

from __future__ import annotations

import re
import socket
import urllib.request

from tests.e2e.harness import KEYS, Cluster, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r"^(dcron_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_two_beats_serve_metrics_that_add_up(cluster: Cluster) -> None:
    ports = [free_port(), free_port()]
    # 24 entries: with 6, consistent hashing left one beat without any (about 1 run in 32)
    beats = [cluster.spawn(DCRON_E2E_METRICS_PORT=str(p), DCRON_E2E_ENTRIES="24") for p in ports]
    cluster.wait_working(*beats)
    cluster.wait_ticks(3)
    ns = '{namespace="e2e"}'
    wait_until(
        lambda: all(scrape(p).get(f"dcron_ticks_dispatched_total{ns}", 0) > 0 for p in ports),
        timeout=20, what="both beats to report dispatched ticks",
    )  # fmt: skip
    a, b = (scrape(p) for p in ports)
    entries = len(cluster.client().hkeys(KEYS.entries))  # 24 + celery.backend_cleanup
    for m in (a, b):
        assert m['dcron_nodes{namespace="e2e",status="working"}'] == 2
        assert m[f"dcron_entries{ns}"] == entries
        assert m[f"dcron_registry_up{ns}"] == 1
        # one observation per tick sent (observed just before the counter moves, so a
        # scrape mid-pass may see up to one pass more in the histogram)
        count = m[f"dcron_dispatch_lateness_seconds_count{ns}"]
        total = m[f"dcron_ticks_dispatched_total{ns}"]
        assert total <= count <= total + entries, m
        # ticks leave on time: within 1 s, even on a loaded two-core CI machine
        on_time = m['dcron_dispatch_lateness_seconds_bucket{le="1.0",namespace="e2e"}']
        assert on_time >= 0.9 * count, m
    assert a[f"dcron_owned_entries{ns}"] + b[f"dcron_owned_entries{ns}"] == entries
    cluster.stop_all()
    published = cluster.count_published()
    published.assert_once()
