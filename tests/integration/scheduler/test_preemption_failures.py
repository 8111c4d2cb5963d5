"""Preemption with checkpoint and resume, and a node lost mid-run, on a real Ray cluster."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlalchemy import update
from sqlmodel import Session, col, select

from controlplane.db.models import Job, JobEvent, JobLog, UsageRecord
from controlplane.db.types import utcnow
from controlplane.jobstate import JobStatus, transition
from controlplane.scheduler.executor import placement_group_name, supervisor_name
from tests.integration.scheduler.conftest import (
    NODES,
    WAIT_S,
    Env,
    make_service,
    node_args,
)
from workers import checkpoint_layout

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


def _row(env: Env, job_id: str) -> Job:
    with Session(env.engine, expire_on_commit=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _events(env: Env, job_id: str) -> list[JobEvent]:
    with Session(env.engine) as s:
        return list(
            s.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id)))
        )


def _rank_pids() -> set[int]:
    """The processes of the rank actors alive on the cluster (all on this machine)."""
    alive = ray._private.state.actors(actor_state_name="ALIVE").values()  # type: ignore[attr-defined]
    return {int(a["Pid"]) for a in alive if "RankWorker" in str(a.get("ActorClassName", ""))}


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_an_attempt_lost_with_its_ray_is_free_and_billed_to_its_last_heartbeat(env: Env) -> None:
    """Two running jobs with no retries left lose their supervisors. One was launched in a Ray
    session that is gone (what a one-host control plane killed with its Ray leaves): requeued
    for free, resumed from the checkpoint on disk, and it succeeds. The other lost its
    supervisor in the Ray that still runs: a failure of the job, no retries left. Both are
    billed to their last heartbeat, not to the moment the scheduler noticed."""
    cfg = {"payload": "synthetic", "steps": 80, "step_seconds": 0.1, "checkpoint_every": 2}
    lost = env.submit(env.alpha, gpus=8, name="lost-with-ray", config=cfg)
    failed = env.submit(env.beta, gpus=8, name="lost-alone", config=cfg)
    ids = [lost["id"], failed["id"]]
    with Session(env.engine) as s:
        s.execute(update(Job).where(col(Job.id).in_(ids)).values(max_retries=0))
        s.commit()
    for job_id in ids:
        env.until_status(job_id, "RUNNING")
    env.run_until(lambda: all(env.job(j)["checkpoint_uri"] for j in ids))
    assert all(_row(env, j).ray_session == env.service.ray.session() for j in ids)
    ranks = _rank_pids()
    assert ranks, "the ranks run"
    for job_id in ids:
        ray.kill(ray.get_actor(supervisor_name(job_id), namespace="nuri"), no_restart=True)
        # Its ranks go with their bundles (as with a Ray that went away): nothing writes on.
        pg = ray.util.get_placement_group(placement_group_name(job_id, 1))
        ray.util.remove_placement_group(pg)
    # Their processes end a moment later (a rank still running would write on): until they
    # have, no scheduler cycle runs.
    deadline = time.monotonic() + WAIT_S
    while any(_running(pid) for pid in ranks):
        assert time.monotonic() < deadline, "ranks still running"
        time.sleep(0.1)
    beats = {}
    with Session(env.engine) as s:
        for job_id in ids:
            job = s.get(Job, job_id)
            assert job is not None and job.started_at is not None
            beats[job_id] = job.started_at + timedelta(seconds=1)
            job.heartbeat_at = beats[job_id]
            if job_id == lost["id"]:
                job.ray_session = "session_of_a_ray_that_is_gone"
            s.add(job)
        s.commit()
    plan = _row(env, lost["id"]).execution_plan or {}
    on_disk = checkpoint_layout.newest(Path(plan["dirs"]["checkpoints"]))
    assert on_disk is not None
    env.run_until(lambda: env.job(failed["id"])["status"] == "FAILED")
    env.run_until(lambda: env.job(lost["id"])["attempt"] == 2)

    gone = _row(env, lost["id"])
    assert gone.free_requeues == 1 and gone.max_retries == 0
    requeue = next(e for e in _events(env, lost["id"]) if e.from_status == "RUNNING")
    assert requeue.to_status == "QUEUED"
    assert "Ray restarted" in requeue.message and "not counted against" in requeue.message
    # The checkpoint the database records is the one on disk, whatever the supervisor said.
    recorded = [e for e in _events(env, lost["id"]) if e.type == "checkpoint" and e.attempt == 1]
    assert recorded[-1].details["step"] == on_disk.step
    done = env.until_status(lost["id"], "SUCCEEDED")
    assert done["attempt"] == 2
    starts = [ln for ln in logs(env, lost["id"]) if "starting at step" in ln]
    assert starts[-1].endswith(f"starting at step {on_disk.step}")

    alone = _row(env, failed["id"])
    assert alone.free_requeues == 0 and alone.reasons[0]["code"] == "infrastructure_failure"
    assert "no retries left" in alone.reasons[0]["message"]
    for job_id in ids:
        first = [r for r in usage(env, job_id) if r.attempt == 1]
        assert len(first) == 1 and first[0].ended_at == beats[job_id]
        assert first[0].gpu_seconds == pytest.approx(8.0)  # 1 s x 8 GPUs


def test_a_new_leader_resends_a_lost_preemption_notice(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader that decided a preemption died before its notice reached the job: the job
    is PREEMPTING in the database with its deadline, and its supervisor knows nothing. The
    next leader sends the notice again; the job checkpoints and is requeued well before the
    deadline (not killed at it), and resumes."""
    cfg = {"payload": "synthetic", "steps": 400, "step_seconds": 0.1, "checkpoint_every": 2}
    job = env.submit(env.alpha, gpus=8, name="victim", config=cfg)
    env.until_status(job["id"], "RUNNING")
    deadline = utcnow() + timedelta(seconds=WAIT_S)
    with Session(env.engine) as s:
        transition(
            s,
            job["id"],
            expected=JobStatus.RUNNING,
            to=JobStatus.PREEMPTING,
            now=utcnow(),
            message="preempted by a leader that then died",
            preempt_deadline=deadline,
        )
        s.commit()
    env.service.stop()  # the old leader is gone (its lease released: no TTL to wait out)
    successor = make_service(env.engine, env.tmp, holder="successor")
    with caplog.at_level(logging.INFO, logger="nuri.scheduler"):
        env.run_until(lambda: env.job(job["id"])["attempt"] == 2, service=successor)
    assert any("preemption notice of" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("cycle requeued 1:") for r in caplog.records)
    requeue = next(e for e in _events(env, job["id"]) if e.from_status == "PREEMPTING")
    assert (
        requeue.to_status == "QUEUED"
        and requeue.message.startswith("preempted")
        and requeue.at < deadline - timedelta(seconds=WAIT_S / 2)
    ), "requeued because the notice arrived, not because the deadline passed"
    assert _row(env, job["id"]).times_preempted == 1
    successor.stop()
