"""A real multi-node Ray (ray.cluster_utils.Cluster) whose nodes advertise Nuri nodes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster
from sqlalchemy.engine import Engine

import quotas
from controlplane.db.engine import make_engine
from controlplane.jobstate import TERMINAL
from controlplane.scheduler import RayExecutor, SchedulerConfig, SchedulerService
from tests.conftest import ADMIN_TOKEN, bearer, make_client, ok

POOL = "kr-ray-h200"
NODES = [f"{POOL}-{i:03d}" for i in range(3)]
# How long a test waits for a condition (a job's status, a checkpoint) before it fails:
# generous, for a machine loaded by other test runs; pytest's timeout still bounds each test.
WAIT_S = float(os.environ.get("NURI_TEST_WAIT_S", "300"))


def node_args(name: str) -> dict[str, Any]:
    return {"num_cpus": 2, "num_gpus": 8, "resources": {f"pool:{POOL}": 8, f"nuri-node:{name}": 1}}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[Cluster, dict[str, Any]]]:
    # Nodes are awaited together with a generous limit (add_node alone waits 30 s for each).
    # Every port is Ray's free choice (a fixed default would collide with another run's Ray).
    cluster = Cluster()
    cluster.add_node(wait=False, num_cpus=2, include_dashboard=False, dashboard_agent_listen_port=0)
    handles = {name: cluster.add_node(wait=False, **node_args(name)) for name in NODES}
    cluster.wait_for_nodes(timeout=WAIT_S)
    ray.init(address=cluster.address, namespace="nuri", log_to_driver=False)
    try:
        yield cluster, handles
    finally:
        ray.shutdown()
        cluster.shutdown()


@dataclass
class Env:
    client: TestClient
    engine: Engine
    service: SchedulerService
    alpha: str  # member user tokens
    beta: str
    tmp: Path

    def submit(self, token: str, **body: Any) -> dict[str, Any]:
        job = {
            "kind": "finetune",
            "model": "axk1-tiny",
            "gpus": 8,
            "config": {
                "payload": "synthetic",
                "steps": 6,
                "step_seconds": 0.1,
                "checkpoint_every": 2,
            },
            **body,
        }
        out: dict[str, Any] = ok(self.client.post("/v1/jobs", headers=bearer(token), json=job), 201)
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = ok(self.client.get(f"/v1/jobs/{job_id}", headers=bearer(ADMIN_TOKEN)))
        return out

    def run_until(
        self,
        cond: Callable[[], bool],
        timeout: float = WAIT_S,
        service: SchedulerService | None = None,
    ) -> None:
        svc = service or self.service
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            svc.tick()
            if cond():
                return
            time.sleep(0.3)
        raise AssertionError("condition not reached in time")

    def until_status(self, job_id: str, *statuses: str, timeout: float = WAIT_S) -> dict[str, Any]:
        self.run_until(lambda: self.job(job_id)["status"] in statuses, timeout)
        return self.job(job_id)

    def finished(self, job_id: str) -> bool:
        return self.job(job_id)["status"] in {s.value for s in TERMINAL}


def engine_config() -> quotas.EngineConfig:
    # Short grace and no minimum runtime so preemption happens within a test's seconds.
    return quotas.EngineConfig(grace_period=8.0, min_runtime=0.0)


def make_service(
    engine: Engine, tmp: Path, holder: str = "test-scheduler", ttl: float = 15.0
) -> SchedulerService:
    return SchedulerService(
        engine,
        RayExecutor(ready_timeout_s=60),  # placement groups reserve slowly on a loaded machine
        SchedulerConfig(
            jobs_root=tmp / "jobs", holder=holder, lease_ttl_s=ttl, engine=engine_config()
        ),
    )


def setup_world(client: TestClient) -> tuple[str, str]:
    root = bearer(ADMIN_TOKEN)
    ok(
        client.post(
            "/v1/pools",
            headers=root,
            json={
                "name": POOL,
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": 8,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "interconnect_domains": ["nvl-a"],
                "node_count": 3,
            },
        ),
        201,
    )
    tokens = []
    for name, nominal in (("alpha", 8), ("beta", 16)):
        ok(client.post("/v1/members", headers=root, json={"name": name, "display_name": name}), 201)
        ok(
            client.post(
                "/v1/quotas",
                headers=root,
                json={
                    "member": name,
                    "pool": POOL,
                    "nominal_gpus": nominal,
                    "borrowing_limit": 16,
                    "lending_limit": 16,
                },
            ),
            201,
        )
        user = ok(
            client.post(
                "/v1/users",
                headers=root,
                json={"email": f"u@{name}.example", "name": name, "member": name},
            ),
            201,
        )
        tokens.append(
            ok(
                client.post("/v1/tokens", headers=root, json={"name": "t", "user_id": user["id"]}),
                201,
            )["token"]
        )
    return tokens[0], tokens[1]


@pytest.fixture
def env(ray_cluster: Any, tmp_path: Path) -> Iterator[Env]:
    engine = make_engine(f"sqlite:///{tmp_path / 'nuri.db'}")
    client = make_client(engine)
    alpha, beta = setup_world(client)
    service = make_service(engine, tmp_path)
    yield Env(client, engine, service, alpha, beta, tmp_path)
    # Leave no job of this test running on the shared cluster.
    from sqlmodel import Session, select

    from controlplane.db.models import Job

    with Session(engine) as s:
        for job in s.exec(select(Job)).all():
            service.ray.teardown(job.id, job.attempt)
    engine.dispose()
