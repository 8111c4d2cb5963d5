"""Endpoints on a real multi-node Ray: replicas admitted by the engine run as Ray Serve
applications pinned to the chosen nodes, scale to zero and back, burst replicas are reclaimed
by a job inside its quota, and a lost node's replica is replaced while the other serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import ray
from ray import serve
from sqlmodel import Session, col, select

from controlplane.db.models import Endpoint, Job, JobEvent, JobLog, TokenUsage, UsageRecord
from controlplane.serving.names import replica_app_name
from tests.conftest import bearer, ok
from tests.integration.scheduler.conftest import WAIT_S, Env, node_args

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

PROMPT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def create(env: Env, token: str, **body: Any) -> dict[str, Any]:
    out: dict[str, Any] = ok(
        env.client.post(
            "/v1/endpoints",
            headers=bearer(token),
            json={"name": "chat", "model": "axk1-tiny", **body},
        ),
        201,
    )
    return out


def replicas(env: Env, ep_id: str, *statuses: str) -> list[Job]:
    with Session(env.engine) as s:
        stmt = select(Job).where(Job.endpoint_id == ep_id).order_by(col(Job.created_at))
        jobs = list(s.exec(stmt).all())
    return [j for j in jobs if not statuses or j.status in statuses]


def demand(env: Env, ep_id: str, n: int) -> list[str]:
    """``n`` requests in flight, as the gateway records them (open reservations)."""
    with Session(env.engine) as s:
        ep = s.get(Endpoint, ep_id)
        assert ep is not None
        rows = [
            TokenUsage(
                member_id=ep.member_id, endpoint_id=ep_id, period="2026-12", reserved_tokens=9
            )
            for _ in range(n)
        ]
        s.add_all(rows)
        ep.last_request_at = datetime.now(UTC)
        s.add(ep)
        s.commit()
        return [r.id for r in rows]


def settle(env: Env, ids: list[str]) -> None:
    with Session(env.engine) as s:
        for r in s.exec(select(TokenUsage).where(col(TokenUsage.id).in_(ids))).all():
            r.settled_at, r.reserved_tokens = datetime.now(UTC), 0
            s.add(r)
        s.commit()


def logs(env: Env, job_id: str) -> str:
    with Session(env.engine) as s:
        lines = s.exec(select(JobLog.line).where(JobLog.job_id == job_id)).all()
    return "\n".join(lines)


def app_of(job: Job) -> str:
    return replica_app_name(job.id, job.attempt)


def app_running(job: Job) -> bool:
    status = serve.status().applications.get(app_of(job))
    return status is not None and str(getattr(status.status, "value", status.status)) == "RUNNING"


def ask(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = (
        serve.get_app_handle(app_of(job)).complete.remote(PROMPT).result(timeout_s=120)
    )
    return out


def running_apps(env: Env, ep_id: str, n: int) -> list[Job]:
    """Wait (ticking the scheduler) until ``n`` replicas run with their apps up."""

    def ready() -> bool:
        live = replicas(env, ep_id, "RUNNING")
        return len(live) == n and all(app_running(j) for j in live)

    try:
        env.run_until(ready, WAIT_S)
    except AssertionError:
        seen = [(j.id, j.status, j.assignment, j.reasons) for j in replicas(env, ep_id)]
        apps = {k: str(v.status) for k, v in serve.status().applications.items()}
        raise AssertionError(f"{n} replica(s) not running: {seen}; Serve: {apps}") from None
    return replicas(env, ep_id, "RUNNING")


def teardown_endpoint(env: Env, token: str, ep_id: str) -> None:
    ok(env.client.delete("/v1/endpoints/chat", headers=bearer(token)))
    env.run_until(lambda: not replicas(env, ep_id, "QUEUED", "ADMITTED", "RUNNING", "PREEMPTING"))
    env.run_until(lambda: all(j.assignment == [] for j in replicas(env, ep_id)))


def test_scale_to_zero_and_back(env: Env) -> None:
    ep = create(
        env,
        env.alpha,
        min_replicas=0,
        max_replicas=1,
        config={"idle_s": 2, "max_context": 256, "max_tokens_default": 32},
    )
    for _ in range(3):
        env.service.tick()
    assert replicas(env, ep["id"]) == []  # nothing runs before the first request
    ids = demand(env, ep["id"], 1)
    (first,) = running_apps(env, ep["id"], 1)
    answer = ask(first)
    assert answer["completion_tokens"] == 8 and answer["prompt_tokens"] > 0
    # Its supervisor keeps answering and reports the replica's state in the job's log.
    env.run_until(lambda: "replica running" in logs(env, first.id))
    # Through the gateway, as a member's client sees it: the same greedy text.
    reply = ok(
        env.client.post(
            "/openai/v1/chat/completions",
            headers=bearer(env.alpha),
            json={"model": "chat", **PROMPT},
        )
    )
    assert reply["choices"][0]["message"]["content"] == answer["text"]
    assert reply["usage"]["completion_tokens"] == 8
    # The replica sits on the node the engine chose: its actor's node advertises that name.
    stats = serve.get_app_handle(app_of(first)).stats.remote().result(timeout_s=60)
    (node,) = [n for n, _ in first.assignment]
    assert {
        k for k in next(x for x in ray.nodes() if x["NodeID"] == stats["node_id"])["Resources"]
    } >= {f"nuri-node:{node}"}
    settle(env, ids)
    env.run_until(lambda: replicas(env, ep["id"], "CANCELLED") != [])  # idle for 2 s: to zero
    env.run_until(lambda: serve.status().applications.get(app_of(first)) is None)
    env.run_until(lambda: replicas(env, ep["id"], "CANCELLED")[0].assignment == [])
    with Session(env.engine) as s:
        (use,) = s.exec(select(UsageRecord).where(UsageRecord.job_id == first.id)).all()
        assert use.ended_at is not None and use.gpu_seconds > 0  # charged like a job
    # And back: a new request wakes it.
    ids = demand(env, ep["id"], 1)
    (again,) = running_apps(env, ep["id"], 1)
    assert again.id != first.id and ask(again)["text"] == answer["text"]  # same weights, greedy
    settle(env, ids)
    teardown_endpoint(env, env.alpha, ep["id"])


def test_burst_replicas_are_reclaimed_by_a_job_inside_its_quota(env: Env) -> None:
    # alpha's nominal is 8: replica 0 (8 GPUs) is guaranteed, replica 1 borrows beta's idle 8.
    ep = create(
        env,
        env.alpha,
        min_replicas=1,
        max_replicas=2,
        gpus_per_replica=8,
        config={"target_ongoing_requests": 1, "max_context": 256, "max_tokens_default": 32},
    )
    ids = demand(env, ep["id"], 2)
    guaranteed, burst = sorted(running_apps(env, ep["id"], 2), key=lambda j: j.preemptible)
    assert not guaranteed.preemptible and burst.preemptible
    assert {n for n, _ in guaranteed.assignment} != {n for n, _ in burst.assignment}
    owner = env.submit(
        env.beta,
        gpus=16,
        nodes=2,
        name="owner",
        priority_class="training",
        config={"payload": "synthetic", "steps": 200, "step_seconds": 0.1},
    )
    env.until_status(owner["id"], "RUNNING")

    def reclaimed() -> Job:
        return next(j for j in replicas(env, ep["id"]) if j.id == burst.id)

    # Reclaimed: preempted, drained (its Serve application deleted) and back in the queue,
    # where it waits for room (the owner holds its nominal 16).
    def history() -> list[tuple[str | None, str | None, str]]:
        with Session(env.engine) as s:
            events = s.exec(select(JobEvent).where(JobEvent.job_id == burst.id)).all()
        return [(e.from_status, e.to_status, e.message) for e in events if e.to_status]

    try:
        env.run_until(lambda: reclaimed().status == "QUEUED" and reclaimed().assignment == [])
    except AssertionError:
        job = reclaimed()
        raise AssertionError((job.status, job.assignment, job.reasons, history())) from None
    seen = history()
    assert reclaimed().times_preempted == 1, seen
    assert ("RUNNING", "PREEMPTING") in [(a, b) for a, b, _ in seen]
    assert serve.status().applications.get(app_of(burst)) is None
    kept = next(j for j in replicas(env, ep["id"]) if j.id == guaranteed.id)
    assert kept.status == "RUNNING" and ask(kept)["completion_tokens"] == 8
    ok(env.client.post(f"/v1/jobs/{owner['id']}/cancel", headers=bearer(env.beta), json={}))
    settle(env, ids)
    teardown_endpoint(env, env.alpha, ep["id"])


def test_a_lost_nodes_replica_is_replaced_while_the_other_serves(
    env: Env, ray_cluster: Any
) -> None:
    cluster, handles = ray_cluster
    ep = create(
        env,
        env.beta,
        min_replicas=2,
        max_replicas=2,
        gpus_per_replica=8,
        config={"max_context": 256, "max_tokens_default": 32},
    )
    first, second = running_apps(env, ep["id"], 2)
    expected = ask(second)["text"]
    (victim,) = [n for n, _ in first.assignment]
    cluster.remove_node(handles.pop(victim))
    try:
        # The other replica keeps answering while the lost one is replaced.
        assert ask(second)["text"] == expected
        env.run_until(
            lambda: next(j for j in replicas(env, ep["id"]) if j.id == first.id).attempt == 2
        )
        replaced = running_apps(env, ep["id"], 2)
        moved = next(j for j in replaced if j.id == first.id)
        assert victim not in {n for n, _ in moved.assignment}
        assert ask(moved)["text"] == expected
    finally:
        teardown_endpoint(env, env.beta, ep["id"])
        handles[victim] = cluster.add_node(wait=False, **node_args(victim))
        cluster.wait_for_nodes(timeout=WAIT_S)
