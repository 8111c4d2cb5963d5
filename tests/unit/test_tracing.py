"""Tracing and structured logs, piece by piece: which environments export, W3C trace context
in and out, resource attributes, step sampling, and the JSON log line's context fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from controlplane.observability import logs, tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
HEADER = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),  # nothing set: nothing exported, not even to localhost:4318
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, []),  # no endpoint named
    ],
)
def test_only_the_standard_variables_switch_export_on(
    env: dict[str, str], expected: list[str]
) -> None:
    assert tracing.exporters(env) == expected


def test_unconfigured_process_traces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing.configure("nuri-test")
    assert not tracing.enabled()
    assert tracing.worker_options() == {}
    assert not tracing.start_span("job.run", HEADER).is_recording()


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        f"01-{TRACE}-{SPAN}-01",  # another version: its layout is not ours to guess
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id: invalid
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id: invalid
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-01-extra",
        "garbage",
    ],
)
def test_malformed_traceparents_are_refused(bad: str | None) -> None:
    assert tracing.parse_traceparent(bad) is None
    assert tracing.submission_traceparent(bad) is None


def test_traceparent_round_trip_keeps_ids_and_sampled_flag() -> None:
    ctx = tracing.parse_traceparent(HEADER.upper())
    assert ctx is not None and ctx.is_remote
    assert tracing.format_traceparent(ctx) == HEADER
    unsampled = tracing.parse_traceparent(f"00-{TRACE}-{SPAN}-00")
    assert unsampled is not None and not unsampled.trace_flags.sampled


def test_submission_prefers_the_current_span_over_the_callers_header() -> None:
    assert tracing.submission_traceparent(f" {HEADER} ") == HEADER  # API not tracing
    server = SpanContext(0xABC, 0xDEF, False, TraceFlags(1))
    with trace.use_span(NonRecordingSpan(server)):
        assert tracing.submission_traceparent(HEADER) == f"00-{0xABC:032x}-{0xDEF:016x}-01"


def test_resource_follows_the_semantic_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    attrs = tracing.resource("nuri-scheduler").attributes
    assert attrs["service.name"] == "nuri-scheduler"
    assert attrs["service.namespace"] == "nuri"
    assert attrs["service.version"]
    assert attrs["service.instance.id"]
    assert attrs["host.name"] and attrs["process.pid"]
    assert attrs["deployment.environment.name"] == "test"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gpu-cluster-api")
    assert tracing.resource("nuri-api").attributes["service.name"] == "gpu-cluster-api"


def test_steps_are_sampled_sparsely() -> None:
    sampled = [s for s in range(0, 100_001) if tracing.sampled_step(s)]
    assert sampled[:6] == [1, 2, 4, 8, 16, 32]
    assert 1000 in sampled and 1500 not in sampled and 2000 in sampled
    assert len(sampled) < 128  # the SDK keeps 128 events per span


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logs.handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("nuri.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_the_current_trace_and_the_bound_job(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_lines
    logger.info("outside")
    ctx = tracing.parse_traceparent(HEADER)
    assert ctx is not None
    with trace.use_span(NonRecordingSpan(ctx)), logs.bound(job_id="job_1", member_id="mem_a"):
        logger.info("admitting %s", "job_1")
        with logs.bound(job_id="job_2"):
            logger.warning("inner")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed")
    first, admitted, inner, failed = lines(out)
    assert "trace_id" not in first and "job_id" not in first
    assert admitted["message"] == "admitting job_1"
    assert admitted["trace_id"] == TRACE and admitted["span_id"] == SPAN
    assert (admitted["job_id"], admitted["member_id"]) == ("job_1", "mem_a")
    assert admitted["level"] == "INFO" and admitted["logger"] == "nuri.test.json"
    assert (inner["job_id"], inner["member_id"], inner["level"]) == ("job_2", "mem_a", "WARNING")
    assert "RuntimeError: boom" in str(failed["exception"])


def test_json_access_lines_are_structured(json_lines: tuple[logging.Logger, io.StringIO]) -> None:
    _, out = json_lines
    access = logging.getLogger("uvicorn.access")
    handler = logs.handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    access.addHandler(handler)
    level, access.level = access.level, logging.INFO
    try:
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/v1/jobs", "1.1", 201)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    (line,) = lines(out)
    assert line["message"] == '127.0.0.1:5000 - "POST /v1/jobs HTTP/1.1" 201'
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/jobs", 201)


def test_uvicorn_keeps_its_own_text_config() -> None:
    from uvicorn.config import LOGGING_CONFIG

    assert logs.uvicorn_config("text") is LOGGING_CONFIG
    config = logs.uvicorn_config("json")  # applied for real by the e2e tests' `nuri api`
    assert config["formatters"]["json"]["()"] == "controlplane.observability.logs.JsonFormatter"
    assert config["filters"]["context"]["()"] == "controlplane.observability.logs.ContextFilter"
    assert {h["formatter"] for h in config["handlers"].values()} == {"json"}
