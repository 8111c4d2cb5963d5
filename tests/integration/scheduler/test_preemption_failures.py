"""Preemption with checkpoint and resume, and a node lost mid-run, on a real Ray cluster."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, select

from controlplane.db.models import JobLog, UsageRecord
from tests.integration.scheduler.conftest import NODES, WAIT_S, Env, node_args

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def logs(env: Env, job_id: str) -> list[str]:
    with Session(env.engine) as s:
        return [
            r.line
            for r in s.exec(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)).all()
        ]  # type: ignore[arg-type]


def usage(env: Env, job_id: str) -> list[UsageRecord]:
    with Session(env.engine) as s:
        return list(
            s.exec(
                select(UsageRecord)
                .where(UsageRecord.job_id == job_id)
                .order_by(UsageRecord.attempt)
            ).all()
        )  # type: ignore[arg-type]


def test_borrower_is_preempted_for_the_owner_and_resumes(env: Env) -> None:
    slow = {"payload": "synthetic", "steps": 30, "step_seconds": 0.2, "checkpoint_every": 3}
    # alpha (nominal 8) borrows 8 of beta's idle nominal 16 with a preemptible job.
    borrower = env.submit(env.alpha, gpus=16, nodes=2, name="borrower", config=slow)
    running = env.until_status(borrower["id"], "RUNNING")
    env.run_until(lambda: env.job(borrower["id"])["checkpoint_uri"] is not None)
    # beta now needs its guaranteed 16 GPUs for non-preemptible training.
    owner = env.submit(
        env.beta,
        gpus=16,
        nodes=2,
        name="owner",
        priority_class="training",
        config={"payload": "synthetic", "steps": 4, "step_seconds": 0.1},
    )
    env.run_until(lambda: env.job(borrower["id"])["status"] in ("PREEMPTING", "QUEUED"))
    preempted = env.until_status(borrower["id"], "QUEUED", "ADMITTED", "RUNNING")
    assert preempted["attempt"] == 2 and preempted["times_preempted"] == 1
    assert preempted["checkpoint_uri"] is not None
    env.until_status(owner["id"], "RUNNING", "SUCCEEDED")
    done = env.until_status(borrower["id"], "SUCCEEDED")
    assert done["attempt"] == 2
    lines = logs(env, borrower["id"])
    assert any("stopped for preemption" in line for line in lines)
    resumed = [line for line in lines if "starting at step" in line]
    assert resumed[0].endswith("starting at step 0")
    assert int(resumed[-1].rsplit(" ", 1)[1]) > 0, "the second attempt resumed from a checkpoint"
    records = usage(env, borrower["id"])
    assert [r.attempt for r in records] == [1, 2] and all(r.ended_at for r in records)
    assert all(r.gpus == 16 and r.gpu_seconds > 0 for r in records)
    assert running["assignment"] != []


def test_node_lost_mid_run_requeues_and_resumes_elsewhere(
    env: Env, ray_cluster: tuple[Any, dict[str, Any]]
) -> None:
    cluster, handles = ray_cluster
    job = env.submit(
        env.alpha,
        gpus=8,
        name="survivor",
        config={"payload": "synthetic", "steps": 40, "step_seconds": 0.1, "checkpoint_every": 2},
    )
    running = env.until_status(job["id"], "RUNNING")
    env.run_until(lambda: env.job(job["id"])["checkpoint_uri"] is not None)
    victim = running["assignment"][0][0]
    cluster.remove_node(handles.pop(victim))
    try:
        env.run_until(lambda: env.job(job["id"])["attempt"] == 2)
        done = env.until_status(job["id"], "SUCCEEDED")
        assert done["assignment"] == []
        events = env.client.get(
            f"/v1/jobs/{job['id']}/events", headers={"Authorization": f"Bearer {env.alpha}"}
        ).json()
        requeue = [
            e
            for e in events["items"]
            if e["to_status"] == "QUEUED" and e["from_status"] == "RUNNING"
        ]
        assert requeue and "lost" in requeue[0]["message"]
        second = [e for e in events["items"] if e["to_status"] == "RUNNING"][-1]
        assert victim not in second["message"], "the retry ran on another node"
        lines = logs(env, job["id"])
        assert int([ln for ln in lines if "starting at step" in ln][-1].rsplit(" ", 1)[1]) > 0
        records = usage(env, job["id"])
        assert [r.attempt for r in records] == [1, 2]
        assert all(r.ended_at is not None and r.gpus == 8 for r in records)
        # Exact: each attempt is counted from its own start to its own end, once.
        for r in records:
            assert abs((r.ended_at - r.started_at).total_seconds() * 8 - r.gpu_seconds) < 1e-6
    finally:
        handles[victim] = cluster.add_node(wait=False, **node_args(victim))
        cluster.wait_for_nodes(timeout=WAIT_S)
    assert set(handles) == set(NODES)


def test_max_runtime_is_enforced_and_app_failures_are_not_retried(env: Env) -> None:
    from datetime import timedelta

    from controlplane.db.types import utcnow

    runaway = env.submit(
        env.alpha,
        gpus=8,
        name="runaway",
        max_runtime_s=60,
        config={"payload": "synthetic", "steps": 1000, "step_seconds": 0.1},
    )
    env.until_status(runaway["id"], "RUNNING")
    env.service.clock = lambda: utcnow() + timedelta(seconds=90)  # a minute and a half later
    try:
        failed = env.until_status(runaway["id"], "FAILED")
    finally:
        env.service.clock = utcnow
    assert failed["reasons"][0]["code"] == "max_runtime_exceeded"
    assert failed["attempt"] == 1 and failed["assignment"] == []
    # A payload that fails by itself is FAILED at once: retries are for infrastructure.
    broken = env.submit(
        env.alpha,
        gpus=8,
        name="broken",
        config={"payload": "synthetic", "steps": 10, "step_seconds": 0.05, "fail_at_step": 3},
    )
    done = env.until_status(broken["id"], "FAILED")
    assert done["attempt"] == 1 and "rank" in done["reasons"][0]["message"]
