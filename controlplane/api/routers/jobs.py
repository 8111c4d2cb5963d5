"""/v1/jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, principal_for
from controlplane.db.types import utcnow
from controlplane.observability import logs, tracing
from controlplane.services import jobs

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    operation_id="submitJob",
    responses={
        200: {
            "description": "Replay of an earlier submission with the same Idempotency-Key and body"
        }
    },
)
async def submit_job(
    request: Request,
    body: schemas.JobCreate,
    response: Response,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> schemas.JobPublic:
    # The API's hottest route: authentication and the submission share one session and one
    # trip to the thread pool (a sync dependency plus a sync endpoint would be two).
    traceparent = tracing.submission_traceparent(request.headers.get("traceparent"))

    def work() -> tuple[schemas.JobPublic, bool]:
        with Session(request.app.state.engine, expire_on_commit=False) as session:
            # Only reads happen in this session (the rows are written by the group commit,
            # a token's use stamp in a transaction of its own): autocommit spares PostgreSQL
            # a BEGIN and a COMMIT round trip per submission. (SQLite's driver begins no
            # transaction for reads: there, switching modes would only cost time.)
            if request.app.state.engine.dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            caller = principal_for(request, session, settings, request.headers.get("authorization"))
            return jobs.submit(
                session,
                caller,
                body,
                idempotency_key,
                utcnow(),
                settings.default_job_retries,
                settings.synthetic_allowed,
                traceparent,
            )

    job, created = await run_in_threadpool(work)
    logs.bind(job_id=job.id, member_id=job.member_id)  # on this request's access log line
    wake = getattr(request.app.state, "scheduler_wake", None)
    if created and wake is not None:
        wake()  # event-driven: a submission triggers a cycle (the periodic tick is the floor)
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("/jobs", operation_id="listJobs")
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    page: PageDep,
    status_: Annotated[list[str] | None, Query(alias="status")] = None,
    kind: str | None = None,
    submitter: Annotated[str | None, Query(description="a user id, or 'me'")] = None,
    pool: str | None = None,
    member: str | None = None,
) -> schemas.Page[schemas.JobPublic]:
    rows, nxt = jobs.list_jobs(
        session, caller, page.limit, page.cursor, status_, kind, submitter, pool, member
    )
    return schemas.Page(items=[schemas.JobPublic.model_validate(r) for r in rows], next_cursor=nxt)


@router.get("/jobs/{job_id}", operation_id="getJob")
def get_job(job_id: str, session: SessionDep, caller: CallerDep) -> schemas.JobPublic:
    return schemas.JobPublic.model_validate(jobs.get_job(session, caller, job_id))


@router.post("/jobs/{job_id}/cancel", operation_id="cancelJob")
def cancel_job(
    job_id: str, session: SessionDep, caller: CallerDep, body: schemas.JobCancel | None = None
) -> schemas.JobPublic:
    reason = body.reason if body else ""
    return schemas.JobPublic.model_validate(jobs.cancel(session, caller, job_id, reason, utcnow()))


@router.get("/jobs/{job_id}/events", operation_id="listJobEvents")
def job_events(
    job_id: str, session: SessionDep, caller: CallerDep
) -> schemas.Page[schemas.JobEventPublic]:
    return schemas.Page(
        items=[
            schemas.JobEventPublic.model_validate(e) for e in jobs.events(session, caller, job_id)
        ]
    )


@router.get("/jobs/{job_id}/logs", operation_id="getJobLogs")
def job_logs(
    job_id: str,
    session: SessionDep,
    caller: CallerDep,
    attempt: Annotated[int | None, Query(ge=1, le=schemas.DB_INT_MAX)] = None,
    tail: Annotated[int, Query(ge=1, le=5000)] = 200,
    after_id: Annotated[
        int | None,
        Query(
            ge=0,
            le=schemas.DB_INT_MAX,
            description="follow from here: the first `tail` lines whose id is above it",
        ),
    ] = None,
) -> schemas.Page[schemas.JobLogPublic]:
    return schemas.Page(
        items=[
            schemas.JobLogPublic.model_validate(r)
            for r in jobs.logs(session, caller, job_id, attempt, tail, after_id)
        ]
    )


@router.get("/jobs/{job_id}/metrics", operation_id="getJobMetrics")
def job_metrics(
    job_id: str,
    session: SessionDep,
    caller: CallerDep,
    after_step: Annotated[int, Query(ge=0, le=schemas.DB_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> schemas.Page[schemas.JobMetricPublic]:
    return schemas.Page(
        items=[
            schemas.JobMetricPublic.model_validate(r)
            for r in jobs.metrics(session, caller, job_id, after_step, limit)
        ]
    )
