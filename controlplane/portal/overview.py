"""The cluster overview (``/portal/overview``), for the platform admin and the auditor: each
pool's GPUs in use and free now and the jobs waiting that may run there, with charts of GPUs
in use per pool, the queue's length and the admission wait over the last day, week or
quarter (``?window=``). Read-only; other roles are refused as on the cluster page.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session, col, func, select

from controlplane.api.deps import SessionDep
from controlplane.db.models import Job, Pool
from controlplane.db.types import utcnow
from controlplane.errors import Forbidden
from controlplane.portal import i18n, timeseries
from controlplane.portal.routes import VisitDep, page
from controlplane.services import inventory

router = APIRouter(prefix="/portal", include_in_schema=False)

HOLDING = ("ADMITTED", "RUNNING", "PREEMPTING")  # statuses whose GPUs are taken in a pool


@dataclass(frozen=True, slots=True)
class PoolNow:
    """A pool at this moment: capacity of its nodes that are up, GPUs held by jobs, and the
    queued jobs that may run there (a job allowed in any pool counts in every pool)."""

    name: str
    gpu_model: str
    capacity: int
    in_use: int
    waiting_jobs: int
    waiting_gpus: int

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.in_use)


@dataclass(frozen=True, slots=True)
class Waiting:
    jobs: int
    gpus: int


def pools_now(session: Session) -> tuple[list[PoolNow], Waiting]:
    """Every pool's GPUs now, and the whole queue (each job once)."""
    held = dict(
        session.exec(
            select(Job.pool, func.coalesce(func.sum(Job.gpus), 0))
            .where(col(Job.status).in_(HOLDING))
            .group_by(col(Job.pool))
        ).all()
    )
    queued = session.exec(select(Job.allowed_pools, Job.gpus).where(Job.status == "QUEUED")).all()
    rows = []
    for pool in session.exec(select(Pool).order_by(col(Pool.name))).all():
        here = [gpus for allowed, gpus in queued if not allowed or pool.name in allowed]
        _, capacity = inventory.pool_capacity(session, pool.id)
        rows.append(
            PoolNow(
                pool.name,
                pool.gpu_model,
                capacity,
                int(held.get(pool.name) or 0),
                len(here),
                sum(here),
            )
        )
    return rows, Waiting(len(queued), sum(gpus for _, gpus in queued))


@router.get("/overview")
def overview(
    request: Request,
    session: SessionDep,
    visit: VisitDep,
    window: timeseries.WindowName = "day",
) -> HTMLResponse:
    caller = visit.principal
    if not caller.reads_all_members:
        raise Forbidden("the cluster overview is for platform admins and auditors")
    now = utcnow()
    chosen = timeseries.WINDOWS[window]
    pools, waiting = pools_now(session)
    say = i18n.catalog_for(request).gettext  # the charts' words in the viewer's language
    charts = timeseries.gpu_charts(session, caller, chosen, now, by_member=False, say=say)
    return page(
        request,
        "overview.html",
        visit=visit,
        pools=pools,
        waiting=waiting,
        window=chosen,
        windows=list(timeseries.WINDOWS),
        gpu_chart=charts[0],
        queue_charts=timeseries.queue_charts(session, caller, chosen, now, say),
    )
