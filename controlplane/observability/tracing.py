"""OpenTelemetry tracing: one trace per job across processes, one trace per scheduler cycle.

Configured only by the standard ``OTEL_*`` variables: a process exports over OTLP/HTTP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, samples by
``OTEL_TRACES_SAMPLER``, batches by ``OTEL_BSP_*`` and names itself by ``OTEL_SERVICE_NAME`` /
``OTEL_RESOURCE_ATTRIBUTES`` (else ``nuri-api``, ``nuri-scheduler``, ``nuri-worker``, ...).
Unset, nothing is installed: spans come from OpenTelemetry's no-op tracer and the API's routes
run without the instrumentation middleware, so the hot ``POST /v1/jobs`` pays one header
look-up.

One trace per job. The API stores the W3C ``traceparent`` of the submission with the job (the
server span's, or the caller's own header when the API does not trace); everything later
continues it: the scheduler's ``job.admit`` (member, pool, decision, reason codes, the Cedar
policy ids that allowed the pool), ``job.place`` (nodes, placement group) and ``job.account``
(GPU-seconds), the supervisor actor's ``job.run`` and each rank's ``job.rank`` (checkpoints,
preemption notices and sampled steps as span events). Every span carries the attempt, so
retries and preemptions show as repeated groups in the one trace. A job submitted without a
trace gets one at admission (its ``job.admit`` becomes the root and is stored). Each
``scheduler.cycle`` is its own trace, linked to every job it admitted, preempted or left
waiting (up to ``OTEL_SPAN_LINK_COUNT_LIMIT`` links; admissions and preemptions first).

Processes that end export what they hold: the API and scheduler on shutdown, each Ray actor
before it reports the end of its work (the control plane kills it soon after).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Status, StatusCode
from opentelemetry.trace.span import TraceFlags

from controlplane.observability import logs

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.engine import Engine

log = logging.getLogger("nuri.tracing")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# Steps recorded on a rank's span: powers of two, then every STEP_EVENT_EVERY-th, so a run of
# any length stays well inside the SDK's 128 events per span.
STEP_EVENT_EVERY = 1000
# Routes not worth a trace (probes and scrapes, every few seconds).
EXCLUDED_URLS = "/healthz,/readyz,/metrics"

_provider: TracerProvider | None = None
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()  # those with SQL spans
# The OTEL_* settings the Ray actors of a job get (see ``worker_options``).
_worker_env: dict[str, str] = {}


def exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the environment asks for: ``otlp`` needs an endpoint (the SDK's
    default one, localhost:4318, is never assumed), ``console`` prints spans."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return [e for e in named if (e == "otlp" and endpoint) or e == "console"]


def configure(service: str) -> bool:
    """Install the SDK for this process when the environment asks for export; True when
    tracing is on. Idempotent: the first call names the process (``nuri up`` is ``nuri``)."""
    if _provider is not None:
        return True
    environ = os.environ
    chosen = exporters(environ)
    if not chosen:
        return False
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if "otlp" in chosen and protocol != "http/protobuf":
        log.warning("tracing off: OTLP protocol %r is not supported (use http/protobuf)", protocol)
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=resource(service))  # sampler: OTEL_TRACES_SAMPLER
    if "otlp" in chosen:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*
    if "console" in chosen:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _worker_env.clear()
    _worker_env.update(
        {k: v for k, v in environ.items() if k.startswith("OTEL_") and k != "OTEL_SERVICE_NAME"}
    )
    activate(provider)
    return True


def resource(service: str) -> Resource:
    """Resource attributes per the semantic conventions; ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` override the defaults (``service.instance.id`` is the SDK's
    random UUID for this process)."""
    from importlib.metadata import PackageNotFoundError, version

    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    try:
        nuri_version = version("nuri")
    except PackageNotFoundError:  # run from a source tree that was never installed
        nuri_version = "unknown"
    defaults: dict[str, str | int] = {
        "service.name": service,
        "service.namespace": "nuri",
        "service.version": nuri_version,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    return Resource.create(defaults).merge(OTELResourceDetector().detect())


def activate(provider: TracerProvider | None) -> None:
    """Make ``provider`` this process's source of Nuri's spans (None: tracing off), with the
    httpx instrumentation that carries the trace into the requests the process makes.
    ``configure`` calls it; tests call it with an in-memory exporter's provider."""
    global _provider
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    for instrumentor in (HTTPXClientInstrumentor(), SQLAlchemyInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _engines.clear()
    _provider = provider
    if provider is not None:
        HTTPXClientInstrumentor().instrument(tracer_provider=provider)


def enabled() -> bool:
    return _provider is not None


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer("nuri")


def flush(timeout_s: float = 5.0) -> None:
    """Export every ended span now (an actor about to be killed, a test about to read)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop exporting (a process on its way out)."""
    if _provider is not None:
        _provider.shutdown()


# --- instrumentation ----------------------------------------------------------------------


def instrument_app(app: FastAPI) -> None:
    """Server spans for every route but probes and scrapes; no-op when tracing is off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls=EXCLUDED_URLS,
        exclude_spans=["receive", "send"],  # two spans per request that say nothing here
    )


def instrument_engine(engine: Engine) -> None:
    """A span per SQL statement on ``engine``. The instrumentation takes its engines in one
    call, so a process's second engine (``nuri api --workers 1`` builds two) re-instruments
    them all. It declares SQLAlchemy < 2.1; its event hooks work on 2.1."""
    if _provider is None or engine in _engines:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    _engines.add(engine)
    instrumentor = SQLAlchemyInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(engines=list(_engines), tracer_provider=_provider, skip_dep_check=True)


# --- W3C trace context ----------------------------------------------------------------------


def format_traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def normalized_traceparent(value: str | None) -> str | None:
    """A version-00 ``traceparent`` as stored (lower case, only the sampled flag), or None when
    malformed or all-zero. Cheap: no span context is built (the API's hot path calls it)."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    if m is None or not int(m.group(1), 16) or not int(m.group(2), 16):
        return None
    return f"00-{m.group(1)}-{m.group(2)}-{int(m.group(3), 16) & 1:02x}"


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A remote span context from a version-00 ``traceparent``; None when malformed."""
    valid = normalized_traceparent(value)
    if valid is None:
        return None
    _, trace_id, span_id, flags = valid.split("-")
    return SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))


def traceparent_of(span: Span) -> str | None:
    ctx = span.get_span_context()
    return format_traceparent(ctx) if ctx.is_valid else None


def submission_traceparent(header: str | None) -> str | None:
    """What a submission stores: the current (server) span's context when this process
    traces, else the caller's valid ``traceparent`` header, else nothing."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return format_traceparent(current)
    return normalized_traceparent(header)


def _parent(traceparent: str | None) -> Context:
    """The context a job's span continues; an empty one (a new trace) when it has none, never
    the current one (a job's spans do not belong to the cycle that handles them)."""
    ctx = parse_traceparent(traceparent)
    return trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx else Context()


def job_attributes(job: Any) -> dict[str, Any]:
    """What identifies a job attempt on every span of its trace (a ``Job`` row)."""
    return {
        "nuri.job.id": job.id,
        "nuri.job.attempt": job.attempt,
        "nuri.member.id": job.member_id,
        "nuri.job.kind": job.kind,
    }


@contextmanager
def job_span(
    name: str,
    job: Any,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[SpanContext] = (),
) -> Iterator[Span]:
    """A span in ``job``'s trace (a ``Job`` row), current for the block, whose log lines carry
    the job and member ids."""
    with logs.bound(job_id=job.id, member_id=job.member_id):
        if _provider is None:
            yield trace.INVALID_SPAN
            return
        with tracer().start_as_current_span(
            name,
            context=_parent(job.traceparent),
            attributes={**job_attributes(job), **(attributes or {})},
            links=[Link(c) for c in links],
        ) as span:
            yield span


def start_span(
    name: str, traceparent: str | None, attributes: Mapping[str, Any] | None = None
) -> Span:
    """A span continuing ``traceparent`` that the caller ends (one that outlives a call: a
    placement awaited in a batch, a run inside an actor)."""
    if _provider is None:
        return trace.INVALID_SPAN
    return tracer().start_span(name, context=_parent(traceparent), attributes=attributes)


def record_job_span(
    name: str, job: Any, start_ns: int, attributes: Mapping[str, Any] | None = None
) -> None:
    """A span in ``job``'s trace that began at ``start_ns`` (``time.time_ns()``) and ends now:
    for what is known only once it is over (a usage record that was closed)."""
    if _provider is None:
        return
    span = tracer().start_span(
        name,
        context=_parent(job.traceparent),
        attributes={**job_attributes(job), **(attributes or {})},
        start_time=start_ns,
    )
    span.end()


def end(span: Span, attributes: Mapping[str, Any] | None = None, error: str | None = None) -> None:
    """End ``span`` with ``attributes``, failed when ``error`` says why."""
    if not span.is_recording():
        return
    span.set_attributes(attributes or {})
    if error:
        span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()


# --- scheduler cycles -----------------------------------------------------------------------


@contextmanager
def cycle_span(holder: str) -> Iterator[Span]:
    """A cycle: a trace of its own (root span, whatever is current)."""
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        "scheduler.cycle", context=Context(), attributes={"nuri.scheduler.holder": holder}
    ) as span:
        yield span


def link_budget() -> int | None:
    """How many links a span keeps (``OTEL_SPAN_LINK_COUNT_LIMIT``; None: unlimited)."""
    if _provider is None:
        return 0
    from opentelemetry.sdk.trace import SpanLimits

    limit: int | None = SpanLimits().max_links
    return limit


def link_job(span: Span, traceparent: str | None, job_id: str, decision: str, reason: str) -> None:
    """Link a cycle to a job it decided about, with the decision and its reason."""
    ctx = parse_traceparent(traceparent)
    if ctx is not None:
        span.add_link(
            ctx, {"nuri.job.id": job_id, "nuri.decision": decision, "nuri.reason": reason}
        )


# --- Ray actors -----------------------------------------------------------------------------


def worker_options() -> dict[str, Any]:
    """Ray actor options that give a job's actors this process's ``OTEL_*`` settings (their
    raylet's environment need not have them); the ranks inherit the supervisor's. Each actor
    names itself (``nuri-worker``) rather than taking the scheduler's service name."""
    if _provider is None or not _worker_env:
        return {}
    return {"runtime_env": {"env_vars": dict(_worker_env)}}


def sampled_step(step: int) -> bool:
    """Whether a training step is recorded on the rank's span (see ``STEP_EVENT_EVERY``)."""
    return step > 0 and (step & (step - 1) == 0 or step % STEP_EVENT_EVERY == 0)
