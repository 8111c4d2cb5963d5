"""The endpoint controller on SQLite and PostgreSQL: replica jobs follow demand between min
and max, guaranteed slots are not preemptible, idle endpoints fall back to min (zero), deleted
endpoints drain, a failing slot backs off; plus the target's invariants as properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session, col, select

from controlplane.db.models import AuditEvent, Endpoint, Job, TokenUsage
from controlplane.jobstate import JobStatus, transition
from controlplane.serving import controller
from controlplane.serving.endpoints import replica_index
from tests.conftest import World, bearer, ok

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def engine_of(world: World) -> Any:
    return world.client.app.state.engine  # type: ignore[attr-defined]


def endpoint(world: World, **body: Any) -> dict[str, Any]:
    return ok(  # type: ignore[no-any-return]
        world.client.post(
            "/v1/endpoints",
            headers=bearer(world.a.user_token),
            json={"name": "chat", "model": "axk1-tiny", **body},
        ),
        201,
    )


def step(world: World, at: datetime) -> controller.Report:
    with Session(engine_of(world)) as s:
        return controller.reconcile(s, at)


def replicas(world: World, ep_id: str) -> dict[int, Job]:
    """The live replica jobs by slot."""
    with Session(engine_of(world)) as s:
        jobs = s.exec(select(Job).where(Job.endpoint_id == ep_id)).all()
    live = [j for j in jobs if j.status not in ("CANCELLED", "FAILED", "SUCCEEDED")]
    assert len({replica_index(j) for j in live}) == len(live), "one job per slot"
    return {replica_index(j): j for j in live}


def requests(world: World, ep_id: str, n: int, at: datetime) -> list[str]:
    """``n`` requests in flight (open reservations), as the gateway leaves them."""
    with Session(engine_of(world)) as s:
        rows = [
            TokenUsage(
                member_id=world.a.member["id"],
                endpoint_id=ep_id,
                period="2026-11",
                created_at=at,
                reserved_tokens=100,
            )
            for _ in range(n)
        ]
        s.add_all(rows)
        ep = s.get(Endpoint, ep_id)
        assert ep is not None
        ep.last_request_at = at
        s.add(ep)
        s.commit()
        return [r.id for r in rows]


def settle(world: World, ids: list[str], at: datetime) -> None:
    with Session(engine_of(world)) as s:
        for r in s.exec(select(TokenUsage).where(col(TokenUsage.id).in_(ids))).all():
            r.settled_at, r.reserved_tokens, r.completion_tokens = at, 0, 5
            s.add(r)
        s.commit()


def hold(world: World, job: Job) -> None:
    """What the scheduler does to a replica it admits and launches."""
    with Session(engine_of(world)) as s:
        for to in (JobStatus.ADMITTED, JobStatus.RUNNING):
            transition(s, job.id, expected=JobStatus(job.status), to=to, now=NOW)
            job.status = to.value
        s.commit()


def test_replicas_follow_demand_between_min_and_max(world: World) -> None:
    ep = endpoint(
        world, min_replicas=1, max_replicas=3, config={"target_ongoing_requests": 2, "idle_s": 60}
    )
    report = step(world, NOW)
    (only,) = replicas(world, ep["id"]).values()
    assert report.created == [only.id] and only.status == "QUEUED"
    assert only.kind == "serve" and only.gpus == 1 and only.nodes == 1
    assert only.preemptible is False and only.priority_class == "production-inference"
    assert only.config["replica"] == 0 and only.config["max_context"] == 2048
    assert step(world, NOW).created == []  # idempotent

    ids = requests(world, ep["id"], 5, NOW)
    # No burst replica before the guaranteed one holds its GPUs (it would take its quota).
    report = step(world, NOW + timedelta(seconds=1))
    assert report.scaled == {ep["id"]: (1, 3)}
    assert list(replicas(world, ep["id"])) == [0]
    hold(world, only)
    step(world, NOW + timedelta(seconds=1))
    live = replicas(world, ep["id"])
    assert sorted(live) == [0, 1, 2]  # ceil(5 / 2) = 3, the max
    assert [live[i].preemptible for i in (0, 1, 2)] == [False, True, True]  # burst borrows
    ids += requests(world, ep["id"], 20, NOW)
    step(world, NOW + timedelta(seconds=2))
    assert sorted(replicas(world, ep["id"])) == [0, 1, 2]  # never above max

    settle(world, ids, NOW + timedelta(seconds=3))
    step(world, NOW + timedelta(seconds=30))
    assert sorted(replicas(world, ep["id"])) == [0, 1, 2]  # not idle long enough yet
    report = step(world, NOW + timedelta(seconds=61))
    assert sorted(replicas(world, ep["id"])) == [0]  # idle: back to min
    assert len(report.cancelled) == 2
    with Session(engine_of(world)) as s:
        cancelled = s.exec(select(Job).where(col(Job.id).in_(report.cancelled))).all()
        assert {j.status for j in cancelled} == {"CANCELLED"}
        scale = s.exec(
            select(AuditEvent).where(AuditEvent.action == "endpoint.scale").order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
        assert [(e.details["from"], e.details["to"]) for e in scale] == [(1, 3), (3, 1)]
        assert all(e.stream == world.a.member["id"] for e in scale)
        made = s.exec(select(AuditEvent).where(AuditEvent.action == "endpoint.replica")).all()
        assert len(made) == 3


def test_scale_to_zero_and_back(world: World) -> None:
    ep = endpoint(world, min_replicas=0, max_replicas=2, config={"idle_s": 30})
    assert ep["desired_replicas"] == 0
    step(world, NOW)
    assert replicas(world, ep["id"]) == {}
    ids = requests(world, ep["id"], 1, NOW)  # a cold start: the waiting request is the demand
    step(world, NOW)
    (job,) = replicas(world, ep["id"]).values()
    assert job.preemptible is True  # no guaranteed slot when min is 0
    settle(world, ids, NOW + timedelta(seconds=1))
    step(world, NOW + timedelta(seconds=10))
    assert list(replicas(world, ep["id"])) == [0]
    step(world, NOW + timedelta(seconds=31))
    assert replicas(world, ep["id"]) == {}
    got = ok(world.client.get("/v1/endpoints/chat", headers=bearer(world.a.user_token)))
    assert got["desired_replicas"] == 0 and got["replicas"] == []


def test_deleted_endpoint_drains_and_a_failing_slot_backs_off(world: World) -> None:
    ep = endpoint(world, min_replicas=2, max_replicas=2)
    step(world, NOW)
    live = replicas(world, ep["id"])
    with Session(engine_of(world)) as s:
        for to in (JobStatus.ADMITTED, JobStatus.RUNNING, JobStatus.FAILED):
            transition(s, live[0].id, expected=JobStatus(live[0].status), to=to, now=NOW)
            live[0].status = to.value
        s.commit()
    step(world, NOW + timedelta(seconds=1))
    assert sorted(replicas(world, ep["id"])) == [1]  # slot 0 waits after its failure
    step(world, NOW + timedelta(seconds=controller.RETRY_AFTER_S + 1))
    assert sorted(replicas(world, ep["id"])) == [0, 1]
    listed = ok(world.client.get("/v1/endpoints/chat", headers=bearer(world.a.user_token)))
    assert sorted(r["index"] for r in listed["replicas"]) == [0, 1]
    assert all(r["guaranteed"] and r["status"] == "QUEUED" for r in listed["replicas"])
    ok(world.client.delete("/v1/endpoints/chat", headers=bearer(world.a.user_token)))
    report = step(world, NOW + timedelta(seconds=30))
    assert len(report.cancelled) == 2 and replicas(world, ep["id"]) == {}
    assert step(world, NOW + timedelta(seconds=31)).cancelled == []


def test_a_waiting_guaranteed_replica_drains_the_burst_ones(world: World) -> None:
    ep = endpoint(world, min_replicas=1, max_replicas=3, config={"target_ongoing_requests": 1})
    step(world, NOW)
    hold(world, replicas(world, ep["id"])[0])
    requests(world, ep["id"], 3, NOW)
    step(world, NOW + timedelta(seconds=1))
    live = replicas(world, ep["id"])
    assert sorted(live) == [0, 1, 2]
    # The guaranteed replica loses its node and goes back to the queue (attempt 2).
    with Session(engine_of(world)) as s:
        transition(
            s,
            live[0].id,
            expected=JobStatus.RUNNING,
            to=JobStatus.QUEUED,
            now=NOW,
            assignment=[],
            pool=None,
        )
        s.commit()
    report = step(world, NOW + timedelta(seconds=2))
    assert sorted(report.cancelled) == sorted([live[1].id, live[2].id])
    assert list(replicas(world, ep["id"])) == [0]
    hold(world, replicas(world, ep["id"])[0])
    step(world, NOW + timedelta(seconds=3))
    assert sorted(replicas(world, ep["id"])) == [0, 1, 2]  # back once it holds its GPUs


def test_shrinking_max_cancels_the_slots_above_it(world: World) -> None:
    ep = endpoint(world, min_replicas=3, max_replicas=3)
    step(world, NOW)
    assert sorted(replicas(world, ep["id"])) == [0, 1, 2]
    ok(
        world.client.patch(
            "/v1/endpoints/chat",
            headers=bearer(world.a.user_token),
            json={"min_replicas": 1, "max_replicas": 1},
        )
    )
    step(world, NOW + timedelta(seconds=1))
    assert sorted(replicas(world, ep["id"])) == [0]


def _ep(low: int, high: int, desired: int, last: float | None, idle: float) -> Endpoint:
    return Endpoint(
        member_id="m",
        creator_id="u",
        name="e",
        model="axk1-tiny",
        min_replicas=low,
        max_replicas=high,
        gpus_per_replica=1,
        priority_class="research",
        config={"target_ongoing_requests": 3, "idle_s": idle},
        desired_replicas=desired,
        last_request_at=None if last is None else NOW - timedelta(seconds=last),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 8),
    st.integers(0, 8),
    st.integers(0, 10),
    st.integers(0, 100),
    # Whole milliseconds: timedelta keeps microseconds, so a float would be rounded.
    st.one_of(st.none(), st.integers(0, 1_000_000).map(lambda ms: ms / 1000)),
    st.integers(1000, 600_000).map(lambda ms: ms / 1000),
)
def test_target_stays_within_bounds_and_serves_demand(
    low: int, extra: int, desired: int, demand: int, last: float | None, idle: float
) -> None:
    high = max(1, low + extra)
    ep = _ep(low, high, desired, last, idle)
    want = controller.target(ep, demand, NOW)
    assert low <= want <= high
    if demand:
        assert want >= 1 and want >= min(high, -(-demand // 3))
        assert controller.target(ep, demand + 1, NOW) >= want  # monotone in demand
    elif last is None or last >= idle:
        assert want == low  # idle: back to the minimum
    ep.state = "deleted"
    assert controller.target(ep, demand, NOW) == 0
