"""One trace per job through the real API and the real scheduler, read from the in-memory
exporter: what ``job.admit`` says, the cycle's links, attempts after a preemption, the trace a
scheduler starts for a job submitted without one, and JSON log lines with the job's trace id.

Ray is replaced by :class:`FakeRay` (what the scheduler asks of Ray, answered at once): the
spans from the Ray actors and the cross-process export are in ``test_tracing_processes``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
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

import quotas
from controlplane.db.models import Job
from controlplane.db.types import utcnow
from controlplane.observability import logs, tracing
from controlplane.scheduler import SchedulerConfig, SchedulerService
from controlplane.scheduler.executor import Inventory, LaunchSpec
from tests.conftest import bearer, make_client, ok
from tests.integration.scheduler.conftest import POOL, setup_world

SYNTHETIC = {"payload": "synthetic", "steps": 3, "step_seconds": 0.1}


class FakeRay:
    """Every registered node alive, launches that succeed, supervisors in ``state``."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.launched: list[LaunchSpec] = []

    def inventory(self, registered: set[str]) -> Inventory:
        return Inventory(alive={n: f"ray-{n}" for n in registered})

    def launch_many(self, specs: list[LaunchSpec], alive: dict[str, str]) -> dict[str, Any]:
        self.launched.extend(specs)
        self.state.update({s.job_id: "running" for s in specs})
        return {}

    def status_many(self, jobs: list[tuple[str, int, int]]) -> dict[str, Any]:
        return {
            job_id: {"attempt": attempt, "state": self.state[job_id], "errors": [], "events": []}
            if job_id in self.state
            else None
            for job_id, attempt, _ in jobs
        }

    def preempt(self, job_id: str, deadline: float) -> None:
        self.state[job_id] = "preempted"  # checkpointed and stopped at once

    def teardown(self, job_id: str, attempt: int) -> None:
        self.state.pop(job_id, None)


class Clock:
    """A second per reading: attempts have lengths, the lease never lapses."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


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


def scheduler(engine: Engine, tmp: Path, ray: FakeRay) -> SchedulerService:
    config = SchedulerConfig(
        jobs_root=tmp / "jobs",
        lease_ttl_s=3600,
        engine=quotas.EngineConfig(grace_period=8.0, min_runtime=0.0),
    )
    return SchedulerService(engine, ray, config, clock=Clock())  # type: ignore[arg-type]


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


def test_admission_placement_and_accounting_continue_the_submissions_trace(
    engine: Engine, traced: Traced, tmp_path: Path
) -> None:
    client = make_client(engine)
    alpha, _ = setup_world(client)
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

    ray = FakeRay()
    svc = scheduler(engine, tmp_path, ray)
    out = io.StringIO()
    handler = logs.handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("nuri.scheduler")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        report = svc.tick()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (admitted_id,) = report.admitted
    (waiting_id,) = {first["id"], second["id"]} - {admitted_id}
    waiting_reason = stored(engine, waiting_id).reasons[0]["code"]

    (cycle,) = traced.named("scheduler.cycle")
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

    (admit,) = traced.named("job.admit")
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
    (spec,) = ray.launched
    assert spec.traceparent == tracing.format_traceparent(place.context), "job.run's parent"

    (line,) = [json.loads(x) for x in out.getvalue().splitlines() if "admitting" in x]
    assert line["trace_id"] == f"{submission.trace_id:032x}"
    assert (line["job_id"], line["member_id"]) == (admitted_id, job.member_id)

    ray.state[admitted_id] = "succeeded"
    assert svc.tick().finished == {admitted_id: "SUCCEEDED"}
    (account,) = traced.named("job.account")
    assert account.context.trace_id == submission.trace_id
    attrs = account.attributes or {}
    assert attrs["nuri.usage.gpu_seconds"] > 0 and attrs["nuri.job.outcome"] == "SUCCEEDED"
    assert attrs["nuri.job.attempt"] == 1
    assert {s.context.trace_id for s in traced.of_job(admitted_id)} == {submission.trace_id}


def test_a_preempted_job_keeps_one_trace_across_its_attempts(
    engine: Engine, traced: Traced, tmp_path: Path
) -> None:
    client = make_client(engine)
    alpha, beta = setup_world(client)
    borrower = submit(client, alpha, gpus=16, nodes=2)
    ray = FakeRay()
    svc = scheduler(engine, tmp_path, ray)
    assert svc.tick().admitted == [borrower["id"]]
    owner = submit(client, beta, gpus=16, nodes=2, priority_class="training")
    assert svc.tick().preempted == [borrower["id"]]

    (notice,) = traced.named("job.preempt")
    assert (notice.attributes or {})["nuri.preemption.reason"] == "reclaim"
    assert (notice.attributes or {})["nuri.preemption.for_job"] == owner["id"]
    cycle = traced.named("scheduler.cycle")[-1]
    links = {link.attributes["nuri.job.id"]: link.attributes for link in cycle.links}
    assert links[borrower["id"]]["nuri.decision"] == "preempted"
    assert links[borrower["id"]]["nuri.reason"] == "reclaim"
    assert links[owner["id"]]["nuri.decision"] == "waiting"

    svc.tick()  # the borrower stopped: requeued (attempt 2), the owner admitted
    ray.state[owner["id"]] = "succeeded"
    svc.tick()  # the owner is done: the borrower's second attempt is admitted
    assert stored(engine, borrower["id"]).attempt == 2

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


def test_a_job_submitted_without_a_trace_gets_one_at_admission(
    sqlite_engine: Engine, traced: Traced, tmp_path: Path
) -> None:
    tracing.activate(None)  # the API does not trace, and the caller sent no traceparent
    client = make_client(sqlite_engine)
    alpha, _ = setup_world(client)
    job = submit(client, alpha, gpus=8)
    assert stored(sqlite_engine, job["id"]).traceparent is None
    tracing.activate(traced.provider)  # the scheduler does
    svc = scheduler(sqlite_engine, tmp_path, FakeRay())
    assert svc.tick().admitted == [job["id"]]
    (admit,) = traced.named("job.admit")
    assert admit.parent is None, "the admission is the root of the job's trace"
    assert stored(sqlite_engine, job["id"]).traceparent == tracing.format_traceparent(admit.context)
    (place,) = traced.named("job.place")
    assert place.parent is not None and place.parent.span_id == admit.context.span_id
