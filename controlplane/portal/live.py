"""The job pages that follow a job: the page, the fragments the browser polls, the whole log.

A job's page and the jobs list render in full on every request (a reload, or a browser with
JavaScript off, shows everything); with JavaScript on, the vendored htmx replaces only their
changing parts every two seconds from the ``/portal/live/...`` fragment routes, and a job's
fragment stops asking once the job is final (its replacement carries no trigger). Fragments
and the log download are scoped exactly like the page: another member's job is the same 404
as a missing one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, or_, select

from controlplane.api import schemas
from controlplane.api.deps import SessionDep
from controlplane.db.models import Artifact, Dataset, Job, JobEvent, JobLog, JobMetric, UsageRecord
from controlplane.db.types import utcnow
from controlplane.portal import charts, i18n, views
from controlplane.portal.routes import (
    PAGE_HEADERS,
    Visit,
    VisitDep,
    curve_samples,
    member_names,
    page,
)
from controlplane.portal.usage_page import left_this_period
from controlplane.services import jobs
from controlplane.usage import running_gpu_seconds
from workers.knobs import KnobError, knobs_for

router = APIRouter(prefix="/portal", include_in_schema=False)
LOG_TAIL = 50
LOG_BATCH = 1000  # lines per query of the log download: memory stays flat for any length


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the job's steps are: the last step a worker reported, of the configured total."""

    step: int
    total: int | None

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, self.step * 100 // self.total)


@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Every checkpoint of every attempt, as one line: how many, and the last one."""

    count: int
    last_step: int | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class RunTime:
    """Time on GPUs over all attempts (a running one counts up to now) and its GPU-hours."""

    seconds: float | None
    gpu_hours: float


@dataclass(frozen=True, slots=True)
class Input:
    """A job input by the name its member gave it, with the page that lists it."""

    ref: str
    name: str
    kind: str
    href: str | None


def total_steps(job: Job) -> int | None:
    """The optimizer steps the job's config asks for (defaults included); None for kinds that
    count no steps (inference) or a config the knobs no longer accept."""
    try:
        knobs = knobs_for(job.kind, job.config)
    except KnobError:
        return None
    steps = getattr(knobs, "steps", None)
    return int(steps) if isinstance(steps, int) else None


def progress_of(session: Session, job: Job) -> Progress | None:
    last = session.exec(select(func.max(JobMetric.step)).where(JobMetric.job_id == job.id)).one()
    if last is None and job.status not in ("RUNNING", "PREEMPTING"):
        return None
    return Progress(int(last or 0), total_steps(job))


def checkpoints_of(session: Session, job_id: str) -> Checkpoints:
    marks = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "checkpoint")
    count = session.exec(select(func.count()).select_from(marks.subquery())).one()
    last = session.exec(marks.order_by(col(JobEvent.id).desc()).limit(1)).first()
    step = last.details.get("step") if last else None
    return Checkpoints(
        int(count), int(step) if isinstance(step, int) else None, last.at if last else None
    )


def run_time(session: Session, job: Job, now: datetime) -> RunTime:
    records = session.exec(select(UsageRecord).where(UsageRecord.job_id == job.id)).all()
    gpu_seconds = sum(running_gpu_seconds(r, now) for r in records)
    if records:
        seconds: float | None = sum(
            max(0.0, ((r.ended_at or now) - r.started_at).total_seconds()) for r in records
        )
    elif job.started_at is not None:
        seconds = max(0.0, ((job.finished_at or now) - job.started_at).total_seconds())
    else:
        seconds = None
    return RunTime(seconds, gpu_seconds / 3600)


def inputs_of(session: Session, job: Job) -> list[Input]:
    """The job's inputs (ids or names as submitted) resolved among its member's datasets and
    artifacts; one that no longer resolves is shown as submitted, without a link."""
    refs = list(job.inputs)
    if not refs:
        return []
    found: dict[str, Input] = {}
    for d in session.exec(
        select(Dataset).where(
            Dataset.member_id == job.member_id,
            or_(col(Dataset.id).in_(refs), col(Dataset.name).in_(refs)),
        )
    ).all():
        entry = Input(d.id, d.name, d.kind, "/portal/datasets")
        found[d.id] = found[d.name] = entry
    for a in session.exec(
        select(Artifact).where(Artifact.member_id == job.member_id, col(Artifact.id).in_(refs))
    ).all():
        found[a.id] = Input(a.id, a.name, a.kind, "/portal/artifacts")
    return [found.get(ref, Input(ref, ref, "", None)) for ref in refs]


def live_context(
    session: Session, visit: Visit, job_id: str, say: charts.Say
) -> tuple[Job, dict[str, Any]]:
    """The job, and what changes while it runs (the fragment), read as the visitor: another
    member's job raises the same ``NotFound`` as a missing one. ``say``: the viewer's gettext,
    for the loss curve's own words."""
    row = jobs.get_job(session, visit.principal, job_id)
    job = schemas.JobPublic.model_validate(row)
    return row, {
        "visit": visit,
        "job": job,
        "live": not views.terminal(job.status),
        "progress": progress_of(session, row),
        "checkpoints": checkpoints_of(session, job.id),
        "run": run_time(session, row, utcnow()),
        "events": jobs.events(session, visit.principal, job.id),
        "logs": jobs.logs(session, visit.principal, job.id, None, LOG_TAIL),
        "chart": charts.loss_curve(curve_samples(session, job.id), say=say),
        "outputs": session.exec(
            select(Artifact).where(Artifact.job_id == job.id).order_by(col(Artifact.created_at))
        ).all(),
    }


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: SessionDep, visit: VisitDep, job_id: str) -> HTMLResponse:
    row, context = live_context(session, visit, job_id, i18n.catalog_for(request).gettext)
    return page(
        request,
        "job.html",
        member=member_names(session, {row.member_id}).get(row.member_id, row.member_id),
        inputs=inputs_of(session, row),
        budget_left=left_this_period(session, visit.principal, {row.member_id}, utcnow()).get(
            row.member_id
        ),
        **context,
    )


@router.get("/live/jobs/{job_id}")
def job_fragment(
    request: Request, session: SessionDep, visit: VisitDep, job_id: str
) -> HTMLResponse:
    """The job page's changing parts: the status block (the element that polls) and, swapped
    out of band, the activity (curve, events, outputs, log tail)."""
    _, context = live_context(session, visit, job_id, i18n.catalog_for(request).gettext)
    return page(request, "_job_fragment.html", **context)


@router.get("/jobs/{job_id}/log")
def log_download(
    request: Request, session: SessionDep, visit: VisitDep, job_id: str
) -> StreamingResponse:
    """The job's whole log, every attempt in order, as a text file. Read in batches, each in
    its own short session, so a long log neither sits in memory nor holds a transaction."""
    job = jobs.get_job(session, visit.principal, job_id)
    engine: Engine = request.app.state.engine
    headers = {
        **PAGE_HEADERS,
        "Content-Disposition": f'attachment; filename="{quote(job.id)}.log"',
    }
    return StreamingResponse(
        log_lines(engine, job.id), media_type="text/plain; charset=utf-8", headers=headers
    )


def log_lines(engine: Engine, job_id: str) -> Iterator[str]:
    after, attempt = 0, None
    while True:
        with Session(engine) as s:
            rows = s.exec(
                select(JobLog)
                .where(JobLog.job_id == job_id, col(JobLog.id) > after)
                .order_by(col(JobLog.id))
                .limit(LOG_BATCH)
            ).all()
        if not rows:
            return
        chunk = []
        for row in rows:
            if row.attempt != attempt:
                attempt = row.attempt
                chunk.append(f"# attempt {attempt}\n")
            chunk.append(f"{views.when(row.at)} {row.line}\n")
        yield "".join(chunk)
        after = int(rows[-1].id or 0)
