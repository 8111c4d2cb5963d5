"""One submitted job is exactly one trace, from separate processes: ``nuri api``, a scheduler
process (``python -m controlplane.scheduler``) and the job's Ray actors each export over
OTLP/HTTP with the real exporter to a receiver in a process of its own (``otlp_receiver``).
Every scheduler cycle links to every job it considered; the API's and the scheduler's JSON log
lines carry the job's trace id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from controlplane.db.engine import make_engine
from controlplane.db.models import Job
from controlplane.observability import tracing
from tests.conftest import ADMIN_TOKEN, bearer, ok
from tests.e2e.server import free_port, nuri_server
from tests.integration.observability.otlp_receiver import Received, Span, receiver
from tests.integration.scheduler import conftest as scheduler_tests
from tests.integration.scheduler.conftest import WAIT_S, setup_world

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
ray_cluster = scheduler_tests.ray_cluster  # their multi-node Ray, a fixture here too

SYNTHETIC = {"payload": "synthetic", "steps": 6, "step_seconds": 0.1, "checkpoint_every": 2}
JOB_SPANS = {"job.admit", "job.place", "job.run", "job.rank", "job.account"}


def otel_env(got: Received, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": got.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the receiver soon
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "NURI_LOG_FORMAT": "json",
        "NURI_DATABASE_URL": f"sqlite:///{tmp / 'nuri.db'}",
        "NURI_HOME": str(tmp / ".nuri"),
        "RAY_AUTH_MODE": "disabled",
    }


@contextmanager
def scheduler_process(env: dict[str, str], address: str, tmp: Path) -> Iterator[Any]:
    """``python -m controlplane.scheduler`` on the test's database and Ray, for the block."""
    with open(tmp / "scheduler.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.scheduler",
                "--ray-address",
                address,
                "--jobs-root",
                str(tmp / "jobs"),
                "--interval",
                "0.5",
                "--grace-period",
                "8",
                "--min-runtime",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)  # it stops and exports what it holds
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.3)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The log's JSON lines (the CLI's own console messages are not log records)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def links_of(span: Span) -> dict[str, dict[str, Any]]:
    return {link["attributes"]["nuri.job.id"]: link for link in span["links"]}


def status(c: httpx.Client, job_id: str) -> str:
    out: str = ok(c.get(f"/v1/jobs/{job_id}", headers=bearer(ADMIN_TOKEN)))["status"]
    return out


def submit(c: httpx.Client, token: str, gpus: int) -> str:
    body = {"kind": "finetune", "model": "axk1-tiny", "gpus": gpus, "config": SYNTHETIC}
    return str(ok(c.post("/v1/jobs", headers=bearer(token), json=body), 201)["id"])


def decided(spans: list[Span], job_id: str, decision: str) -> bool:
    """Some cycle linked ``job_id`` with ``decision``."""
    return any(
        links_of(s).get(job_id, {}).get("attributes", {}).get("nuri.decision") == decision
        for s in spans
        if s["name"] == "scheduler.cycle"
    )


def test_one_submitted_job_is_one_trace_across_processes(ray_cluster: Any, tmp_path: Path) -> None:
    cluster, _ = ray_cluster
    port = free_port()
    with receiver(tmp_path) as got:
        env = otel_env(got, tmp_path)
        api_env = {**env, "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN, "NURI_WARM_PLANNER": "false"}
        api_args = ["api", "--workers", "1", "--port", str(port)]
        with (
            nuri_server(api_args, port, api_env, tmp_path, tmp_path / "api.log") as api,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c,
        ):
            alpha, _ = setup_world(c)  # type: ignore[arg-type]
            with scheduler_process(env, cluster.address, tmp_path) as sched:
                job = submit(c, alpha, 8)
                wait_for(lambda: status(c, job) in ("RUNNING", "SUCCEEDED"))
                # alpha may hold 8 + 16 borrowed GPUs: this one waits while the first runs.
                waiting = submit(c, alpha, 24)
                got.wait_for(lambda spans: decided(spans, waiting, "waiting"))
                ok(c.post(f"/v1/jobs/{waiting}/cancel", headers=bearer(alpha)))
                wait_for(lambda: status(c, job) == "SUCCEEDED")
                trace_id = trace_hex(tmp_path, job)
                got.wait_for(
                    lambda spans: (
                        {s["name"] for s in spans if s["trace_id"] == trace_id} >= JOB_SPANS
                    )
                )
        spans = got.spans()  # the processes have stopped: every cycle is in

        # Exactly one trace: every span about the job is in the submission's trace.
        mine = [s for s in spans if s["attributes"].get("nuri.job.id") == job]
        assert {s["trace_id"] for s in mine} == {trace_id}
        in_trace = [s for s in spans if s["trace_id"] == trace_id]
        by_name = {s["name"]: s for s in in_trace}
        services = {s["resource"]["service.name"] for s in in_trace}
        assert {"nuri-api", "nuri-scheduler", "nuri-worker"} <= services
        pids: dict[str, set[int]] = {}
        for s in in_trace:
            pids.setdefault(s["resource"]["service.name"], set()).add(s["resource"]["process.pid"])
        assert pids["nuri-api"] == {api.pid} and pids["nuri-scheduler"] == {sched.pid}
        assert not pids["nuri-worker"] & {api.pid, sched.pid, os.getpid()}, "Ray actors"
        assert len({s["resource"]["service.instance.id"] for s in in_trace}) >= 3

        # The submission's server span is the root; each step continues the one before.
        (server,) = [s for s in in_trace if s["name"] == "POST /v1/jobs"]
        assert server["parent_span_id"] == "" and server["resource"]["service.name"] == "nuri-api"
        for name in ("job.admit", "job.place", "job.account"):
            assert by_name[name]["parent_span_id"] == server["span_id"], name
        assert by_name["job.run"]["parent_span_id"] == by_name["job.place"]["span_id"]
        assert by_name["job.rank"]["parent_span_id"] == by_name["job.run"]["span_id"]
        admit = by_name["job.admit"]["attributes"]
        assert admit["nuri.admission.decision"] == "admitted" and admit["nuri.job.attempt"] == 1
        assert admit["nuri.residency.policy_ids"]
        assert by_name["job.run"]["attributes"]["nuri.job.outcome"] == "succeeded"
        events = {e["name"] for e in by_name["job.rank"]["events"]}
        assert {"checkpoint", "step"} <= events
        assert by_name["job.account"]["attributes"]["nuri.usage.gpu_seconds"] > 0

        # Every cycle links to every job it admitted, preempted or left waiting.
        cycles = [s for s in spans if s["name"] == "scheduler.cycle"]
        traces = {job: trace_id, waiting: trace_hex(tmp_path, waiting)}
        for cycle in cycles:
            a = cycle["attributes"]
            considered = (
                a.get("nuri.cycle.admitted", 0)
                + a.get("nuri.cycle.preempted", 0)
                + a.get("nuri.cycle.waiting", 0)
            )
            assert len(cycle["links"]) == considered, cycle
            assert cycle["parent_span_id"] == "" and cycle["trace_id"] not in traces.values()
            for job_id, link in links_of(cycle).items():
                assert link["trace_id"] == traces[job_id]
        decisions = {
            (job_id, link["attributes"]["nuri.decision"])
            for cycle in cycles
            for job_id, link in links_of(cycle).items()
        }
        assert {(job, "admitted"), (waiting, "waiting")} <= decisions
        assert by_name["job.admit"]["links"][0]["span_id"] in {c["span_id"] for c in cycles}

    # The JSON logs of both processes carry the job's trace.
    (access,) = [
        line
        for line in json_lines(tmp_path / "api.log")
        if line.get("path") == "/v1/jobs" and line.get("job_id") == job
    ]
    assert access["trace_id"] == trace_id and access["status"] == 201
    (admitting,) = [
        line
        for line in json_lines(tmp_path / "scheduler.log")
        if line["message"].startswith(f"admitting job {job}")
    ]
    assert admitting["trace_id"] == trace_id and admitting["job_id"] == job
    assert admitting["member_id"] == admit["nuri.member.id"]


def trace_hex(tmp: Path, job_id: str) -> str:
    engine = make_engine(f"sqlite:///{tmp / 'nuri.db'}")
    try:
        with Session(engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            ctx = tracing.parse_traceparent(job.traceparent)
    finally:
        engine.dispose()
    assert ctx is not None, "the job stores its trace"
    return f"{ctx.trace_id:032x}"
