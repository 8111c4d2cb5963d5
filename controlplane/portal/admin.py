"""The platform admin's portal page (``/portal/admin``): the consortium's members and pools,
and the forms that add a member and set a member's quota in a pool or GPU-hour budget for a
period. The inventory and tenancy services check the role and record every change in the
audit log, as they do for the REST API; auditors read the page without its forms.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from controlplane.api import schemas
from controlplane.api.deps import SessionDep
from controlplane.db.models import Budget, Member, Pool, Quota, Role
from controlplane.db.types import utcnow
from controlplane.errors import Forbidden, NuriError
from controlplane.portal import sessions, views
from controlplane.portal.routes import FormDep, Visit, VisitDep, field, page, see_other
from controlplane.services import inventory, tenancy

router = APIRouter(prefix="/portal/admin", include_in_schema=False)


@router.get("")
def admin_page(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    return _page(request, session, visit, None, 200, None, {})


@router.post("/members")
def add_member(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = {k: v.strip() for k, v in form if k in ("name", "display_name", "kind", "country")}
    try:
        tenancy.create_member(session, visit.principal, schemas.MemberCreate.model_validate(typed))
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request, session, visit, views.problems_of(exc), views.status_of(exc), "member", typed
        )
    return see_other("/portal/admin")


@router.post("/quotas")
def set_quota(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    """Create the member's quota in the pool, or change it when there is one."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = {k: v.strip() for k, v in form if k in _QUOTA_FIELDS}
    limits: dict[str, Any] = {key: (typed.get(key) or None) for key in _QUOTA_FIELDS[2:]}
    try:
        caller = visit.principal
        caller.require_platform_admin()
        member = session.exec(select(Member).where(Member.name == typed.get("member", ""))).first()
        pool = session.exec(select(Pool).where(Pool.name == typed.get("pool", ""))).first()
        existing = None
        if member is not None and pool is not None:
            existing = session.exec(
                select(Quota).where(Quota.member_id == member.id, Quota.pool_id == pool.id)
            ).first()
        if existing is None:
            body = schemas.QuotaCreate.model_validate(
                {"member": typed.get("member", ""), "pool": typed.get("pool", ""), **limits}
            )
            inventory.create_quota(session, caller, body)
        else:
            update = schemas.QuotaUpdate.model_validate(limits)
            inventory.update_quota(session, caller, existing.id, update, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request, session, visit, views.problems_of(exc), views.status_of(exc), "quota", typed
        )
    return see_other("/portal/usage")


@router.post("/budgets")
def set_budget(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    """Create the member's budget for the period, or change its GPU-hours."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    typed = {k: v.strip() for k, v in form if k in ("member", "period", "gpu_hours")}
    try:
        caller = visit.principal
        caller.require_platform_admin()
        member = session.exec(select(Member).where(Member.name == typed.get("member", ""))).first()
        existing = None
        if member is not None:
            existing = session.exec(
                select(Budget).where(
                    Budget.member_id == member.id, Budget.period == typed.get("period", "")
                )
            ).first()
        if existing is None:
            inventory.create_budget(session, caller, schemas.BudgetCreate.model_validate(typed))
        else:
            update = schemas.BudgetUpdate.model_validate({"gpu_hours": typed.get("gpu_hours")})
            inventory.update_budget(session, caller, existing.id, update, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _page(
            request, session, visit, views.problems_of(exc), views.status_of(exc), "budget", typed
        )
    return see_other("/portal/usage")


_QUOTA_FIELDS = ("member", "pool", "nominal_gpus", "borrowing_limit", "lending_limit")


def _page(
    request: Request,
    session: Session,
    visit: Visit,
    errors: list[str] | None,
    status: int,
    form: str | None,
    typed: dict[str, Any],
) -> HTMLResponse:
    caller = visit.principal
    if caller.role not in (Role.PLATFORM_ADMIN, Role.AUDITOR):
        raise Forbidden("the cluster page is for platform admins and auditors")
    members, _ = tenancy.list_members(session, caller, 1000, None)
    pools = [
        inventory.pool_public(session, p)
        for p in session.exec(select(Pool).order_by(col(Pool.name))).all()
    ]
    return page(
        request,
        "admin.html",
        status,
        visit=visit,
        errors=errors,
        failed_form=form,
        typed=typed,
        members=sorted(members, key=lambda m: m.name),
        pools=pools,
        writes=caller.is_platform_admin,
    )
