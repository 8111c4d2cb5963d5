"""The portal's pages (``/portal``): thin handlers over the same services as the REST API.

Every page acts as the signed-in session's token (see ``sessions``): listings are scoped to
the caller's member, another member's job is a 404 page, roles and scopes decide what a
form may do, and every change is audited by the service that makes it. Errors are pages
with the same ``code`` and message as the API's JSON (``controlplane.api.errors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, func, select

from controlplane import usage as usage_periods
from controlplane.api import schemas
from controlplane.api.deps import SessionDep, SettingsDep
from controlplane.api.routers.inventory import csv_download
from controlplane.auth import Origin, Principal, trace_id_from
from controlplane.db.models import (
    JobMetric,
    Member,
    Pool,
    PriorityClass,
    Role,
    User,
)
from controlplane.db.types import utcnow
from controlplane.errors import IdempotencyConflict, NuriError, Unauthenticated
from controlplane.observability import tracing
from controlplane.portal import (
    audit_names,
    i18n,
    notices,
    sessions,
    timeseries,
    usage_page,
    views,
)
from controlplane.portal.timeseries import WindowName
from controlplane.services import (
    artifact_content,
    artifacts,
    auditing,
    datasets,
    inventory,
    jobs,
    reports,
)
from controlplane.settings import Settings

router = APIRouter(prefix="/portal", include_in_schema=False)


class SignInRequired(Unauthenticated):
    """No live portal session: the error page handler sends the browser to sign in."""


@dataclass(frozen=True, slots=True)
class Visit:
    """Who is looking at a page: the principal, and what the layout shows about them."""

    principal: Principal
    secret: str
    csrf: str
    email: str
    member_name: str | None

    @property
    def role(self) -> str:
        return self.principal.role.value

    @property
    def submits(self) -> bool:
        """Only a member's users and admins submit jobs (with a token that may write)."""
        p = self.principal
        return p.member_id is not None and p.role is not Role.AUDITOR and "write" in p.scopes

    def cancels(self, job: Any) -> bool:
        """Whether the job's page offers *Cancel*: as ``jobs.cancel`` allows (platform and
        member admins any job they see, member users their own), with a token that writes."""
        p = self.principal
        if "write" not in p.scopes:
            return False
        return p.role in (Role.PLATFORM_ADMIN, Role.MEMBER_ADMIN) or (job.submitter_id == p.user_id)

    @property
    def manages_users(self) -> bool:
        return self.principal.role in (Role.PLATFORM_ADMIN, Role.MEMBER_ADMIN)

    @property
    def reads_audit(self) -> bool:
        return self.principal.role in (Role.AUDITOR, Role.PLATFORM_ADMIN, Role.MEMBER_ADMIN)


def origin_of(request: Request) -> Origin:
    return Origin(
        source_ip=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
        trace_id=trace_id_from(request.headers.get("traceparent")),
    )


def get_visit(request: Request, session: SessionDep, settings: SettingsDep) -> Visit:
    secret = request.cookies.get(sessions.COOKIE)
    if not secret:
        raise SignInRequired("sign in to use the portal")
    principal, _row = sessions.resolve(
        session, secret, utcnow(), settings.token_touch_interval_s, origin_of(request)
    )
    user = session.get(User, principal.user_id)
    member = session.get(Member, principal.member_id) if principal.member_id else None
    visit = Visit(
        principal,
        secret,
        sessions.csrf_token(secret),
        user.email if user else principal.user_id,
        member.name if member else None,
    )
    # Kept for ``error_page``: an error after sign-in keeps the navigation and sign-out.
    request.state.portal_visit = visit
    return visit


VisitDep = Annotated[Visit, Depends(get_visit)]


async def read_form(request: Request) -> list[tuple[str, str]]:
    return views.parse_form(await request.body())


FormDep = Annotated[list[tuple[str, str]], Depends(read_form)]


# Every page: never cached (pages carry CSRF tokens, one shows a new token's secret), never
# framed by another site (no clickjacking of a Cancel button), only this site's assets and
# forms. The one script is the vendored htmx from this site (no inline script, no eval), and
# it may only ask this site for fragments.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    # A whole page (not a live fragment) shows, once, the message the last change left.
    visit = context.get("visit")
    shows_message = isinstance(visit, Visit) and not request.headers.get("hx-request")
    if isinstance(visit, Visit) and shows_message:
        context.setdefault("flash", notices.message_of(request, visit.secret))
    response = views.templates.TemplateResponse(
        request, template, context, status_code=status, headers=PAGE_HEADERS
    )
    if shows_message and notices.FLASH_COOKIE in request.cookies:
        notices.clear_flash(response)
    i18n.remember(request, response)
    return response


def field(form: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in form if k == name), None)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def done(url: str, visit: Visit, message: str) -> RedirectResponse:
    """After a change: on to ``url``, whose page says ``notices.MESSAGES[message]``."""
    response = see_other(url)
    notices.flash(response, visit.secret, message)
    return response


def confirmation(
    request: Request,
    visit: Visit,
    action: str,
    target: str,
    *,
    question: str,
    consequence: str,
    button: str,
    back: str,
    carry: dict[str, str] | None = None,
) -> HTMLResponse:
    """The page that asks before a dangerous change: its form posts to the same URL with
    the confirmation value (``notices.confirm_token``) and what the first form carried."""
    return page(
        request,
        "confirm.html",
        visit=visit,
        question=question,
        consequence=consequence,
        button=button,
        back=back,
        action_url=request.url.path,
        confirm=notices.confirm_token(visit.secret, action, target),
        carry=carry or {},
    )


def local_next(target: str | None) -> str:
    """Where to go after signing in: only a portal path (never another site)."""
    if target and target.startswith("/portal/") and "//" not in target and "\\" not in target:
        return target
    return "/portal/jobs"


# -- signing in and out ----------------------------------------------------------------------


@router.get("")
@router.get("/")
def home() -> RedirectResponse:
    return see_other("/portal/jobs")


def secure_cookies(request: Request, settings: Settings) -> bool:
    """Behind a TLS-terminating ingress the request arrives as http: prod always marks it."""
    return request.url.scheme == "https" or settings.env == "prod"


def check_same_site(request: Request) -> None:
    """Refuse (403 ``cross_site_request``) a POST that another site's page sent."""
    headers = request.headers
    hosts = [h for h in (headers.get("host"), headers.get("x-forwarded-host")) if h]
    sessions.check_same_site(headers.get("origin"), headers.get("referer"), hosts)


LOGIN_PATH = "/portal/login"


def login_page(
    request: Request,
    settings: Settings,
    target: str,
    error: str | None,
    status: int = 200,
) -> HTMLResponse:
    """The sign-in form, with its token and (re)newed pre-session cookie."""
    secret = sessions.login_secret(request.cookies.get(sessions.LOGIN_COOKIE))
    response = page(
        request,
        "login.html",
        status,
        next=target,
        error=error,
        login_csrf=sessions.login_token(secret),
    )
    response.set_cookie(
        sessions.LOGIN_COOKIE,
        secret,
        max_age=int(sessions.LOGIN_LIFETIME.total_seconds()),
        path=LOGIN_PATH,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, settings),
    )
    return response


@router.get("/login")
def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> HTMLResponse:
    return login_page(request, settings, local_next(next), None)


@router.post("/login")
def login(request: Request, session: SessionDep, settings: SettingsDep, form: FormDep) -> Response:
    # Login CSRF: another site's page must not sign this browser in (to its own account).
    check_same_site(request)
    sessions.check_login_token(request.cookies.get(sessions.LOGIN_COOKIE), field(form, "csrf"))
    target = local_next(field(form, "next"))
    token = field(form, "token") or ""
    try:
        secret, _ = sessions.sign_in(
            session, token, utcnow(), settings.token_touch_interval_s, origin_of(request)
        )
    except Unauthenticated as exc:
        session.rollback()
        return login_page(request, settings, target, exc.message, 401)
    secure = secure_cookies(request, settings)
    response = see_other(target)
    response.set_cookie(
        sessions.COOKIE,
        secret,
        max_age=int(sessions.LIFETIME.total_seconds()),
        path="/portal",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    # The form's cookie has done its work; the next sign-in gets a new one.
    response.delete_cookie(
        sessions.LOGIN_COOKIE, path=LOGIN_PATH, httponly=True, samesite="strict", secure=secure
    )
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, settings: SettingsDep, form: FormDep) -> Response:
    check_same_site(request)
    secret = request.cookies.get(sessions.COOKIE)
    if secret:
        sessions.check_csrf(secret, field(form, "csrf"))
        try:
            principal, row = sessions.resolve(
                session, secret, utcnow(), settings.token_touch_interval_s, origin_of(request)
            )
        except Unauthenticated:
            pass  # already over: just forget the cookie
        else:
            sessions.sign_out(session, principal, row, utcnow())
    response = see_other("/portal/login")
    response.delete_cookie(sessions.COOKIE, path="/portal")
    return response


# -- jobs ------------------------------------------------------------------------------------


# The jobs list, its live fragment, bulk cancel and Clone: ``controlplane.portal.jobs_list``.


@router.get("/jobs/new")
def submit_form(
    request: Request, session: SessionDep, visit: VisitDep, form: str | None = None
) -> Response:
    """The form's page lives at ``?form=<nonce>``: going back to it (after submitting) finds
    the same nonce, hence the same idempotency key, so sending it again is the same job."""
    if not visit.submits:
        return _submit_page(request, session, visit, views.SubmitForm(), None, 200)
    if not notices.valid_nonce(form):
        return see_other(f"/portal/jobs/new?form={notices.new_nonce()}")
    return _submit_page(request, session, visit, views.SubmitForm(), None, 200, form)


@router.post("/jobs/new")
def submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    visit: VisitDep,
    form: FormDep,
) -> Response:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = views.SubmitForm.parse(form)
    # The form's own key: a double click, a resent form or the same form again after going
    # back gives the same job, not two. Keyed with the session's secret: a link that chose
    # the form's nonce cannot make it another user's key.
    nonce = field(form, "idempotency_key") or None
    key = notices.submit_key(visit.secret, nonce[:200]) if nonce else None
    try:
        body = schemas.JobCreate.model_validate(typed.to_request())
        job, created = jobs.submit(
            session,
            visit.principal,
            body,
            key,
            utcnow(),
            settings.default_job_retries,
            settings.synthetic_allowed,
            tracing.submission_traceparent(request.headers.get("traceparent")),
        )
    except IdempotencyConflict as exc:
        # This form was sent before with other values (changed after going back): say so,
        # and give the form a new key, so that sending it now is a deliberate second job.
        session.rollback()
        problems = [
            f"This form was already sent, as job {exc.details.get('job_id')}, with other "
            "values. Nothing new was submitted; send this form again to submit another job."
        ]
        return _submit_page(request, session, visit, typed, problems, exc.status_code)
    except (ValidationError, NuriError) as exc:
        session.rollback()
        problems, status = views.problems_of(exc), views.status_of(exc)
        refused = views.refusal_of(exc)
        return _submit_page(request, session, visit, typed, problems, status, nonce, refused)
    wake = getattr(request.app.state, "scheduler_wake", None)
    if created and wake is not None:
        wake()
    return done(f"/portal/jobs/{job.id}", visit, "job_submitted" if created else "job_resent")


def _submit_page(
    request: Request,
    session: Session,
    visit: Visit,
    form: views.SubmitForm,
    errors: list[str] | None,
    status: int,
    nonce: str | None = None,
    refused: list[views.PoolVerdict] | None = None,
    **extra: Any,
) -> HTMLResponse:
    member_datasets: Sequence[Any] = []
    if visit.principal.member_id:
        member_datasets, _ = datasets.list_datasets(session, visit.principal, 200, None, None)
    return page(
        request,
        "submit.html",
        status,
        visit=visit,
        form=form,
        errors=errors,
        refused=refused,
        kinds=views.job_kinds(),
        pools=session.exec(select(Pool).order_by(col(Pool.name))).all(),
        classes=session.exec(select(PriorityClass).order_by(col(PriorityClass.value))).all(),
        datasets=member_datasets,
        idempotency_key=nonce or notices.new_nonce(),
        **extra,
    )


# A job's page, its live fragments and its log download: ``controlplane.portal.live``.


CURVE_POINTS = 2000


def curve_samples(session: Session, job_id: str) -> list[tuple[int, Any]]:
    """At most ``CURVE_POINTS`` of the job's metric samples, evenly spread over the whole run
    (every k-th in step order, the last one always): a long run keeps its beginning and end."""
    total = session.exec(select(func.count()).where(JobMetric.job_id == job_id)).one()
    stride = max(1, -(-total // CURVE_POINTS))
    numbered = (
        select(
            col(JobMetric.step).label("step"),
            col(JobMetric.values).label("values"),
            func.row_number().over(order_by=(col(JobMetric.step), col(JobMetric.id))).label("n"),
        )
        .where(JobMetric.job_id == job_id)
        .subquery()
    )
    n = numbered.c.n
    rows = session.exec(
        select(numbered.c.step, numbered.c["values"])
        .where(((n - 1) % stride == 0) | (n == total))
        .order_by(n)
    ).all()
    return [(int(step), values) for step, values in rows]


@router.post("/jobs/{job_id}/cancel")
def cancel(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep, job_id: str
) -> Response:
    """Asks first (a confirmation page, nothing changes), then cancels as the API does."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    reason = (field(form, "reason") or "").strip()[:500]
    here = f"/portal/jobs/{quote(job_id)}"
    if not notices.confirmed(visit.secret, "cancel", job_id, field(form, "confirm")):
        job = jobs.get_job(session, visit.principal, job_id)  # another member's: a 404
        if views.terminal(job.status):  # nothing to ask: the service's 409 says why
            jobs.cancel(session, visit.principal, job_id, reason, utcnow())
        said = i18n.catalog_for(request).gettext
        return confirmation(
            request,
            visit,
            "cancel",
            job_id,
            question=said("Cancel job %(id)s (%(name)s)?") % {"id": job.id, "name": job.name},
            consequence=said("It will checkpoint and stop. A cancelled job cannot be resumed."),
            button=said("Yes, cancel the job"),
            back=here,
            carry={"reason": reason},
        )
    jobs.cancel(session, visit.principal, job_id, reason or "cancelled in the portal", utcnow())
    return done(here, visit, "job_cancelled")


# -- usage, data, audit ----------------------------------------------------------------------


@router.get("/usage")
def usage(
    request: Request, session: SessionDep, visit: VisitDep, window: WindowName = "day"
) -> HTMLResponse:
    caller = visit.principal
    budgets, _ = inventory.list_budgets(session, caller, 1000, None, None)
    rows = usage_page.quota_lines(session, caller)
    member_ids = {q.member_id for q in rows} | {b.member_id for b in budgets}
    left = usage_page.left_this_period(session, caller, {b.member_id for b in budgets}, utcnow())
    period = usage_periods.period_of(utcnow())
    # Tokens the member's endpoints served this period, beside the GPU-hours.
    tokens = reports.usage_report(session, caller, period, utcnow()).token_lines
    member_ids |= {t.member for t in tokens}
    return page(
        request,
        "usage.html",
        visit=visit,
        period=period,
        tokens=tokens,
        members=member_names(session, member_ids),
        quotas=rows,
        left=left,
        budgets=[
            inventory.budget_public(session, b)
            for b in sorted(budgets, key=lambda b: (b.member_id, b.period))
        ],
        **timeseries.usage_charts(
            session, caller, window, budgets, utcnow(), i18n.catalog_for(request).gettext
        ),
    )


@router.get("/usage.csv")
def usage_csv(session: SessionDep, visit: VisitDep, period: str) -> Response:
    """The usage report as the REST API's ``format=csv`` gives it, for spreadsheets."""
    return csv_download(reports.usage_report(session, visit.principal, period, utcnow()))


@router.get("/datasets")
def dataset_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    rows, _ = datasets.list_datasets(session, visit.principal, 500, None, None)
    return page(
        request,
        "datasets.html",
        visit=visit,
        datasets=rows,
        members=member_names(session, {r.member_id for r in rows}),
    )


@router.get("/artifacts")
def artifact_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    rows, _ = artifacts.list_artifacts(session, visit.principal, 500, None)
    return page(
        request,
        "artifacts.html",
        visit=visit,
        artifacts=rows,
        members=member_names(session, {r.member_id for r in rows}),
        fetched=None,
    )


@router.post("/artifacts/{art_id}/download")
def artifact_download(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep, art_id: str
) -> HTMLResponse:
    """A link to the artifact's content: the access policy decides and the read is audited,
    exactly as ``GET /v1/artifacts/{id}/download`` (a POST here: it writes an audit event)."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    key = artifact_content.ref_key(request.app.state.audit_key)
    fetched = artifact_content.download(session, visit.principal, art_id, utcnow(), key)
    art = artifacts.visible(session, visit.principal, art_id)
    return page(
        request, "artifacts.html", visit=visit, artifacts=[art], members={}, fetched=fetched
    )


@router.get("/audit")
def audit(
    request: Request,
    session: SessionDep,
    visit: VisitDep,
    after: Annotated[int, Query(ge=0, le=schemas.DB_INT_MAX)] = 0,
) -> HTMLResponse:
    events, nxt = auditing.list_events(session, visit.principal, None, after, 100, utcnow())
    names = audit_names.names_for(session, visit.principal, events)
    return page(
        request, "audit.html", visit=visit, events=events, next_after=nxt, report=None, names=names
    )


@router.post("/audit/verify")
def audit_verify(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep
) -> HTMLResponse:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    key = request.app.state.audit_key
    report = auditing.verify(session, visit.principal, key, None, utcnow())
    return page(
        request, "audit.html", visit=visit, events=[], next_after=None, report=report, names={}
    )


def member_names(session: Session, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    rows = session.exec(select(Member.id, Member.name).where(col(Member.id).in_(ids))).all()
    return dict(rows)


def visit_of(request: Request) -> Visit | None:
    """The signed-in visit of a request whose page never ran (an unmatched ``/portal/...``
    route), from its cookie; None without a live session. It never raises: it only decides
    whether an error page shows the navigation."""
    if not request.cookies.get(sessions.COOKIE):
        return None
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        try:
            return get_visit(request, session, request.app.state.settings)
        except (NuriError, SQLAlchemyError):
            return None


def error_page(
    request: Request, status: int, code: str, message: str, details: dict[str, Any]
) -> Response:
    """An error as a page (the API's JSON body, for people); without a session, sign in."""
    if status == 401 and request.url.path != LOGIN_PATH:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.headers.get("hx-request"):
            # A live fragment's poll: the whole page goes to sign in (and comes back to
            # itself), not the sign-in form into the fragment's place.
            here = request.headers.get("hx-current-url") or ""
            here = "/" + here.split("/", 3)[3] if here.count("/") >= 3 else "/portal/jobs"
            target = f"/portal/login?next={quote(local_next(here), safe='')}"
            return Response(status_code=401, headers={"HX-Redirect": target})
        return see_other(f"/portal/login?next={quote(local_next(here), safe='')}")
    facts = views.error_facts(code, message, details)
    visit = getattr(request.state, "portal_visit", None)
    if visit is None and status == 404:
        visit = visit_of(request)  # an unmatched route: no page dependency read the cookie
    return page(
        request,
        "error.html",
        status,
        visit=visit if isinstance(visit, Visit) else None,
        code=code,
        message=facts.message,
        lines=facts.lines,
        refused=facts.refused,
    )
