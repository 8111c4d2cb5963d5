"""Submit -> admitted -> running on the chosen nodes -> succeeded, on a real Ray cluster."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import ray
from sqlmodel import Session, select

from controlplane.db.models import JobLog, JobMetric, UsageRecord
from controlplane.scheduler import SchedulerService
from tests.conftest import ADMIN_TOKEN, bearer, ok
from tests.integration.scheduler.conftest import Env

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]


def test_job_runs_on_the_nodes_the_engine_chose(env: Env) -> None:
    job = env.submit(env.alpha, gpus=16, nodes=2, name="two-node")
    running = env.until_status(job["id"], "RUNNING", "SUCCEEDED")
    assert running["pool"] == "kr-ray-h200"
    chosen = [n for n, _ in running["assignment"]]
    assert len(chosen) == 2 and all(g == 8 for _, g in running["assignment"])
    inv = env.service.ray.inventory(set(chosen))
    placed = env.service.ray.placement(job["id"], running["attempt"])
    if placed is not None:  # still running: Ray's placement-group table agrees with the engine
        assert sorted(placed) == sorted(inv.alive[n] for n in chosen)
    done = env.until_status(job["id"], "SUCCEEDED")
    assert done["finished_at"] is not None and done["assignment"] == []
    events = ok(env.client.get(f"/v1/jobs/{job['id']}/events", headers=bearer(env.alpha)))
    statuses = [e["to_status"] for e in events["items"] if e["type"] in ("status", "submitted")]
    assert statuses == ["QUEUED", "ADMITTED", "RUNNING", "SUCCEEDED"]
    assert any(e["type"] == "checkpoint" for e in events["items"])
    with Session(env.engine) as s:
        metrics = s.exec(select(JobMetric).where(JobMetric.job_id == job["id"])).all()
        assert {m.step for m in metrics} == set(range(1, 7))
        assert s.exec(select(JobLog).where(JobLog.job_id == job["id"])).all()
        usage = s.exec(select(UsageRecord).where(UsageRecord.job_id == job["id"])).all()
        assert len(usage) == 1 and usage[0].ended_at is not None
        assert usage[0].gpus == 16 and usage[0].gpu_seconds > 0
    curve = ok(env.client.get(f"/v1/jobs/{job['id']}/metrics", headers=bearer(env.alpha)))
    assert [m["step"] for m in curve["items"]] == list(range(1, 7))
    assert curve["items"][-1]["values"]["loss"] < curve["items"][0]["values"]["loss"]
    tail = ok(
        env.client.get(f"/v1/jobs/{job['id']}/logs", headers=bearer(env.alpha), params={"tail": 2})
    )
    assert len(tail["items"]) == 2 and "finished 6 steps" in tail["items"][-1]["line"]
    # The placement group is gone; no supervisor is left.
    assert env.service.ray.placement(job["id"], 1) is None
    with pytest.raises(ValueError):
        ray.get_actor(f"nuri-job-{job['id']}")
    verify = ok(env.client.get("/v1/audit/verify", headers=bearer(ADMIN_TOKEN)))
    assert verify["ok"] is True


def test_pending_jobs_explain_themselves_and_cancel_frees_the_gpus(env: Env) -> None:
    big = env.submit(
        env.beta,
        gpus=24,
        nodes=3,
        name="whole-pool",
        config={"payload": "synthetic", "steps": 200, "step_seconds": 0.1},
    )
    env.until_status(big["id"], "RUNNING")
    waiting = env.submit(env.alpha, gpus=8, name="waits", priority_class="best-effort")
    env.service.tick()
    pending = env.job(waiting["id"])
    assert pending["status"] == "QUEUED"
    assert pending["reasons"] and pending["reasons"][0]["code"] != "awaiting_scheduler"
    assert pending["queue_position"] >= 1
    ok(env.client.post(f"/v1/jobs/{big['id']}/cancel", headers=bearer(env.beta), json={}))
    env.run_until(lambda: env.job(big["id"])["assignment"] == [])
    env.until_status(waiting["id"], "RUNNING", "SUCCEEDED")
    with Session(env.engine) as s:
        rec = s.exec(select(UsageRecord).where(UsageRecord.job_id == big["id"])).one()
    cancelled = env.job(big["id"])
    assert rec.ended_at is not None
    assert abs((rec.ended_at - rec.started_at).total_seconds() * 24 - rec.gpu_seconds) < 1e-6
    # Billed until its GPUs were freed: a cancelled job may checkpoint first (its grace).
    finished = datetime.fromisoformat(cancelled["finished_at"].replace("Z", "+00:00"))
    assert finished <= rec.ended_at <= finished + timedelta(seconds=60)


def test_success_registers_an_artifact_and_a_relabel_stops_a_running_job(env: Env) -> None:
    root = bearer(ADMIN_TOKEN)
    ds = ok(
        env.client.post(
            "/v1/datasets",
            headers=bearer(env.alpha),
            json={
                "name": "seoul-logs",
                "uri": "s3://alpha/logs",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            },
        ),
        201,
    )
    quick = env.submit(env.alpha, gpus=8, name="quick", inputs=[ds["id"]])
    env.until_status(quick["id"], "SUCCEEDED")
    arts = ok(env.client.get("/v1/artifacts", headers=bearer(env.alpha)))["items"]
    art = next(a for a in arts if a["job_id"] == quick["id"])
    assert art["kind"] == "model" and art["sha256"] and len(art["sha256"]) == 64
    assert art["labels"]["allowed_regions"] == ["kr-seoul"]
    assert {i["id"] for i in art["provenance"]["inputs"]} == {"axk1-tiny", ds["id"]}

    long = env.submit(
        env.alpha,
        gpus=8,
        name="long",
        inputs=[ds["id"]],
        config={"payload": "synthetic", "steps": 300, "step_seconds": 0.1},
    )
    env.until_status(long["id"], "RUNNING")
    # The dataset is moved to Daejeon: the job's pool (Seoul) is now forbidden. A different
    # region set also widens the labels (Daejeon is new), so an admin makes the change.
    ok(
        env.client.patch(
            f"/v1/datasets/{ds['id']}",
            headers=root,
            json={"labels": {"jurisdiction": "KR", "allowed_regions": ["kr-daejeon"]}},
        )
    )
    stopped = env.until_status(long["id"], "FAILED")
    assert stopped["reasons"][0]["code"] == "residency_violation"
    assert "kr-ray-h200" in stopped["reasons"][0]["message"]
    assert stopped["assignment"] == []
    events = ok(env.client.get("/v1/audit/events", headers=root, params={"limit": 1000}))["items"]
    failed = [e for e in events if e["action"] == "job.failed" and e["resource_id"] == long["id"]]
    assert failed and "residency.schedule.region" in failed[0]["details"]["policy_ids"]


def test_long_queues_refresh_explanations_at_most_every_interval(env: Env) -> None:
    """Past ``explain_all_below`` waiting jobs, cycles decide without explanations and
    refresh the reasons, positions and ETAs at most every ``explain_interval_s``."""
    clock = [datetime.now(UTC)]
    service = SchedulerService(
        env.engine,
        env.service.ray,
        replace(env.service.config, explain_all_below=0, explain_interval_s=60.0),
        clock=lambda: clock[0],
    )
    # Non-preemptible and over alpha's nominal 8: waits, whatever the cycle.
    first = env.submit(env.alpha, gpus=16, nodes=2, priority_class="training")
    assert service.tick().explained  # nothing explained yet: the first cycle does
    reasons = env.job(first["id"])["reasons"]
    assert reasons[0]["code"] == "non_preemptible_over_nominal"
    second = env.submit(env.alpha, gpus=16, nodes=2, priority_class="training")
    clock[0] += timedelta(seconds=30)
    assert not service.tick().explained
    assert env.job(second["id"])["reasons"][0]["code"] == "awaiting_scheduler"
    assert env.job(first["id"])["reasons"] == reasons  # left as they were
    clock[0] += timedelta(seconds=31)
    report = service.tick()
    assert report.explained and report.admitted == []
    assert env.job(second["id"])["reasons"][0]["code"] == "non_preemptible_over_nominal"
    assert env.job(second["id"])["queue_position"] == 2


def raycluster(head_ready: bool, reason: str = "") -> dict[str, object]:
    """A KubeRay RayCluster as the operator reports it (``ray.io/v1``, 1.2+ conditions)."""
    head: dict[str, str] = {"type": "HeadPodReady", "status": str(head_ready)}
    if reason:
        head["reason"] = reason
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "nuri-ray", "namespace": "gpu"},
        "spec": {},
        "status": {
            "state": "ready" if head_ready else "suspended",
            "conditions": [head],
            "availableWorkerReplicas": 3 if head_ready else 0,
            "desiredWorkerReplicas": 3,
            "desiredGPU": "24",
        },
    }


def test_an_unready_kuberay_head_pauses_placement_and_says_why(env: Env) -> None:
    """The RayCluster read with the real kubernetes client from an emulated API server (its own
    process): while its head is not ready nothing is admitted, waiting jobs say so first,
    running jobs are left alone, and the pause and the resume are audited."""
    from kubernetes import client as k8s_client

    from controlplane.db.models import AuditEvent
    from controlplane.k8s.rayclusters import RayClusterWatch
    from controlplane.observability.metrics import scheduler_metrics
    from tests.k8s_emulator import EmulatedApiServer

    with EmulatedApiServer() as server:
        api = server.api_client()
        custom: Any = k8s_client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object(
            "ray.io", "v1", "gpu", "rayclusters", raycluster(True)
        )
        watch = RayClusterWatch(env.engine, api, "gpu/nuri-ray")
        env.service.placement_pause = watch.pause_reason
        assert watch.poll() is None
        running = env.submit(
            env.beta, gpus=8, config={"payload": "synthetic", "steps": 400, "step_seconds": 0.1}
        )
        env.until_status(running["id"], "RUNNING")

        custom.patch_namespaced_custom_object(
            "ray.io", "v1", "gpu", "rayclusters", "nuri-ray", raycluster(False, "HeadPodNotFound")
        )
        assert "HeadPodNotFound" in (watch.poll() or "")
        waiting = env.submit(env.alpha, gpus=8, name="waits-for-head")
        for _ in range(3):
            report = env.service.tick()
            assert report.admitted == [] and report.paused is not None
        job = env.job(waiting["id"])
        assert job["status"] == "QUEUED" and job["eta"] is None
        first = job["reasons"][0]
        assert first["code"] == "placement_paused"
        assert "nuri-ray" in first["message"] and "HeadPodNotFound" in first["message"]
        assert env.job(running["id"])["status"] == "RUNNING"  # left alone
        assert scheduler_metrics().paused._value.get() == 1

        custom.patch_namespaced_custom_object(
            "ray.io", "v1", "gpu", "rayclusters", "nuri-ray", raycluster(True)
        )
        assert watch.poll() is None
        env.until_status(waiting["id"], "RUNNING", "SUCCEEDED")
        assert scheduler_metrics().paused._value.get() == 0
        ok(env.client.post(f"/v1/jobs/{running['id']}/cancel", headers=bearer(env.beta), json={}))
    with Session(env.engine) as s:
        events = s.exec(
            select(AuditEvent)
            .where(AuditEvent.stream == "platform", AuditEvent.resource_type == "raycluster")
            .order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
    assert [(e.action, e.resource_id) for e in events] == [
        ("raycluster.unready", "gpu/nuri-ray"),
        ("raycluster.ready", "gpu/nuri-ray"),
    ]
    assert "HeadPodNotFound" in events[0].details["reason"]
    assert events[0].details["available_workers"] == 0
