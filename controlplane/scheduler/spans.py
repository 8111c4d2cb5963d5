"""The scheduler's part of each job's trace, and the links of its cycles.

Each function is one call from the phase of the cycle it describes (``service``): the engine's
admission (``job.admit``), a preemption notice (``job.preempt``), the placement on Ray
(``job.place``), the closing of an attempt's usage (``job.account``), and the cycle's own
span with its links to the jobs it decided about. With tracing off they cost a check (and
the admission and preemption still log a line naming the job and member).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span
from sqlalchemy import update
from sqlmodel import Session, col, select

import quotas
from controlplane import residency
from controlplane.db.models import Job
from controlplane.observability import tracing
from controlplane.scheduler.executor import placement_group_name

if TYPE_CHECKING:
    from controlplane.scheduler.service import CycleReport

log = logging.getLogger("nuri.scheduler")

# Rows per query when reading waiting jobs' traces (well under any database's limit on
# bound parameters).
_CHUNK = 500


def admitted(s: Session, job: Job, admit: quotas.Admit) -> None:
    """``job.admit``: the engine's decision (called before the QUEUED -> ADMITTED write, while
    ``job.reasons`` still says what the job waited for), with the Cedar policies that let its
    data into the pool; linked to and from this cycle. A job submitted without a trace starts
    one here, stored with it in this transaction."""
    cycle = trace.get_current_span()
    attributes = {
        "nuri.pool": admit.pool,
        "nuri.admission.decision": "admitted",
        "nuri.admission.reasons": [str(r.get("code", "")) for r in job.reasons],
        "nuri.admission.borrowing": admit.borrowing,
        "nuri.admission.backfilled": admit.backfilled,
        "nuri.placement.nodes": [n for n, _ in admit.assignments],
        "nuri.job.gpus": job.gpus,
    }
    if tracing.enabled():
        decision = residency.placement(s, job, admit.pool)
        attributes.update(
            {
                "nuri.residency.allowed": decision.allowed,
                "nuri.residency.policy_ids": list(decision.policy_ids),
                "nuri.residency.policy_set": decision.policy_set_hash,
            }
        )
    traceparent = job.traceparent
    with tracing.job_span("job.admit", job, attributes, links=[cycle.get_span_context()]) as span:
        log.info("admitting job %s (attempt %d) to %s", job.id, job.attempt, admit.pool)
        if traceparent is None and span.is_recording():
            traceparent = tracing.traceparent_of(span)
            s.execute(
                update(Job)
                .where(col(Job.id) == job.id, col(Job.traceparent).is_(None))
                .values(traceparent=traceparent)
            )
    reason = "borrowing" if admit.borrowing else "nominal"
    tracing.link_job(cycle, traceparent, job.id, "admitted", reason)


def preempting(job: Job, preempt: quotas.Preempt, deadline: datetime) -> None:
    """``job.preempt`` in the victim's trace: why, for whom, and by when; linked from this
    cycle."""
    cycle = trace.get_current_span()
    attributes = {
        "nuri.preemption.reason": preempt.reason,
        "nuri.preemption.for_job": preempt.for_job,
        "nuri.preemption.deadline": deadline.isoformat(),
    }
    with tracing.job_span("job.preempt", job, attributes, links=[cycle.get_span_context()]):
        log.info("preempting job %s for %s (%s)", job.id, preempt.for_job, preempt.reason)
    tracing.link_job(cycle, job.traceparent, job.id, "preempted", preempt.reason)


def link_waiting(s: Session, pending: Sequence[quotas.Pending], linked: int) -> None:
    """Link this cycle to the jobs it left waiting, with each one's first reason: in queue
    order, as many as the span keeps beside the ``linked`` admissions and preemptions."""
    cycle = trace.get_current_span()
    if not cycle.is_recording():
        return
    cycle.set_attribute("nuri.cycle.waiting", len(pending))
    budget = tracing.link_budget()
    chosen = sorted(pending, key=lambda p: p.position)
    if budget is not None:
        chosen = chosen[: max(0, budget - linked)]
    for i in range(0, len(chosen), _CHUNK):
        part = {p.job_id: p for p in chosen[i : i + _CHUNK]}
        rows = s.exec(select(Job.id, Job.traceparent).where(col(Job.id).in_(part))).all()
        traces = dict(rows)
        for job_id, p in part.items():
            reason = p.reasons[0].code if p.reasons else "waiting"
            tracing.link_job(cycle, traces.get(job_id), job_id, "waiting", reason)


def placing(job: Job) -> Span:
    """``job.place``, open while Ray reserves the job's placement group and starts its
    supervisor; its context is what the supervisor's ``job.run`` continues."""
    return tracing.start_span(
        "job.place",
        job.traceparent,
        {
            **tracing.job_attributes(job),
            "nuri.pool": job.pool or "",
            "nuri.placement.nodes": [str(n) for n, _ in job.assignment],
            "nuri.placement.gpus": [int(g) for _, g in job.assignment],
            "nuri.placement.group": placement_group_name(job.id, job.attempt),
        },
    )


def accounted(job: Job, started_ns: int, gpu_seconds: float, outcome: str) -> None:
    """``job.account``: the attempt's GPU-seconds, when its usage record was closed just now
    (a second close of the same attempt adds nothing and records nothing)."""
    if gpu_seconds <= 0 or not tracing.enabled():
        return
    tracing.record_job_span(
        "job.account",
        job,
        started_ns,
        {
            "nuri.pool": job.pool or "",
            "nuri.usage.gpu_seconds": gpu_seconds,
            "nuri.job.outcome": outcome,
        },
    )


def cycle_done(span: Span, report: CycleReport) -> None:
    """What the cycle did, on its span."""
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "nuri.scheduler.leader": report.leader,
            "nuri.scheduler.token": report.token or 0,
            "nuri.cycle.depth": report.depth,
            "nuri.cycle.admitted": len(report.admitted),
            "nuri.cycle.preempted": len(report.preempted),
            "nuri.cycle.finished": len(report.finished),
            "nuri.cycle.requeued": len(report.requeued),
        }
    )
    if report.error:
        span.set_attribute("nuri.cycle.error", report.error)
