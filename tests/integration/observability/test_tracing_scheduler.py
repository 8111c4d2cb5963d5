"""One trace per job through the real API, the real scheduler and Ray, read from the in-memory
exporter: what ``job.admit`` says, the cycle's links, attempts after a preemption, the trace a
scheduler starts for a job submitted without one, and JSON log lines with the job's trace id.

The scheduler runs on the real local Ray cluster of the scheduler tests (its jobs run the
synthetic payload); the spans of the Ray actors themselves, exported from their own processes,
are checked in ``test_tracing_processes``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.db.models import Job
from controlplane.observability import logs, tracing
from tests.conftest import bearer, make_client, ok
from tests.integration.scheduler import conftest as scheduler_world
from tests.integration.scheduler.conftest import POOL, Env

# The scheduler tests' fixtures: a real multi-node Ray and a world on SQLite served by it.
ray_cluster = scheduler_world.ray_cluster
env = scheduler_world.env

SYNTHETIC = {"payload": "synthetic", "steps": 3, "step_seconds": 0.1}


@dataclass
class Traced:
    exporter: InMemorySpanExporter
    provider: TracerProvider

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def of_job(self, job_id: str) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if (s.attributes or {}).get("nuri.job.id") == job_id
        ]


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.activate(provider)
    try:
        yield Traced(exporter, provider)
    finally:
        tracing.activate(None)
        provider.shutdown()


def submit(client: TestClient, token: str, **body: Any) -> dict[str, Any]:
    headers = {**bearer(token), **body.pop("headers", {})}
    job = {"kind": "finetune", "model": "axk1-tiny", "config": SYNTHETIC, **body}
    out: dict[str, Any] = ok(client.post("/v1/jobs", headers=headers, json=job), 201)
    return out


def stored(engine: Engine, job_id: str) -> Job:
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def trace_of(engine: Engine, job_id: str) -> int:
    ctx = tracing.parse_traceparent(stored(engine, job_id).traceparent)
    assert ctx is not None, "the job stores its trace"
    return ctx.trace_id


def cycle_that(traced: Traced, decision: str, job_id: str) -> ReadableSpan:
    """The first ``scheduler.cycle`` span with a link saying ``decision`` about ``job_id``."""
    for cycle in traced.named("scheduler.cycle"):
        for link in cycle.links:
            attrs = link.attributes or {}
            if attrs.get("nuri.job.id") == job_id and attrs.get("nuri.decision") == decision:
                return cycle
    raise AssertionError(f"no cycle {decision} {job_id}")


def tick_until_admitted(env: Env) -> list[str]:
    """Cycles until one admits something: the jobs it admitted."""
    deadline = time.monotonic() + scheduler_world.WAIT_S
    while time.monotonic() < deadline:
        admitted = env.service.tick().admitted
        if admitted:
            return admitted
        time.sleep(0.3)  # poll interval
    raise AssertionError("nothing admitted in time")


def test_admission_placement_and_accounting_continue_the_submissions_trace(
    traced: Traced, env: Env
) -> None:
    engine, client, alpha = env.engine, env.client, env.alpha
    caller = f"00-{'ab' * 16}-{'cd' * 8}-01"  # a pipeline's own trace
    pipeline = tracing.parse_traceparent(caller)
    assert pipeline is not None
    with trace.use_span(NonRecordingSpan(pipeline)):  # whether or not httpx carries it
        first = submit(client, alpha, gpus=8, headers={"traceparent": caller})
    # alpha may hold 8 + 16 borrowed GPUs: with the first job admitted this one cannot fit.
    second = submit(client, alpha, gpus=24)
    assert trace_of(engine, first["id"]) == int("ab" * 16, 16), "the caller's trace continues"
    servers = {s.context.trace_id for s in traced.named("POST /v1/jobs")}
    assert {trace_of(engine, j["id"]) for j in (first, second)} <= servers

    out = io.StringIO()
    handler = logs.handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("nuri.scheduler")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        admitted = tick_until_admitted(env)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (admitted_id,) = admitted
    (waiting_id,) = {first["id"], second["id"]} - {admitted_id}
    waiting_reason = stored(engine, waiting_id).reasons[0]["code"]

    cycle = cycle_that(traced, "admitted", admitted_id)
    assert cycle.parent is None, "a cycle is a trace of its own"
    links = {link.attributes["nuri.job.id"]: link for link in cycle.links if link.attributes}
    assert set(links) == {admitted_id, waiting_id}, "every job it considered"
    assert links[admitted_id].attributes == {
        "nuri.job.id": admitted_id,
        "nuri.decision": "admitted",
        "nuri.reason": "borrowing" if admitted_id == second["id"] else "nominal",
    }
    assert links[waiting_id].attributes["nuri.decision"] == "waiting"
    assert links[waiting_id].attributes["nuri.reason"] == waiting_reason
    for job_id, link in links.items():
        assert link.context.trace_id == trace_of(engine, job_id)

    (admit,) = [s for s in traced.named("job.admit") if s.attributes["nuri.job.id"] == admitted_id]
    job = stored(engine, admitted_id)
    submission = tracing.parse_traceparent(job.traceparent)
    assert submission is not None and admit.parent is not None
    assert (admit.context.trace_id, admit.parent.span_id) == (
        submission.trace_id,
        submission.span_id,
    )
    attrs = admit.attributes or {}
    assert attrs["nuri.member.id"] == job.member_id
    assert attrs["nuri.job.attempt"] == 1
    assert attrs["nuri.pool"] == POOL
    assert attrs["nuri.admission.decision"] == "admitted"
    assert attrs["nuri.admission.reasons"] == ("awaiting_scheduler",)
    assert attrs["nuri.residency.allowed"] is True
    assert attrs["nuri.residency.policy_ids"], "the Cedar permits that let the data in"
    assert [link.context for link in admit.links] == [cycle.context]

    (place,) = traced.named("job.place")
    assert place.context.trace_id == submission.trace_id
    assert (place.attributes or {})["nuri.placement.group"] == f"nuri-job-{admitted_id}-a1"
    assert list((place.attributes or {})["nuri.placement.nodes"]) == [n for n, _ in job.assignment]

    lines = [json.loads(x) for x in out.getvalue().splitlines() if "admitting" in x]
    line = next(x for x in lines if x["job_id"] == admitted_id)
    assert line["trace_id"] == f"{submission.trace_id:032x}"
    assert line["member_id"] == job.member_id

    # The synthetic job runs on Ray and succeeds: its attempt is accounted in its trace.
    env.until_status(admitted_id, "SUCCEEDED")
    (account,) = [
        s for s in traced.named("job.account") if s.attributes["nuri.job.id"] == admitted_id
    ]
    assert account.context.trace_id == submission.trace_id
    attrs = account.attributes or {}
    assert attrs["nuri.usage.gpu_seconds"] > 0 and attrs["nuri.job.outcome"] == "SUCCEEDED"
    assert attrs["nuri.job.attempt"] == 1
    assert {s.context.trace_id for s in traced.of_job(admitted_id)} == {submission.trace_id}


def test_a_preempted_job_keeps_one_trace_across_its_attempts(traced: Traced, env: Env) -> None:
    engine, client = env.engine, env.client
    long_run = {"payload": "synthetic", "steps": 400, "step_seconds": 0.1, "checkpoint_every": 2}
    borrower = submit(client, env.alpha, gpus=16, nodes=2, config=long_run)
    env.until_status(borrower["id"], "RUNNING")
    owner = submit(client, env.beta, gpus=16, nodes=2, priority_class="training")
    env.run_until(lambda: stored(engine, borrower["id"]).attempt == 2)  # preempted, requeued
    env.until_status(owner["id"], "SUCCEEDED")
    env.run_until(lambda: _admitted_twice(traced, borrower))

    (notice,) = traced.named("job.preempt")
    assert (notice.attributes or {})["nuri.preemption.reason"] == "reclaim"
    assert (notice.attributes or {})["nuri.preemption.for_job"] == owner["id"]
    cycle = cycle_that(traced, "preempted", borrower["id"])
    links = {link.attributes["nuri.job.id"]: link.attributes for link in cycle.links}
    assert links[borrower["id"]]["nuri.reason"] == "reclaim"
    assert links[owner["id"]]["nuri.decision"] == "waiting"

    spans = traced.of_job(borrower["id"])
    assert {s.context.trace_id for s in spans} == {trace_of(engine, borrower["id"])}
    by_attempt = sorted(
        (s.name, (s.attributes or {})["nuri.job.attempt"])
        for s in spans
        if s.name.startswith("job.")
    )
    assert by_attempt == [
        ("job.account", 1),
        ("job.admit", 1),
        ("job.admit", 2),
        ("job.place", 1),
        ("job.place", 2),
        ("job.preempt", 1),
    ]
    (account,) = [s for s in spans if s.name == "job.account"]
    assert (account.attributes or {})["nuri.job.outcome"] == "requeued: preempted"


def _admitted_twice(traced: Traced, job: dict[str, Any]) -> bool:
    return len([s for s in traced.of_job(job["id"]) if s.name == "job.place"]) == 2


def test_a_job_submitted_without_a_trace_gets_one_at_admission(traced: Traced, env: Env) -> None:
    tracing.activate(None)  # the API does not trace, and the caller sent no traceparent
    job = submit(make_client(env.engine), env.alpha, gpus=8)
    assert stored(env.engine, job["id"]).traceparent is None
    tracing.activate(traced.provider)  # the scheduler does
    env.run_until(lambda: bool(traced.named("job.place")))
    (admit,) = traced.named("job.admit")
    assert admit.parent is None, "the admission is the root of the job's trace"
    assert stored(env.engine, job["id"]).traceparent == tracing.format_traceparent(admit.context)
    (place,) = traced.named("job.place")
    assert place.parent is not None and place.parent.span_id == admit.context.span_id
