"""A scheduler in its own process (`python -m controlplane.scheduler --metrics-port`), as the
chart deploys it: its cycles, admissions and the outcomes it wrote are on its own port, the
cluster's state is not (the API serves that), so nothing is counted twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import free_port, stop
from tests.integration.scheduler import conftest as scheduler_world
from tests.integration.scheduler.conftest import POOL, WAIT_S, Env

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

# The scheduler tests' fixtures: a real multi-node Ray and a world on SQLite.
ray_cluster = scheduler_world.ray_cluster
env = scheduler_world.env


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return None  # not listening yet
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_standalone_scheduler_serves_its_own_events(env: Env, ray_cluster: Any) -> None:
    cluster, _ = ray_cluster
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "controlplane.scheduler",
        f"--database-url={env.engine.url.render_as_string(hide_password=False)}",
        f"--ray-address={cluster.address}",
        f"--jobs-root={env.tmp / 'jobs'}",
        "--holder=metrics-test",
        "--interval=0.5",
        f"--metrics-port={port}",
        "--metrics-host=127.0.0.1",
    ]
    log = env.tmp / "scheduler.log"
    environ = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    try:
        job = env.submit(env.alpha, name="counted")
        url = f"http://127.0.0.1:{port}/metrics"
        seen: dict[str, dict[tuple[tuple[str, str], ...], float]] | None = None
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not counted: {seen}\n{log.read_text()}"
            seen = scrape(url)
            done = (seen or {}).get("nuri_job_outcomes_total", {})
            if done.get((("kind", "finetune"), ("outcome", "succeeded"))) == 1:
                break
            time.sleep(0.5)  # poll interval
        assert env.job(job["id"])["status"] == "SUCCEEDED"
        # One admission (more only if a placement was rolled back and retried).
        admitted = seen["nuri_admitted_jobs_total"][(("pool", POOL),)]
        assert admitted >= 1
        assert seen["nuri_admission_wait_time_seconds_count"] == {(("pool", POOL),): admitted}
        assert seen["nuri_admission_attempts_total"][(("result", "success"),)] == admitted
        assert seen["nuri_scheduler_cycle_duration_seconds_count"][()] >= admitted
        assert "nuri_pending_jobs" not in seen and "nuri_gpus_in_use" not in seen
    finally:
        stop(proc, timeout=60)
