"""The platform admin's portal page (``/portal/admin``): the consortium's members, pools,
quotas and budgets, and the forms that add a member and set a member's quota in a pool or
budget for a period. The inventory and tenancy services check the role and record every
change in the audit log, as they do for the REST API; auditors read the page without forms.

The quota and budget forms never guess: ``?member=&pool=`` (``&period=`` for a budget) opens
the form for that member, prefilled with its current values, and a blank limit is an error
next to its field, never "unlimited". No limit (or no token cap) is a box ticked on purpose.
So is what members without a quota row may do in a pool (``?defaults=POOL``): nothing, up to
N GPUs, or unlimited, one of them chosen, the current one preselected.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from controlplane import usage as usage_periods
from controlplane.api import schemas
from controlplane.api.deps import SessionDep
from controlplane.db.models import Budget, Member, Pool, Quota, Role
from controlplane.db.types import utcnow
from controlplane.errors import Forbidden, NuriError
from controlplane.portal import i18n, sessions, views
from controlplane.portal.routes import FormDep, Visit, VisitDep, done, field, page
from controlplane.services import inventory, tenancy

router = APIRouter(prefix="/portal/admin", include_in_schema=False)

# A limit the form may leave open: (field, its "no limit" box, its label).
_QUOTA_LIMITS = (
    ("borrowing_limit", "borrowing_unlimited", "Borrowing limit"),
    ("lending_limit", "lending_unlimited", "Lending limit"),
)
_TICKED = ("on", "true", "1", "yes")


@router.get("")
def admin_page(
    request: Request,
    session: SessionDep,
    visit: VisitDep,
    member: str | None = None,
    pool: str | None = None,
    period: str | None = None,
    defaults: str | None = None,
) -> HTMLResponse:
    quota = _current_quota(session, member, pool)
    budget = _current_budget(session, member, period)
    default = _current_default(session, defaults)
    return _page(
        request, session, visit, None, 200, None, quota=quota, budget=budget, default=default
    )


# The choices of the "members without a quota" form: (value, label).
DEFAULT_CHOICES = (
    ("none", "Nothing: they cannot run jobs in this pool"),
    ("limited", "Borrow up to this many idle GPUs"),
    ("unlimited", "Borrow idle GPUs without a limit"),
)


@router.post("/pools")
def set_pool_default(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep
) -> Response:
    """Set what members without a quota row may do in a pool: one choice, never a blank."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = _typed(form, ("pool", "choice", "gpus"))
    inline: dict[str, str] = {}
    value: int | str = ""
    if typed["choice"] == "none":
        value = 0
    elif typed["choice"] == "unlimited":
        value = schemas.UNLIMITED
    elif typed["choice"] == "limited":
        if not typed["gpus"]:
            inline["gpus"] = "Enter the number of GPUs they may borrow (1 or more)."
        value = views.number(typed["gpus"])
    else:
        inline["choice"] = "Choose what members without a quota may do here."
    if inline:
        visit.principal.require_platform_admin()
        labels = {"gpus": "GPUs", "choice": "Members without a quota"}
        problems = [f"{labels[name]}: {message}" for name, message in inline.items()]
        return _page(
            request, session, visit, problems, 422, "default", default=typed, inline=inline
        )
    try:
        update = schemas.PoolUpdate.model_validate({"default_borrowing_limit": value})
        inventory.update_pool(session, visit.principal, typed["pool"], update)
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request,
            session,
            visit,
            views.problems_of(exc),
            views.status_of(exc),
            "default",
            default=typed,
        )
    chosen = urlencode({"defaults": typed["pool"]})
    return done(f"/portal/admin?{chosen}#defaults", visit, "pool_saved")


def _current_default(session: Session, pool: str | None) -> dict[str, Any]:
    """The "members without a quota" form's values for a chosen pool: its current choice."""
    if not pool:
        return {}
    row = session.exec(select(Pool).where(Pool.name == pool)).first()
    if row is None:
        return {}
    limit = row.default_borrowing_limit
    if limit is None:
        return {"pool": pool, "choice": "unlimited", "gpus": ""}
    if limit == 0:
        return {"pool": pool, "choice": "none", "gpus": ""}
    return {"pool": pool, "choice": "limited", "gpus": str(limit)}


def default_words(limit: int | None, catalog: i18n.Catalog = i18n.CATALOGS["en"]) -> str:
    """What members without a quota row may do in a pool, in a few words (in ``catalog``'s
    language)."""
    if limit is None:
        return catalog.gettext("borrow without a limit")
    if limit == 0:
        return catalog.gettext("nothing")
    return catalog.gettext("borrow up to %(n)s GPUs") % {"n": limit}


@router.post("/members")
def add_member(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = {k: v.strip() for k, v in form if k in ("name", "display_name", "kind", "country")}
    try:
        tenancy.create_member(session, visit.principal, schemas.MemberCreate.model_validate(typed))
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request,
            session,
            visit,
            views.problems_of(exc),
            views.status_of(exc),
            "member",
            typed=typed,
        )
    return done("/portal/admin", visit, "member_added")


@router.post("/quotas")
def set_quota(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    """Create the member's quota in the pool, or change it when there is one."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = _typed(form, ("member", "pool", "nominal_gpus", *(f for f, _, _ in _QUOTA_LIMITS)))
    for _name, box, _ in _QUOTA_LIMITS:
        typed[box] = _ticked(form, box)
    chosen = {"member": typed["member"], "pool": typed["pool"]}
    inline: dict[str, str] = {}
    if not typed["nominal_gpus"]:
        inline["nominal_gpus"] = "Enter the nominal GPUs (0 or more)."
    limits: dict[str, Any] = {}
    for name, box, _ in _QUOTA_LIMITS:
        limits[name] = _limit(typed[name], typed[box], inline, name, "no limit")
    if inline:
        return _refused(request, session, visit, "quota", typed, inline)
    try:
        caller = visit.principal
        caller.require_platform_admin()
        existing = _quota_row(session, typed["member"], typed["pool"])
        nominal = views.number(typed["nominal_gpus"])
        if existing is None:
            body = schemas.QuotaCreate.model_validate({**chosen, "nominal_gpus": nominal, **limits})
            inventory.create_quota(session, caller, body)
        else:
            update = schemas.QuotaUpdate.model_validate({"nominal_gpus": nominal, **limits})
            inventory.update_quota(session, caller, existing.id, update, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request,
            session,
            visit,
            views.problems_of(exc),
            views.status_of(exc),
            "quota",
            quota=typed,
        )
    return done(f"/portal/admin?{urlencode(chosen)}#quota", visit, "quota_saved")


@router.post("/budgets")
def set_budget(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    """Create the member's budget for the period, or change its GPU-hours and token cap."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = _typed(form, ("member", "period", "gpu_hours", "tokens"))
    typed["tokens_unlimited"] = _ticked(form, "tokens_unlimited")
    chosen = {"member": typed["member"], "period": typed["period"]}
    inline: dict[str, str] = {}
    if not typed["gpu_hours"]:
        inline["gpu_hours"] = "Enter the GPU-hours for the period (0 or more)."
    tokens = _limit(typed["tokens"], typed["tokens_unlimited"], inline, "tokens", "no token cap")
    if inline:
        return _refused(request, session, visit, "budget", typed, inline)
    values = {"gpu_hours": typed["gpu_hours"], "tokens": tokens}
    try:
        caller = visit.principal
        caller.require_platform_admin()
        existing = _budget_row(session, typed["member"], typed["period"])
        if existing is None:
            inventory.create_budget(
                session, caller, schemas.BudgetCreate.model_validate({**chosen, **values})
            )
        else:
            # Both fields given: ``tokens: None`` removes the cap, as on the API.
            update = schemas.BudgetUpdate.model_validate(values)
            inventory.update_budget(session, caller, existing.id, update, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request,
            session,
            visit,
            views.problems_of(exc),
            views.status_of(exc),
            "budget",
            budget=typed,
        )
    return done(f"/portal/admin?{urlencode(chosen)}#budget", visit, "budget_saved")


def _typed(form: list[tuple[str, str]], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: (field(form, name) or "").strip() for name in names}


def _ticked(form: list[tuple[str, str]], name: str) -> bool:
    return (field(form, name) or "").strip().lower() in _TICKED


def _limit(
    text: str, unlimited: bool, inline: dict[str, str], name: str, box: str
) -> int | str | None:
    """A limit as the form gave it: None only when its box is ticked; blank is an error."""
    if unlimited and text:
        inline[name] = f"Give a number or tick “{box}”, not both."
    elif not unlimited and not text:
        inline[name] = f"Enter a number, or tick “{box}”."
    return None if unlimited else views.number(text)


def _refused(
    request: Request,
    session: Session,
    visit: Visit,
    form: str,
    typed: dict[str, Any],
    inline: dict[str, str],
) -> HTMLResponse:
    """A form with blank or contradictory fields: shown again with the reasons beside them."""
    visit.principal.require_platform_admin()
    labels = {
        "nominal_gpus": "Nominal GPUs",
        "gpu_hours": "GPU-hours",
        "tokens": "Token cap",
        **{name: label for name, _, label in _QUOTA_LIMITS},
    }
    problems = [f"{labels[name]}: {message}" for name, message in inline.items()]
    state: dict[str, Any] = {form: typed}
    return _page(request, session, visit, problems, 422, form, inline=inline, **state)


def _quota_row(session: Session, member: str, pool: str) -> Quota | None:
    m = session.exec(select(Member).where(Member.name == member)).first()
    p = session.exec(select(Pool).where(Pool.name == pool)).first()
    if m is None or p is None:
        return None
    return session.exec(select(Quota).where(Quota.member_id == m.id, Quota.pool_id == p.id)).first()


def _budget_row(session: Session, member: str, period: str) -> Budget | None:
    m = session.exec(select(Member).where(Member.name == member)).first()
    if m is None:
        return None
    return session.exec(
        select(Budget).where(Budget.member_id == m.id, Budget.period == period)
    ).first()


def _current_quota(session: Session, member: str | None, pool: str | None) -> dict[str, Any]:
    """The quota form's values for a chosen member and pool: what is set now (blank for a
    new quota, whose limits the admin must then give or tick)."""
    if not member or not pool:
        return {}
    known = session.exec(select(Member.id).where(Member.name == member)).first()
    if known is None or session.exec(select(Pool.id).where(Pool.name == pool)).first() is None:
        return {}  # the chooser again: no form for a member or pool that is not there
    values: dict[str, Any] = {"member": member, "pool": pool}
    row = _quota_row(session, member, pool)
    if row is None:
        return {**values, "nominal_gpus": "", "exists": False}
    values.update(nominal_gpus=str(row.nominal_gpus), exists=True)
    for name, box, _ in _QUOTA_LIMITS:
        limit = getattr(row, name)
        values[name] = "" if limit is None else str(limit)
        values[box] = limit is None
    return values


def _current_budget(session: Session, member: str | None, period: str | None) -> dict[str, Any]:
    """The budget form's values for a chosen member and period (this month by default)."""
    if not member:
        return {}
    if session.exec(select(Member.id).where(Member.name == member)).first() is None:
        return {}
    period = period or usage_periods.period_of(utcnow())
    row = _budget_row(session, member, period)
    if row is None:
        return {"member": member, "period": period, "gpu_hours": "", "exists": False}
    return {
        "member": member,
        "period": period,
        "gpu_hours": f"{row.gpu_hours:g}",
        "tokens": "" if row.tokens is None else str(row.tokens),
        "tokens_unlimited": row.tokens is None,
        "exists": True,
    }


def _page(
    request: Request,
    session: Session,
    visit: Visit,
    errors: list[str] | None,
    status: int,
    form: str | None,
    *,
    typed: dict[str, Any] | None = None,
    quota: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
    default: dict[str, Any] | None = None,
    inline: dict[str, str] | None = None,
) -> HTMLResponse:
    caller = visit.principal
    if caller.role not in (Role.PLATFORM_ADMIN, Role.AUDITOR):
        raise Forbidden("the cluster page is for platform admins and auditors")
    members, _ = tenancy.list_members(session, caller, 1000, None)
    pool_rows = session.exec(select(Pool).order_by(col(Pool.name))).all()
    pools = [inventory.pool_public(session, p) for p in pool_rows]
    quotas, _ = inventory.list_quotas(session, caller, 1000, None, None, None)
    names = {m.id: m.name for m in members}
    pool_names = {p.id: p.name for p in pool_rows}
    quota_rows = sorted(
        (
            (names.get(q.member_id, q.member_id), pool_names.get(q.pool_id, q.pool_id), q)
            for q in quotas
        ),
        key=lambda row: (row[0], row[1]),
    )
    return page(
        request,
        "admin.html",
        status,
        visit=visit,
        errors=errors,
        failed_form=form,
        typed=typed or {},
        quota=quota or {},
        budget=budget or {},
        default=default or {},
        default_choices=DEFAULT_CHOICES,
        default_words={
            p.name: default_words(p.default_borrowing_limit, i18n.catalog_for(request))
            for p in pool_rows
        },
        inline=inline or {},
        members=sorted(members, key=lambda m: m.name),
        pools=pools,
        quotas=quota_rows,
        period=usage_periods.period_of(utcnow()),
        writes=caller.is_platform_admin,
    )
