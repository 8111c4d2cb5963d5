"""The gateway when replicas are missing or fail (issue 14), on a real uvicorn server and real
replicas on a local Ray Serve: a cold start past its bound is a 503 with Retry-After that
charges nothing; a request waiting for a cold start is served once a replica runs; a replica
that fails is tried again once on another, and nothing is charged twice. And the controller
settles a dead gateway's open reservations as ``abandoned``, which then are not demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.db.models import Endpoint, Job, TokenUsage, User
from controlplane.serving import controller, metering
from controlplane.serving.names import SERVE_KIND, replica_app_name
from tests.conftest import World, bearer, build_world, make_client, ok
from tests.integration.serving.test_gateway_openai import (
    MESSAGES,
    POOL,
    PRESET,
    client,
    engine_of,
    free_port,
    rows,
    wait_for,
)
from tests.ray_local import init_local_ray

openai = pytest.importorskip("openai")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

JOB_A = "job_resilience_a"  # sorts first: an idle gateway picks it before B
JOB_B = "job_resilience_b"

Deploy = Callable[[str], str]


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deploy]:
    """A local Ray Serve; ``deploy(job_id)`` runs that job's replica application (attempt 1)
    and returns its name once it is RUNNING."""
    from workers.execution import CapacityPlan, ExecutionPlan, JobDirs, ModelPlan
    from workers.serving import build_replica_app

    init_local_ray(num_cpus=2, num_gpus=2,
             resources={f"pool:{POOL}": 2, "nuri-node:n0": 1}, include_dashboard=False,
             configure_logging=False)  # fmt: skip
    serve.start(proxy_location="Disabled")

    def run(job_id: str) -> str:
        plan = ExecutionPlan(
            job_id=job_id, attempt=1, kind="serve", payload="model",
            model=ModelPlan(ref=PRESET, preset=PRESET), teacher=None, inputs=(),
            capacity=CapacityPlan(1, 1, 1, "bf16", None, False, False, 1, 1, 512, 80.0, 8),
            knobs={"max_tokens_default": 8}, dirs=JobDirs.under(tmp_path_factory.mktemp(job_id)),
        )  # fmt: skip
        app = replica_app_name(job_id, 1)
        # Half a CPU each: two replicas and room to spare on this two-CPU local cluster.
        target = build_replica_app(plan.to_dict(), pool=POOL, node="n0", gpus=1, cpus=0.5,
                                   name="replica")  # fmt: skip
        serve.run(target, name=app, route_prefix=None, blocking=False)
        wait_for(lambda: getattr(serve.status().applications.get(app), "status", None)
                 == "RUNNING", f"the replica {app}")  # fmt: skip
        return app

    try:
        yield run
    finally:
        serve.shutdown()
        ray.shutdown()


Serve = tuple[World, str, Callable[..., None]]


@pytest.fixture
def gateway(sqlite_engine: Engine) -> Iterator[Serve]:
    """A uvicorn server; ``seed(jobs, **config)`` makes alpha's endpoint "chat" with replica
    jobs ``{job_id: status}`` in the pool."""
    import uvicorn

    world = build_world(make_client(sqlite_engine))

    def seed(jobs: dict[str, str], **config: Any) -> None:
        with Session(engine_of(world)) as s:
            user = s.exec(select(User).where(User.member_id == world.a.member["id"])).first()
            assert user is not None
            ep = Endpoint(member_id=user.member_id, creator_id=user.id, name="chat", model=PRESET,
                          min_replicas=0, max_replicas=2, gpus_per_replica=1,
                          priority_class="research", config=config)  # fmt: skip
            s.add(ep)
            s.flush()
            for job_id, status in jobs.items():
                s.add(Job(id=job_id, member_id=ep.member_id, submitter_id=user.id, name=job_id,
                          kind=SERVE_KIND, model=PRESET, gpus=1, nodes=1, gpus_per_node=1,
                          priority_class="research", max_runtime_s=10**6, preemptible=False,
                          status=status, pool=POOL, endpoint_id=ep.id))  # fmt: skip
            s.commit()

    port = free_port()
    config = uvicorn.Config(world.client.app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, "uvicorn", 30)
    try:
        yield world, f"http://127.0.0.1:{port}/openai/v1", seed
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def settled_rows(w: World, n: int) -> list[TokenUsage]:
    """The ledger once ``n`` rows exist and all are settled (a stream settles after [DONE])."""

    def check() -> list[TokenUsage] | None:
        found = rows(w)
        return found if len(found) >= n and all(r.settled_at for r in found) else None

    return wait_for(check, f"{n} settled rows", 60)  # type: ignore[no-any-return]


# --- cold start ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_cold_start_past_its_bound_is_a_503_that_charges_nothing(gateway: Serve) -> None:
    w, base, seed = gateway
    seed({"job_resilience_q": "QUEUED"}, cold_start_timeout_s=1)  # a replica not started yet
    headers = bearer(w.a.user_token)
    for stream in (False, True):
        began = time.monotonic()
        resp = httpx.post(f"{base}/chat/completions", headers=headers, timeout=30,
                          json={"model": "chat", "messages": MESSAGES, "max_tokens": 4,
                                "stream": stream})  # fmt: skip
        assert 1.0 <= time.monotonic() - began < 15
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["content-type"].startswith("application/json")
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "server_error", "no_replica_ready", None
        )  # fmt: skip
        assert "within 1 s" in error["message"]
    # Both reservations were settled with nothing charged; none is left open (demand).
    ledger = settled_rows(w, 2)
    assert len(ledger) == 2
    for row in ledger:
        assert (row.prompt_tokens, row.completion_tokens, row.reserved_tokens) == (0, 0, 0)
        assert row.outcome == "error" and row.job_id is None
    with Session(engine_of(w)) as s:
        ep = s.exec(select(Endpoint)).one()
        assert metering.open_requests(s, ep.id) == 0
        assert ep.last_request_at is not None  # the wait told the controller about demand


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_request_waiting_for_a_cold_start_is_served_once_a_replica_runs(
    gateway: Serve, deploy: Deploy
) -> None:
    w, base, seed = gateway
    deploy(JOB_A)  # its Serve application is up, but the job row is not RUNNING yet
    seed({JOB_A: "ADMITTED"}, cold_start_timeout_s=60)
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["reply"] = client(base, w.a.user_token).chat.completions.create(
                model="chat", messages=MESSAGES, max_tokens=4, temperature=0
            )
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    # The request waits with its reservation open (the demand that wakes the endpoint).
    wait_for(lambda: [r for r in rows(w) if r.settled_at is None], "the open reservation", 30)
    assert "reply" not in out and "error" not in out
    with Session(engine_of(w)) as s:
        job = s.get(Job, JOB_A)
        assert job is not None
        job.status = "RUNNING"
        s.add(job)
        s.commit()
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    reply = out["reply"]
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4
    (row,) = settled_rows(w, 1)
    assert row.job_id == JOB_A and row.reserved_tokens == 0
    assert (row.prompt_tokens, row.completion_tokens) == (
        reply.usage.prompt_tokens, reply.usage.completion_tokens
    )  # fmt: skip


# --- failover ------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_failed_replica_is_retried_once_on_another_and_charged_once(
    gateway: Serve, deploy: Deploy
) -> None:
    w, base, seed = gateway
    app_a, _ = deploy(JOB_A), deploy(JOB_B)
    seed({JOB_A: "RUNNING", JOB_B: "RUNNING"}, cold_start_timeout_s=30)
    c = client(base, w.a.user_token)
    first = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=4,
                                      temperature=0)  # fmt: skip
    assert settled_rows(w, 1)[0].job_id == JOB_A  # idle replicas: the first job id wins

    # Replica A goes away while its job row still says RUNNING (the gateway holds its handle).
    backend = w.client.app.state.gateway.backend  # type: ignore[attr-defined]
    failures: list[str] = []
    forget = backend.forget
    backend.forget = lambda r: (failures.append(r.job_id), forget(r))
    serve.delete(app_a)
    seen: list[tuple[str, int, int]] = []
    for n in range(4):
        if n % 2:
            chunks = list(c.chat.completions.create(
                model="chat", messages=MESSAGES, max_tokens=4, temperature=0, stream=True,
                stream_options={"include_usage": True},
            ))  # fmt: skip
            assert chunks[-1].usage is not None
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            usage, rid = chunks[-1].usage, chunks[-1].id
        else:
            reply = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=4,
                                              temperature=0)  # fmt: skip
            assert reply.usage is not None
            text, usage, rid = reply.choices[0].message.content or "", reply.usage, reply.id
        assert text == first.choices[0].message.content  # greedy: the same answer
        seen.append((rid.split("-", 1)[1], usage.prompt_tokens, usage.completion_tokens))

    ledger = {r.id: r for r in settled_rows(w, 5)}
    assert len(ledger) == 5  # one row per request: a retried request is one reservation
    for rid, prompt, completion in seen:
        row = ledger[rid]
        assert row.job_id == JOB_B and row.reserved_tokens == 0
        assert (row.prompt_tokens, row.completion_tokens) == (prompt, completion)
    # The first request after the loss failed on A and was retried on B (``routing.route``);
    # A's application missing, later ones skip it without trying.
    assert failures == [JOB_A], failures


# --- abandoned reservations ----------------------------------------------------------------

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_the_controller_settles_abandoned_reservations_which_are_not_demand(
    world: World,
) -> None:
    ep = ok(world.client.post("/v1/endpoints", headers=bearer(world.a.user_token),
                              json={"name": "chat", "model": PRESET, "min_replicas": 0,
                                    "max_replicas": 2}), 201)  # fmt: skip
    engine = engine_of(world)

    def open_row(at: datetime) -> str:
        with Session(engine) as s:
            row = TokenUsage(member_id=world.a.member["id"], endpoint_id=ep["id"],
                             period="2026-11", created_at=at, reserved_tokens=100)  # fmt: skip
            s.add(row)
            s.commit()
            return row.id

    # A gateway died mid-request, longer ago than the staleness bound.
    stale = open_row(NOW - metering.STALE_AFTER - timedelta(seconds=1))
    with Session(engine) as s:
        report = controller.reconcile(s, NOW)
    assert report.created == [] and report.scaled == {}  # not demand: stays at zero
    with Session(engine) as s:
        row = s.get(TokenUsage, stale)
        assert row is not None and row.outcome == "abandoned" and row.settled_at is not None
        assert (row.reserved_tokens, row.prompt_tokens, row.completion_tokens) == (0, 0, 0)
        assert metering.tokens_charged(s, world.a.member["id"], ["2026-11"]) == 0
        assert metering.open_requests(s, ep["id"]) == 0

    # A request in flight now is demand, and is left open.
    fresh = open_row(NOW - metering.STALE_AFTER + timedelta(seconds=1))
    with Session(engine) as s:
        report = controller.reconcile(s, NOW)
    assert report.scaled == {ep["id"]: (0, 1)} and len(report.created) == 1
    with Session(engine) as s:
        row = s.get(TokenUsage, fresh)
        assert row is not None and row.settled_at is None and row.reserved_tokens == 100
        abandoned = s.get(TokenUsage, stale)
        assert abandoned is not None and abandoned.settled_at is not None
        assert abandoned.settled_at.replace(tzinfo=UTC) == NOW  # settled once, not again
