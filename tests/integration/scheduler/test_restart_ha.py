"""The control plane killed mid-run, and two schedulers on PostgreSQL: one leader at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlmodel import Session, select

from controlplane.db.engine import make_engine
from controlplane.db.models import UsageRecord
from controlplane.scheduler import lease
from tests.conftest import ADMIN_TOKEN, bearer, make_client, ok
from tests.integration.scheduler.conftest import WAIT_S, Env, make_service, setup_world

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

# Long enough that a leader's own lease never lapses between two of its cycles on a loaded
# machine (it would take a new token); a standby takes over this long after the leader dies.
LEASE_TTL_S = 10.0


def placement_groups_named(name: str) -> int:
    return sum(1 for pg in ray.util.placement_group_table().values() if pg.get("name") == name)


def wait_for(cond: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def scheduler_process(env: Env, ray_cluster: Any) -> Iterator[Any]:
    cluster, _ = ray_cluster
    procs: list[subprocess.Popen[bytes]] = []

    def start(holder: str) -> subprocess.Popen[bytes]:
        db = env.engine.url.render_as_string(hide_password=False)
        cmd = [
            sys.executable,
            "-m",
            "controlplane.scheduler",
            "--database-url",
            db,
            "--ray-address",
            cluster.address,
            "--checkpoint-root",
            str(env.tmp / "ckpt"),
            "--holder",
            holder,
            "--lease-ttl",
            str(LEASE_TTL_S),
            "--interval",
            "0.5",
            "--grace-period",
            "8",
            "--min-runtime",
            "0",
        ]
        log = open(env.tmp / f"{holder}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_control_plane_killed_mid_run_continues_without_duplicates(
    env: Env, scheduler_process: Any
) -> None:
    first = scheduler_process("sched-a")
    job = env.submit(
        env.alpha,
        gpus=8,
        name="long",
        config={"payload": "synthetic", "steps": 40, "step_seconds": 0.15, "checkpoint_every": 5},
    )
    wait_for(lambda: env.job(job["id"])["status"] == "RUNNING")
    os.kill(first.pid, signal.SIGKILL)  # no cleanup, no lease release
    first.wait(10)
    pg_name = f"nuri-job-{job['id']}-a1"
    assert placement_groups_named(pg_name) == 1
    assert env.job(job["id"])["status"] == "RUNNING", "the job outlives its control plane"

    scheduler_process("sched-b")
    wait_for(lambda: env.job(job["id"])["status"] == "SUCCEEDED")
    done = env.job(job["id"])
    assert done["attempt"] == 1, "re-attached, not restarted"
    assert placement_groups_named(pg_name) == 1, "no second placement group"
    events = ok(env.client.get(f"/v1/jobs/{job['id']}/events", headers=bearer(env.alpha)))
    assert [e["to_status"] for e in events["items"]].count("RUNNING") == 1
    steps = ok(env.client.get(f"/v1/jobs/{job['id']}/metrics", headers=bearer(env.alpha)))
    assert [m["step"] for m in steps["items"]] == list(range(1, 41)), "no step lost or doubled"
    with Session(env.engine) as s:
        records = s.exec(select(UsageRecord).where(UsageRecord.job_id == job["id"])).all()
        assert len(records) == 1 and records[0].ended_at is not None
        lease_row = lease.current(s)
        assert lease_row is not None and lease_row.holder == "sched-b" and lease_row.token == 2


def test_two_schedulers_on_postgres_one_leader(
    ray_cluster: Any, pg_database: str, tmp_path: Path
) -> None:
    engine = make_engine(pg_database)
    client = make_client(engine)
    alpha, _beta = setup_world(client)
    a = make_service(engine, tmp_path, holder="a", ttl=LEASE_TTL_S)
    b = make_service(engine, tmp_path, holder="b", ttl=LEASE_TTL_S)
    try:
        assert a.tick().leader and not b.tick().leader
        job = ok(
            client.post(
                "/v1/jobs",
                headers=bearer(alpha),
                json={
                    "kind": "finetune",
                    "model": "axk1-tiny",
                    "gpus": 8,
                    "config": {"payload": "synthetic", "steps": 30, "step_seconds": 0.15},
                },
            ),
            201,
        )
        standby = b.tick()
        assert not standby.leader and standby.admitted == []

        def status() -> str:
            out: str = ok(client.get(f"/v1/jobs/{job['id']}", headers=bearer(ADMIN_TOKEN)))[
                "status"
            ]
            return out

        assert status() == "QUEUED", "the standby changed nothing"
        assert job["id"] in a.tick().admitted
        wait_for(lambda: a.tick() is not None and status() == "RUNNING")
        # The leader dies (stops renewing). The standby takes over once the lease expires.
        wait_for(lambda: b.tick().leader)
        report = b.tick()
        assert report.leader and report.token == 2
        # The old leader wakes up: it is refused, and its stale token fences nothing.
        assert not a.tick().leader
        with Session(engine) as s, pytest.raises(lease.NotLeader):
            lease.fence(s, "a", 1, a.clock(), LEASE_TTL_S)
        wait_for(lambda: b.tick() is not None and status() == "SUCCEEDED")
        assert placement_groups_named(f"nuri-job-{job['id']}-a1") == 1
    finally:
        with Session(engine) as s:
            from controlplane.db.models import Job

            for j in s.exec(select(Job)).all():
                a.ray.teardown(j.id, j.attempt)
        engine.dispose()
