"""`nuri api --workers 2`: each worker counts in its own files and whichever answers /metrics
(or the parent's metrics port) shows the sum over both."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import free_port, nuri_server
from tests.integration.observability import promtool

ADMIN = "nuri-metrics-workers-admin-token-0123456789abcdef"
WAIT_S = 120.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def unmatched_requests(text: str) -> float:
    """API requests no route matched, over every status, as one exposition counts them."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nuri_api_request_duration_seconds_count" and s.labels["route"] == "unmatched"
    )


def test_counters_of_both_workers_are_summed(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    home = tmp_path / ".nuri"
    env = {
        **os.environ,
        "NURI_HOME": str(home),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
        "NURI_WARM_PLANNER": "false",
        "NURI_METRICS_PORT": str(metrics_port),
    }
    env.pop("NURI_DATABASE_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{port}"
    args = ["api", "--workers", "2", "--port", str(port)]
    with nuri_server(args, port, env, tmp_path, tmp_path / "api.log") as proc:
        counts = home / "prometheus" / str(proc.pid)

        def one(_: int) -> int:
            # A connection of its own each time, so the kernel spreads them over the workers.
            return httpx.get(f"{url}/no/such/route", timeout=30).status_code

        sent = 0
        deadline = time.monotonic() + WAIT_S
        # Each worker creates its histogram file when it first counts a request.
        while len(list(counts.glob("histogram_*.db"))) < 2:
            assert time.monotonic() < deadline, f"one worker answered everything: {counts}"
            with ThreadPoolExecutor(8) as pool:
                assert set(pool.map(one, range(40))) == {404}
            sent += 40
        for _ in range(6):  # answered by either worker, or by the parent's metrics port
            assert unmatched_requests(httpx.get(f"{url}/metrics", timeout=30).text) == sent
        parent = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
        assert unmatched_requests(parent) == sent
        assert "# TYPE nuri_pending_jobs gauge" in parent
        exposition = httpx.get(f"{url}/metrics", timeout=30).text
    promtool.assert_clean(exposition)
