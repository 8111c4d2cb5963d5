"""REST submit -> RUNNING on a local Ray, and sustained admissions/s, with Ray's own ceiling.

Three figures from one run on one local Ray (logical GPUs, one pool of 125 x 8-GPU nodes):

1. latency: a job submitted through the REST API (real app, auth, SQLite) until the scheduler
   reports it RUNNING with its supervisor and worker rank started; median and p95;
2. admissions/s with 1,000 small jobs queued at once, each admitted by the engine and given a
   reserved placement group pinned to its node (no worker processes: 1,000 supervisors and
   ranks would be 2,000 Python processes on a 2-core machine);
3. the ceiling: Ray creating and readying the same 1,000 placement groups directly.

    .venv/bin/python bench/e2e_latency.py [--latency-jobs 20] [--queued 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from ray.util.placement_group import (  # noqa: E402
    PlacementGroup,
    placement_group,
    remove_placement_group,
)

import quotas  # noqa: E402
from controlplane.api.app import create_app  # noqa: E402
from controlplane.db.engine import make_engine  # noqa: E402
from controlplane.scheduler import RayExecutor, SchedulerConfig, SchedulerService  # noqa: E402
from controlplane.scheduler.executor import LaunchSpec  # noqa: E402
from controlplane.settings import Settings  # noqa: E402

ADMIN = "nuri-bench-bootstrap-admin-token-0123456789"
POOL = "bench-h100"
NODES = [f"{POOL}-{i:03d}" for i in range(125)]


class PlacementOnlyExecutor(RayExecutor):
    """Reserves and readies the placement group like a launch, starts no processes."""

    def _start_supervisor(self, spec: LaunchSpec, pg: PlacementGroup) -> None:
        pass  # the placement group is reserved and ready; no process is started

    def status_many(
        self, jobs: list[tuple[str, int, int]], timeout_s: float | None = None
    ) -> dict[str, dict[str, Any] | Exception | None]:
        return {
            j: {"attempt": a, "state": "running", "errors": [], "events": [], "total_events": 0}
            for j, a, _ in jobs
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def setup(tmp: Path) -> tuple[TestClient, str, Any]:
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    app = create_app(Settings(bootstrap_admin_token=ADMIN, home=tmp, rate_limit_per_s=0), engine)
    c = TestClient(app)
    h = {"Authorization": f"Bearer {ADMIN}"}
    c.post(
        "/v1/pools",
        headers=h,
        json={
            "name": POOL,
            "gpu_model": "H100",
            "gpu_memory_gib": 80,
            "gpus_per_node": 8,
            "site": "Daejeon",
            "region": "kr-daejeon",
            "jurisdiction": "KR",
            "interconnect_domains": ["ib-a", "ib-b", "ib-c", "ib-d", "ib-e"],
            "node_count": len(NODES),
        },
    ).raise_for_status()
    c.post("/v1/members", headers=h, json={"name": "bench", "display_name": "B"}).raise_for_status()
    c.post(
        "/v1/quotas", headers=h, json={"member": "bench", "pool": POOL, "nominal_gpus": 1000}
    ).raise_for_status()
    user = c.post(
        "/v1/users", headers=h, json={"email": "b@bench.example", "name": "B", "member": "bench"}
    ).json()
    tok = c.post("/v1/tokens", headers=h, json={"name": "b", "user_id": user["id"]}).json()
    return c, tok["token"], engine


def latency(c: TestClient, token: str, engine: Any, tmp: Path, n: int) -> list[float]:
    svc = SchedulerService(
        engine,
        RayExecutor(),
        SchedulerConfig(jobs_root=tmp / "jobs", holder="bench", interval_s=0.05),
    )
    c.app.state.scheduler_wake = svc.wake  # type: ignore[attr-defined]
    svc.start()
    h = {"Authorization": f"Bearer {token}"}
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            job = c.post(
                "/v1/jobs",
                headers=h,
                json={
                    "kind": "inference",
                    "model": "axk1-tiny",
                    "gpus": 1,
                    "name": f"lat{i}",
                    "config": {"payload": "synthetic", "steps": 1000},
                },
            ).json()
            while c.get(f"/v1/jobs/{job['id']}", headers=h).json()["status"] != "RUNNING":
                time.sleep(0.005)
            out.append(time.perf_counter() - t0)
            c.post(f"/v1/jobs/{job['id']}/cancel", headers=h, json={})
    finally:
        svc.stop()
    # Let a last tick free the cancelled jobs' resources.
    SchedulerService(
        engine, RayExecutor(), SchedulerConfig(jobs_root=tmp / "jobs", holder="bench")
    ).tick()
    return out


def admissions(c: TestClient, token: str, engine: Any, tmp: Path, n: int) -> tuple[float, int]:
    h = {"Authorization": f"Bearer {token}"}
    ids = [
        c.post(
            "/v1/jobs",
            headers=h,
            json={
                "kind": "inference",
                "model": "axk1-tiny",
                "gpus": 1,
                "name": f"q{i}",
                "config": {"payload": "synthetic"},  # placement is measured, not a model
            },
        ).json()["id"]
        for i in range(n)
    ]
    svc = SchedulerService(
        engine,
        PlacementOnlyExecutor(ready_timeout_s=60),
        SchedulerConfig(
            jobs_root=tmp / "jobs", holder="bench", engine=quotas.EngineConfig(explain=False)
        ),
    )
    t0 = time.perf_counter()
    running = 0
    while running < n:
        report = svc.tick()
        running += len(report.launched)
        if not report.launched and not report.admitted:
            break
    elapsed = time.perf_counter() - t0
    for job_id in ids:
        svc.ray.teardown(job_id, 1)
    return running / elapsed, running


def raw_placement_groups(n: int) -> float:
    t0 = time.perf_counter()
    pgs = [
        placement_group(
            [{"GPU": 1.0, f"pool:{POOL}": 1.0, f"nuri-node:{NODES[i % len(NODES)]}": 0.001}],
            strategy="STRICT_PACK",
        )
        for i in range(n)
    ]
    ray.get([pg.ready() for pg in pgs], timeout=300)
    elapsed = time.perf_counter() - t0
    for pg in pgs:
        remove_placement_group(pg)
    return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--latency-jobs", type=int, default=20)
    p.add_argument("--queued", type=int, default=1000)
    args = p.parse_args()
    resources = {f"pool:{POOL}": 8.0 * len(NODES), **{f"nuri-node:{n}": 1.0 for n in NODES}}
    ray.init(
        address="local",  # a Ray of its own, never one already running on the machine
        num_cpus=4,
        num_gpus=8 * len(NODES),
        resources=resources,
        namespace="nuri",
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            c, token, engine = setup(tmp)
            lat = latency(c, token, engine, tmp, args.latency_jobs)
            ceiling = raw_placement_groups(args.queued)
            rate, admitted = admissions(c, token, engine, tmp, args.queued)
    finally:
        ray.shutdown()
    print(f"\nlocal Ray, {len(NODES)} nodes x 8 logical GPUs, SQLite, {os.cpu_count()} cores")
    print(
        f"submit -> RUNNING ({len(lat)} jobs, one at a time): median "
        f"{statistics.median(lat) * 1000:.0f} ms, p95 {percentile(lat, 0.95) * 1000:.0f} ms"
    )
    print(
        f"admissions with {args.queued} queued: {rate:.0f} jobs/s ({admitted} admitted and placed)"
    )
    print(
        f"Ray raw placement-group create+ready: {ceiling:.0f} groups/s "
        f"(nuri reaches {rate / ceiling:.0%} of it)"
    )
    # keep threads from hanging the interpreter at exit
    for t in threading.enumerate():
        if t.name == "nuri-scheduler":
            t.join(5)


if __name__ == "__main__":
    main()
