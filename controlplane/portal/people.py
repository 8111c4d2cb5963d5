"""Portal pages for people and their tokens: a user's own API tokens (a pipeline's token is
made here), and for member admins and platform admins the users they manage.

As everywhere in the portal, the services decide who may do what (a member admin sees and
manages only its member's users and tokens) and record it in the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session

from controlplane.api import schemas
from controlplane.api.deps import SessionDep
from controlplane.auth import default_scopes
from controlplane.db.models import ApiToken, Role, User
from controlplane.db.types import utcnow
from controlplane.errors import Forbidden, InvalidRequest, NuriError
from controlplane.portal import i18n, notices, sessions, views
from controlplane.portal.routes import (
    FormDep,
    Visit,
    VisitDep,
    confirmation,
    done,
    field,
    member_names,
    page,
)
from controlplane.services import tenancy

router = APIRouter(prefix="/portal", include_in_schema=False)


# -- tokens ----------------------------------------------------------------------------------


@router.get("/tokens")
def token_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    return _tokens_page(request, session, visit, None, 200)


@router.post("/tokens")
def token_create(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep
) -> HTMLResponse:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    days = field(form, "expires_in_days") or "90"
    body_in: dict[str, Any] = {
        "name": (field(form, "name") or "").strip(),
        "scopes": [v for k, v in form if k == "scopes"],
        "expires_in_days": views.number(days),
    }
    if field(form, "user_id"):
        body_in["user_id"] = field(form, "user_id")
    try:
        body = schemas.TokenCreate.model_validate(body_in)
        row, secret = tenancy.create_token(session, visit.principal, body, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _tokens_page(request, session, visit, views.problems_of(exc), views.status_of(exc))
    owner = session.get(User, row.user_id)
    return page(
        request,
        "token_created.html",
        visit=visit,
        token=schemas.TokenPublic.model_validate(row),
        secret=secret,
        owner=owner.email if owner else row.user_id,
    )


@router.post("/tokens/{token_id}/revoke")
def token_revoke(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep, token_id: str
) -> Response:
    """Asks first (a confirmation page, nothing changes), then revokes as the API does."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    if not notices.confirmed(visit.secret, "revoke", token_id, field(form, "confirm")):
        token = tenancy.get_token(session, visit.principal, token_id)  # out of reach: a 404
        owner = session.get(User, token.user_id)
        said = i18n.catalog_for(request).gettext
        return confirmation(
            request,
            visit,
            "revoke",
            token_id,
            question=said("Revoke token %(name)s (%(prefix)s…) of %(owner)s?")
            % {
                "name": token.name,
                "prefix": token.display_prefix,
                "owner": owner.email if owner else token.user_id,
            },
            consequence=said(
                "Every pipeline, CLI and portal session using it stops working at once. "
                "A revoked token cannot be restored; make a new one instead."
            ),
            button=said("Yes, revoke the token"),
            back="/portal/tokens",
        )
    tenancy.revoke_token(session, visit.principal, token_id, utcnow())
    return done("/portal/tokens", visit, "token_revoked")


def _tokens_page(
    request: Request, session: Session, visit: Visit, errors: list[str] | None, status: int
) -> HTMLResponse:
    caller = visit.principal
    rows, _ = tenancy.list_tokens(session, caller, 500, None)
    users, _ = tenancy.list_users(session, caller, 1000, None, None)
    emails = {u.id: u.email for u in users}
    now = utcnow()
    return page(
        request,
        "tokens.html",
        status,
        visit=visit,
        errors=errors,
        tokens=[(t, emails.get(t.user_id, t.user_id), _state(t, now)) for t in rows],
        # Admins issue tokens for the users they manage; everyone else for themselves.
        users=[u for u in users if not u.disabled] if visit.manages_users else [],
        scopes=default_scopes(caller.role),
    )


def _state(token: ApiToken, now: Any) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


# -- users -----------------------------------------------------------------------------------


@router.get("/users")
def user_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    return _users_page(request, session, visit, None, 200)


@router.post("/users")
def user_create(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    body_in: dict[str, Any] = {
        "email": (field(form, "email") or "").strip(),
        "name": (field(form, "name") or "").strip(),
        "role": field(form, "role") or Role.MEMBER_USER.value,
    }
    if field(form, "member"):
        body_in["member"] = field(form, "member")
    try:
        body = schemas.UserCreate.model_validate(body_in)
        tenancy.create_user(session, visit.principal, body)
    except (ValidationError, NuriError) as exc:
        session.rollback()
        return _users_page(
            request, session, visit, views.problems_of(exc), views.status_of(exc), body_in
        )
    return done("/portal/users", visit, "user_added")


@router.post("/users/{user_id}/{action}")
def user_enable(
    request: Request,
    session: SessionDep,
    visit: VisitDep,
    form: FormDep,
    user_id: str,
    action: str,
) -> Response:
    """Enable at once; disable only after its confirmation page."""
    sessions.check_csrf(visit.secret, field(form, "csrf"))
    if action not in ("disable", "enable"):
        raise InvalidRequest(f"unknown action {action!r}", code="unknown_action")
    disable = action == "disable"
    if disable and not notices.confirmed(visit.secret, "disable", user_id, field(form, "confirm")):
        user = tenancy.get_user(session, visit.principal, user_id)  # out of reach: a 404
        said = i18n.catalog_for(request).gettext
        return confirmation(
            request,
            visit,
            "disable",
            user_id,
            question=said("Disable user %(email)s (%(name)s)?")
            % {"email": user.email, "name": user.name},
            consequence=said(
                "Their portal sessions end for good and their API tokens stop working "
                "until they are enabled again."
            ),
            button=said("Yes, disable the user"),
            back="/portal/users",
        )
    tenancy.update_user(session, visit.principal, user_id, schemas.UserUpdate(disabled=disable))
    return done("/portal/users", visit, "user_disabled" if disable else "user_enabled")


def _users_page(
    request: Request,
    session: Session,
    visit: Visit,
    errors: list[str] | None,
    status: int,
    typed: dict[str, Any] | None = None,
) -> HTMLResponse:
    caller = visit.principal
    if not visit.manages_users:
        raise Forbidden("managing users needs the member_admin or platform_admin role")
    users, _ = tenancy.list_users(session, caller, 1000, None, None)
    roles = [Role.MEMBER_USER, Role.MEMBER_ADMIN]
    if caller.is_platform_admin:
        roles += [Role.AUDITOR, Role.PLATFORM_ADMIN]
    members = member_names(session, {u.member_id for u in users if u.member_id})
    all_members: list[Any] = []
    if caller.is_platform_admin:
        all_members = list(tenancy.list_members(session, caller, 1000, None)[0])
    return page(
        request,
        "users.html",
        status,
        visit=visit,
        errors=errors,
        users=sorted(users, key=lambda u: (u.member_id or "", u.email)),
        members=members,
        roles=[r.value for r in roles],
        all_members=all_members,
        typed=typed or {},
    )
