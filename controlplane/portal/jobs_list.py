"""The jobs list (``/portal/jobs``): search, filters, sort, pages both ways, each job's
duration and GPU-hours, bulk cancel behind a confirmation, and *Clone* into the submit form.

Invariants:

- **Scope first.** Every listing starts from the caller's member (``lookup.scoped``); the
  filters only narrow it. A member user's ``member=other`` or another member's submitter
  gives the same empty page as a name that does not exist, and bulk ids of another member's
  jobs are refused exactly like missing ids (counted, never named).
- **One query per page.** Duration and GPU-hours come from correlated sums over the job's
  usage records (as the job's page computes them, ``live.run_time``), in the same statement
  as the rows, so sorting by them is done by the database and a page costs one query.
- **The URL is the state.** Filters, sort and page are GET parameters; the page works
  without JavaScript and its live fragment (``/portal/live/jobs``) is asked with the same
  parameters. Bad values give the page (400) with what is wrong, never a 500.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Float, case, func, literal, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select

from controlplane.api import schemas
from controlplane.api.deps import SessionDep
from controlplane.db.models import (
    Dataset,
    Job,
    Member,
    Pool,
    PriorityClass,
    Role,
    UsageRecord,
    User,
)
from controlplane.db.types import UTCDateTime, utcnow
from controlplane.errors import InvalidRequest, NuriError
from controlplane.jobstate import JobStatus
from controlplane.numerals import ascii_int
from controlplane.portal import i18n, notices, sessions, views
from controlplane.portal.routes import (
    FormDep,
    Visit,
    VisitDep,
    _submit_page,
    field,
    member_names,
    page,
    see_other,
)
from controlplane.services import jobs
from controlplane.serving.names import SERVE_KIND

router = APIRouter(prefix="/portal", include_in_schema=False)

PAGE_SIZE = 50
MAX_PAGE = 100_000
MAX_SEARCH = 200
MAX_BULK = 200  # ids in one bulk cancel: four pages' worth of ticked boxes
SORTS = {
    "submitted": "Submitted",
    "name": "Name",
    "status": "Status",
    "duration": "Duration",
    "gpu_hours": "GPU-hours",
}
ORDERS = {"desc": "descending", "asc": "ascending"}
SHOWS = {"active": "Active", "finished": "Finished", "all": "All"}
_GROUPS: dict[str, Sequence[str] | None] = {
    "active": views.ACTIVE,
    "finished": views.FINISHED,
    "all": None,
}


# -- the query in the URL --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What the list shows, as its GET parameters say. ``status`` (one status) overrides the
    ``show`` tab's group; ``submitter`` is an email or ``me``; ``member`` a member's name."""

    show: str = "active"
    q: str = ""
    status: str = ""
    kind: str = ""
    member: str = ""
    submitter: str = ""
    pool: str = ""
    sort: str = "submitted"
    order: str = "desc"
    page: int = 1

    def params(self, **changes: Any) -> dict[str, str]:
        """The non-default parameters (``show`` always, first): short, stable URLs."""
        values = asdict(replace(self, **changes))
        default = asdict(ListQuery())
        kept = {k: str(v) for k, v in values.items() if k == "show" or v != default[k]}
        return kept

    def querystring(self, **changes: Any) -> str:
        return urlencode(self.params(**changes))

    def url(self, path: str = "/portal/jobs", **changes: Any) -> str:
        return f"{path}?{self.querystring(**changes)}"

    def flipped(self, sort: str) -> str:
        """The order a click on ``sort``'s column header asks for."""
        if sort == self.sort:
            return "asc" if self.order == "desc" else "desc"
        return "asc" if sort == "name" else "desc"

    @property
    def narrowed(self) -> bool:
        """Whether anything beyond the tab filters the rows (the empty text says so)."""
        return any((self.q, self.status, self.kind, self.member, self.submitter, self.pool))


def parse_query(
    params: Mapping[str, str], pools: Sequence[str], kinds: Sequence[str]
) -> tuple[ListQuery, list[str]]:
    """The query the parameters ask for, and what is wrong with them (a bad value is left
    at its default and named in the problems)."""
    problems: list[str] = []
    values: dict[str, Any] = {}

    def text(name: str, limit: int) -> str:
        value = (params.get(name) or "").strip()
        if len(value) > limit:
            problems.append(f"{name}: at most {limit} characters")
            return ""
        return value

    def choice(name: str, allowed: Sequence[str], words: str, upper: bool = False) -> None:
        value = text(name, 100)
        if upper:
            value = value.upper()
        if value and value not in allowed:
            problems.append(f"{name}: {value!r} is not {words}: one of {', '.join(allowed)}")
        elif value:
            values[name] = value

    choice("show", list(SHOWS), "a tab")
    choice("status", [s.value for s in JobStatus], "a job status", upper=True)
    choice("kind", kinds, "a job kind")
    choice("pool", pools, "a pool")
    choice("sort", list(SORTS), "a column the list sorts by")
    choice("order", list(ORDERS), "an order")
    values["q"] = text("q", MAX_SEARCH)
    values["member"] = text("member", 100)
    values["submitter"] = text("submitter", 320)
    raw_page = (params.get("page") or "").strip()
    if raw_page:
        number = ascii_int(raw_page)
        if number is None or not 1 <= number <= MAX_PAGE:
            problems.append(f"page: should be a whole number from 1 to {MAX_PAGE}")
        else:
            values["page"] = number
    return ListQuery(**values), problems


# -- duration and GPU-hours in SQL -----------------------------------------------------------


class seconds_between(FunctionElement[float]):
    """``end - start`` in seconds, on SQLite and PostgreSQL (NULL when either is NULL)."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(seconds_between, "postgresql")
def _seconds_postgres(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


def _not_negative(value: ColumnElement[float]) -> ColumnElement[float]:
    return case((value < 0, 0.0), else_=value)


def run_columns(now: datetime) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The job's seconds on GPUs (None before it ever ran) and its GPU-seconds, as
    ``live.run_time`` counts them: every attempt's usage record, an open one up to ``now``;
    a job with no record yet counts from ``started_at``."""
    at = literal(now, UTCDateTime)
    rec = UsageRecord
    still_open = col(rec.ended_at).is_(None)
    so_far = _not_negative(seconds_between(rec.started_at, at))
    closed = _not_negative(seconds_between(rec.started_at, rec.ended_at))
    span = case((still_open, so_far), else_=closed)
    gpu = case((still_open, so_far * rec.gpus), else_=col(rec.gpu_seconds))
    mine = col(rec.job_id) == col(Job.id)
    seconds = select(func.sum(span)).where(mine).correlate(Job).scalar_subquery()
    gpu_seconds = select(func.sum(gpu)).where(mine).correlate(Job).scalar_subquery()
    fallback = _not_negative(
        seconds_between(Job.started_at, func.coalesce(col(Job.finished_at), at))
    )
    return func.coalesce(seconds, fallback), func.coalesce(gpu_seconds, 0.0)


# -- the rows --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRow:
    job: schemas.JobPublic
    seconds: float | None
    gpu_hours: float


def rows_of(
    session: Session, visit: Visit, query: ListQuery, now: datetime, limit: int
) -> tuple[list[JobRow], bool]:
    """One page of the caller's jobs as ``query`` asks, and whether a next page exists."""
    caller = visit.principal
    seconds, gpu_seconds = run_columns(now)
    stmt = select(Job, seconds, gpu_seconds)
    if not caller.reads_all_members:  # ``lookup.scoped``, for a select of several columns
        stmt = stmt.where(Job.member_id == (caller.member_id or ""))
    if query.status:
        stmt = stmt.where(Job.status == query.status)
    elif (group := _GROUPS[query.show]) is not None:
        stmt = stmt.where(col(Job.status).in_(list(group)))
    if query.q:
        needle = query.q.lower()
        stmt = stmt.where(
            or_(
                func.lower(col(Job.name)).contains(needle, autoescape=True),
                col(Job.id).contains(needle, autoescape=True),
            )
        )
    if query.kind:
        stmt = stmt.where(Job.kind == query.kind)
    if query.pool:
        stmt = stmt.where(Job.pool == query.pool)
    if query.member:
        # Narrows the scope, never widens it: another member's name finds nothing here.
        named = select(Member.id).where(
            or_(col(Member.name) == query.member, col(Member.id) == query.member)
        )
        stmt = stmt.where(col(Job.member_id).in_(named))
    if query.submitter:
        if query.submitter.lower() == "me":
            stmt = stmt.where(Job.submitter_id == caller.user_id)
        else:
            users = select(User.id).where(func.lower(col(User.email)) == query.submitter.lower())
            stmt = stmt.where(col(Job.submitter_id).in_(users))
    stmt = stmt.order_by(*_ordering(query, seconds, gpu_seconds))
    found = session.exec(stmt.offset((query.page - 1) * limit).limit(limit + 1)).all()
    rows = [
        JobRow(
            schemas.JobPublic.model_validate(job),
            None if s is None else float(s),
            float(g or 0.0) / 3600,
        )
        for job, s, g in found[:limit]
    ]
    return rows, len(found) > limit


def _ordering(
    query: ListQuery, seconds: ColumnElement[Any], gpu_seconds: ColumnElement[Any]
) -> list[Any]:
    """The ORDER BY of ``query``: its column, jobs without a value last, then the id (ids
    are time-ordered) so that pages never overlap or skip a row."""
    status_rank = case({s.value: n for n, s in enumerate(JobStatus)}, value=col(Job.status))
    key: Any = {
        # Ids are time-ordered (``new_id``): the primary key's index serves the default sort.
        "submitted": col(Job.id),
        "name": func.lower(col(Job.name)),
        "status": status_rank,
        "duration": seconds,
        "gpu_hours": gpu_seconds,
    }[query.sort]
    ascending = query.order == "asc"
    order: list[Any] = []
    if query.sort == "duration":
        order.append(case((seconds.is_(None), 1), else_=0))
    order.append(key.asc() if ascending else key.desc())
    if query.sort != "submitted":
        order.append(col(Job.id).asc() if ascending else col(Job.id).desc())
    return order


def list_context(
    session: Session, visit: Visit, params: Mapping[str, str]
) -> tuple[dict[str, Any], int]:
    """The list page's (and its fragment's) context, and the status to answer with."""
    pools = list(session.exec(select(Pool.name).order_by(col(Pool.name))).all())
    kinds = [*views.job_kinds(), SERVE_KIND]
    query, problems = parse_query(params, pools, kinds)
    caller = visit.principal
    members: list[str] = []
    if caller.reads_all_members:
        members = list(session.exec(select(Member.name).order_by(col(Member.name))).all())
    rows: list[JobRow] = []
    has_next = False
    if not problems:
        rows, has_next = rows_of(session, visit, query, utcnow(), PAGE_SIZE)
    can_bulk = "write" in caller.scopes and caller.role is not Role.AUDITOR
    return {
        "visit": visit,
        "query": query,
        "problems": problems,
        "rows": rows,
        "names": member_names(session, {r.job.member_id for r in rows}),
        "has_next": has_next,
        "statuses": [s.value for s in JobStatus],
        "kinds": kinds,
        "pools": pools,
        "members": members,
        "sorts": SORTS,
        "orders": ORDERS,
        "shows": SHOWS,
        "bulk": can_bulk and any(_cancellable(visit, r.job) for r in rows),
        "can_bulk": can_bulk,
        # Keep asking while something on this page can still change, or new jobs may appear.
        "live": not problems
        and (
            (query.show == "active" and not query.status)
            or any(not views.terminal(r.job.status) for r in rows)
        ),
    }, (400 if problems else 200)


def _cancellable(visit: Visit, job: Any) -> bool:
    return not views.terminal(job.status) and visit.cancels(job)


@router.get("/jobs")
def job_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    context, status = list_context(session, visit, request.query_params)
    counted = bulk_message(request, visit.secret)
    if counted:
        context["flash"] = counted
    return page(request, "jobs.html", status, **context)


@router.get("/live/jobs")
def job_list_fragment(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    """The jobs list's table, for the same parameters as the page it refreshes."""
    context, status = list_context(session, visit, request.query_params)
    return page(request, "_jobs_table.html", status, **context)


# -- bulk cancel -----------------------------------------------------------------------------

BULK_ACTION = "bulk-cancel"
_COUNTED = re.compile(r"jobs_cancelled-([0-9]{1,4})-([0-9]{1,4})")


def selected_ids(form: list[tuple[str, str]]) -> list[str]:
    """The ticked boxes (``job``) and a confirmation's carried list (``jobs``), once each."""
    ids: list[str] = []
    for key, value in form:
        parts = value.split(",") if key == "jobs" else [value] if key == "job" else []
        for part in (p.strip() for p in parts):
            if part and part not in ids:
                ids.append(part[:64])
    return ids


def list_url(back: str | None) -> str:
    """The list (with its filters) to return to: only ``/portal/jobs`` with known params."""
    keep = {"show", "q", "status", "kind", "member", "submitter", "pool", "sort", "order", "page"}
    pairs = [(k, v) for k, v in parse_qsl(back or "", keep_blank_values=False) if k in keep]
    return "/portal/jobs" + (f"?{urlencode(pairs)}" if pairs else "")


def bulk_done(url: str, visit: Visit, cancelled: int, left: int) -> RedirectResponse:
    """On to the list, whose page then says how many were cancelled (``bulk_message``).

    The counts ride in the flash cookie as ``jobs_cancelled-N-M.<mac>``: ``notices`` itself
    only knows fixed keys (so ignores it), the list page reads it and ``page`` clears it like
    any flash. The MAC (the session's confirmation key) means no one plants a count."""
    response = see_other(url)
    key = f"jobs_cancelled-{min(cancelled, 9999)}-{min(left, 9999)}"
    mac = notices.confirm_token(visit.secret, "flash", key)[:32]
    response.set_cookie(
        notices.FLASH_COOKIE,
        f"{key}.{mac}",
        max_age=notices.FLASH_LIFETIME_S,
        path="/portal",
        httponly=True,
        samesite="strict",
    )
    return response


def bulk_message(request: Request, secret: str) -> str | None:
    value = request.cookies.get(notices.FLASH_COOKIE) or ""
    key, _, mac = value.partition(".")
    counted = _COUNTED.fullmatch(key)
    if counted is None:
        return None
    if not hmac.compare_digest(notices.confirm_token(secret, "flash", key)[:32], mac):
        return None
    catalog = i18n.catalog_for(request)
    return counts_sentence(int(counted.group(1)), int(counted.group(2)), catalog)


def counts_sentence(cancelled: int, left: int, catalog: i18n.Catalog = i18n.CATALOGS["en"]) -> str:
    """What a bulk cancel did, in the viewer's language (fixed sentences, counts filled in)."""
    if cancelled == left == 0:
        return catalog.gettext("No jobs were selected: nothing was cancelled.")
    said = catalog.ngettext(
        "%(n)s job was cancelled; it checkpoints and stops.",
        "%(n)s jobs were cancelled; they checkpoint and stop.",
        cancelled,
    ) % {"n": cancelled}
    if cancelled == 0:
        said = catalog.gettext("No job was cancelled.")
    if left:
        said += " " + catalog.ngettext(
            "%(n)s job was left as it was (already finished, or not a job you may cancel).",
            "%(n)s jobs were left as they were (already finished, or not a job you may cancel).",
            left,
        ) % {"n": left}
    return said


@router.post("/jobs/bulk-cancel")
def bulk_cancel(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    """Ticked jobs: first a confirmation page listing those that will be cancelled (nothing
    changes), then each is cancelled through ``jobs.cancel`` with the single cancel's rules.
    Ids of jobs the caller may not see are counted with the missing ones, never named."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    visit.principal.require_write()
    ids = selected_ids(form)
    if len(ids) > MAX_BULK:
        raise InvalidRequest(
            f"at most {MAX_BULK} jobs at once; {len(ids)} were selected",
            code="too_many_jobs",
            details={"selected": len(ids), "limit": MAX_BULK},
        )
    back = list_url(field(form, "back"))
    reason = (field(form, "reason") or "").strip()[:500]
    if not ids:
        return bulk_done(back, visit, 0, 0)
    target = ",".join(sorted(ids))
    if not notices.confirmed(visit.secret, BULK_ACTION, target, field(form, "confirm")):
        listed = []
        for job_id in ids:
            try:
                job = jobs.get_job(session, visit.principal, job_id)
            except NuriError:  # missing, or another member's: the same
                continue
            if _cancellable(visit, job):
                listed.append(job)
        if not listed:
            return bulk_done(back, visit, 0, len(ids))
        carried = {"jobs": target, "back": back.partition("?")[2], "reason": reason}
        catalog, count = i18n.catalog_for(request), len(listed)
        return page(
            request,
            "jobs_confirm.html",
            visit=visit,
            question=catalog.ngettext("Cancel %(n)s job?", "Cancel %(n)s jobs?", count)
            % {"n": count},
            consequence=catalog.gettext(
                "Each will checkpoint and stop. A cancelled job cannot be resumed."
            ),
            button=catalog.ngettext("Yes, cancel %(n)s job", "Yes, cancel %(n)s jobs", count)
            % {"n": count},
            back=back,
            action_url=request.url.path,
            confirm=notices.confirm_token(visit.secret, BULK_ACTION, target),
            carry=carried,
            listed=listed,
            left=len(ids) - len(listed),
        )
    cancelled = 0
    for job_id in ids:
        try:
            said = reason or "cancelled in the portal"
            jobs.cancel(session, visit.principal, job_id, said, utcnow())
        except NuriError:  # missing, another member's, not the caller's, already final
            session.rollback()
            continue
        cancelled += 1
    return bulk_done(back, visit, cancelled, len(ids) - cancelled)


# -- clone -----------------------------------------------------------------------------------


def clone_form(
    job: Job, class_preemptible: bool | None, dataset_refs: set[str]
) -> tuple[views.SubmitForm, list[str]]:
    """The submit form filled with ``job``'s request, and what of it the form cannot carry
    (it takes those parts' defaults)."""
    steps_key = "max_new_tokens" if job.kind == "inference" else "steps"
    steps = job.config.get(steps_key)
    hours = job.max_runtime_s / 3600
    form = views.SubmitForm(
        kind=job.kind,
        model=job.model,
        name=job.name,
        gpus=str(job.gpus),
        teacher=job.teacher or "",
        steps=str(steps) if isinstance(steps, int) else "",
        allowed_pools=list(job.allowed_pools),
        inputs=[r for r in job.inputs if r in dataset_refs],
        priority_class=job.priority_class,
        max_runtime_h=f"{hours:.6g}" if math.isfinite(hours) else "24",
        preemptible="default"
        if class_preemptible is None or class_preemptible == job.preemptible
        else ("yes" if job.preemptible else "no"),
    )
    left = [f"setting {k} = {v}" for k, v in sorted(job.config.items()) if k != steps_key]
    left += [f"input {r} (not a dataset of yours)" for r in job.inputs if r not in dataset_refs]
    if job.preferred_pools:
        left.append(f"preferred pools {', '.join(job.preferred_pools)}")
    if job.nodes > 1:
        left.append(f"layout {job.nodes} nodes of {job.gpus_per_node} GPUs")
    return form, left


@router.get("/jobs/{job_id}/clone")
def clone(
    request: Request, session: SessionDep, visit: VisitDep, job_id: str, form: str | None = None
) -> Response:
    """The submit form prefilled with a job the caller may see (another member's is the same
    404 as a missing one). Like ``/portal/jobs/new`` the page lives at ``?form=<nonce>``: a
    new nonce is a new idempotency key (a new job), going back to it finds the same one."""
    job = jobs.get_job(session, visit.principal, job_id)
    if job.kind == SERVE_KIND:
        raise InvalidRequest(
            "an endpoint's replica is not cloned: create an endpoint instead",
            code="not_clonable",
            details={"job_id": job.id},
        )
    if not visit.submits:
        return _submit_page(request, session, visit, views.SubmitForm(), None, 200)
    if not notices.valid_nonce(form):
        return see_other(f"/portal/jobs/{job.id}/clone?form={notices.new_nonce()}")
    cls = session.get(PriorityClass, job.priority_class)
    refs = {
        ref
        for pair in session.exec(
            select(Dataset.id, Dataset.name).where(Dataset.member_id == job.member_id)
        ).all()
        for ref in pair
    }
    typed, left = clone_form(job, cls.preemptible if cls else None, refs)
    return _submit_page(
        request, session, visit, typed, None, 200, form, cloned=job, not_carried=left
    )
