"""Members, users and API tokens."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controlplane import tokens
from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.audit.chain import PLATFORM_STREAM as PLATFORM
from controlplane.auth import Principal, allowed_scopes, default_scopes
from controlplane.db.models import ApiToken, Member, Role, User
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, Forbidden, InvalidRequest, NotFound, NuriError
from controlplane.services import lookup, paging

# --- members -------------------------------------------------------------------------------


def create_member(session: Session, caller: Principal, body: schemas.MemberCreate) -> Member:
    caller.require_platform_admin()
    if session.exec(select(Member).where(Member.name == body.name)).first():
        raise Conflict(
            f"member {body.name!r} already exists",
            code="already_exists",
            details={"name": body.name},
        )
    row = Member(**body.model_dump())
    session.add(row)
    audit_log.record(
        session,
        caller,
        "member.create",
        "member",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json"),
    )
    session.commit()
    return row


def list_members(
    session: Session, caller: Principal, limit: int, cursor: str | None
) -> tuple[Sequence[Member], str | None]:
    stmt = select(Member)
    if not caller.reads_all_members:
        stmt = stmt.where(Member.id == (caller.member_id or ""))
    return paging.page(session, stmt, Member.id, limit, cursor)


def get_member(session: Session, caller: Principal, ref: str) -> Member:
    return lookup.member(session, ref, caller)


def update_member(
    session: Session, caller: Principal, ref: str, body: schemas.MemberUpdate
) -> Member:
    row = lookup.member(session, ref, caller)
    caller.require_platform_admin()
    for key, value in body.model_dump(exclude_unset=True).items():
        if value is None:
            raise InvalidRequest(f"{key} cannot be null", details={"field": key})
        setattr(row, key, value)
    session.add(row)
    audit_log.record(
        session,
        caller,
        "member.update",
        "member",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json", exclude_unset=True),
    )
    session.commit()
    return row


# --- users ---------------------------------------------------------------------------------


def _sees_user(caller: Principal, row: User) -> bool:
    """Whether ``caller`` may see the user ``row``: platform admins and auditors see every
    user, member admins their member's users, everyone else only themselves."""
    if caller.reads_all_members or row.id == caller.user_id:
        return True
    return (
        caller.role is Role.MEMBER_ADMIN
        and row.member_id is not None
        and row.member_id == caller.member_id
    )


def _visible_user(session: Session, caller: Principal, user_id: str) -> User:
    """A user by id. One the caller may not see is exactly as absent as a missing one: the
    same 404, naming only the reference the caller gave."""
    row = session.get(User, user_id)
    if row is None or not _sees_user(caller, row):
        raise NotFound("user", user_id)
    return row


def _user_by_ref(session: Session, caller: Principal, ref: str) -> User:
    """A user by id or e-mail (case-insensitive), as :func:`_visible_user`: whatever the
    reference resolves to, a user the caller may not see is the 404 of a missing one, and
    the answer repeats ``ref`` as given, never the id an e-mail resolved to."""
    if "@" in ref:
        row = session.exec(select(User).where(User.email == ref.lower())).first()
    else:
        row = session.get(User, ref)
    if row is None or not _sees_user(caller, row):
        raise NotFound("user", ref)
    return row


def _email_taken(session: Session, caller: Principal, given: str) -> NuriError | None:
    """Why the e-mail ``given`` cannot be used for a new user, or None when it can.

    E-mails are unique across the whole platform (tokens are issued for a user by e-mail),
    so an address held by anyone cannot be reused. A holder the caller may see is named as
    an ``already_exists`` conflict; any other holder (another member's user, a platform
    admin or an auditor) gets one answer, ``email_unavailable``, which repeats only the
    address given: not whose it is, which member, role or id.
    """
    row = session.exec(select(User).where(User.email == given.lower())).first()
    if row is None:
        return None
    if _sees_user(caller, row):
        return Conflict(
            f"a user with email {given!r} already exists",
            code="already_exists",
            details={"email": given},
        )
    return _email_unavailable(given)


def create_user(session: Session, caller: Principal, body: schemas.UserCreate) -> User:
    caller.require_write()
    if caller.is_platform_admin:
        caller.require_platform_admin()
        member_id = lookup.member(session, body.member, caller).id if body.member else None
    elif caller.role is Role.MEMBER_ADMIN:
        member_id = caller.require_member()
        if body.member and lookup.member(session, body.member, caller).id != member_id:
            raise NotFound("member", body.member)
        if body.role in (Role.PLATFORM_ADMIN, Role.AUDITOR):
            raise Forbidden(f"a member admin cannot create a {body.role.value}")
    else:
        raise Forbidden("creating users needs the member_admin or platform_admin role")
    member_roles = (Role.MEMBER_ADMIN, Role.MEMBER_USER)
    if body.role in member_roles and member_id is None:
        raise InvalidRequest(
            f"a {body.role.value} must belong to a member",
            code="member_required",
            details={"field": "member"},
        )
    if body.role not in member_roles and member_id is not None:
        raise InvalidRequest(
            f"a {body.role.value} is platform-wide and has no member", details={"field": "member"}
        )
    email = body.email.lower()
    taken = _email_taken(session, caller, body.email)
    if taken is not None:
        raise taken
    row = User(member_id=member_id, email=email, name=body.name, role=body.role.value)
    session.add(row)
    try:
        audit_log.record(
            session,
            caller,
            "user.create",
            "user",
            row.id,
            stream=audit_log.stream_for(member_id),
            now=utcnow(),
            details={"email": email, "role": body.role.value, "member_id": member_id},
        )
        session.commit()
    except IntegrityError:
        # Taken meanwhile by a concurrent creation: the same answer as when it was before.
        session.rollback()
        taken = _email_taken(session, caller, body.email)
        raise (taken or _email_unavailable(body.email)) from None
    return row


def _email_unavailable(given: str) -> NuriError:
    """The one answer for an address held by a user the caller may not see."""
    return InvalidRequest(
        f"the email {given!r} cannot be used for a new user; choose another address",
        code="email_unavailable",
        details={"field": "email", "email": given},
    )


def list_users(
    session: Session, caller: Principal, limit: int, cursor: str | None, member: str | None
) -> tuple[Sequence[User], str | None]:
    stmt = select(User)
    if member:
        stmt = stmt.where(User.member_id == lookup.member(session, member, caller).id)
    if caller.reads_all_members:
        pass
    elif caller.role is Role.MEMBER_ADMIN:
        stmt = stmt.where(User.member_id == caller.member_id)
    else:
        stmt = stmt.where(User.id == caller.user_id)
    return paging.page(session, stmt, User.id, limit, cursor)


def get_user(session: Session, caller: Principal, user_id: str) -> User:
    return _visible_user(session, caller, user_id)


def update_user(
    session: Session, caller: Principal, user_id: str, body: schemas.UserUpdate
) -> User:
    """Change a user; disabling one suspends their API tokens (they work again when the user
    is enabled) and ends their portal sessions for good (enabling revives none)."""
    row = _visible_user(session, caller, user_id)
    was_disabled = row.disabled
    caller.require_write()
    changes = body.model_dump(exclude_unset=True)
    if not caller.is_platform_admin:
        if caller.role is not Role.MEMBER_ADMIN:
            raise Forbidden("changing users needs the member_admin role")
        if changes.get("role") in (Role.PLATFORM_ADMIN, Role.AUDITOR):
            raise Forbidden("a member admin cannot grant platform roles")
    if row.id == caller.user_id and (changes.get("disabled") or "role" in changes):
        raise InvalidRequest(
            "you cannot disable yourself or change your own role", code="self_change"
        )
    for key, value in changes.items():
        if value is None:
            raise InvalidRequest(f"{key} cannot be null", details={"field": key})
        setattr(row, key, value.value if isinstance(value, Role) else value)
    session.add(row)
    now = utcnow()
    details = body.model_dump(mode="json", exclude_unset=True)
    if "disabled" in changes and (row.disabled or was_disabled):
        # Sessions are bearer cookies in browsers (shared or lost machines included), which
        # no admin sees or revokes: a disable ends them, so an enable cannot bring them back.
        # Enabling ends any still open too (opened before this rule, or racing the disable).
        from sqlmodel import col

        from controlplane.db.models import PortalSession

        session.flush()  # the user's row first: a concurrent sign-in waits on its lock
        still_open = session.exec(
            select(PortalSession).where(
                PortalSession.user_id == row.id, col(PortalSession.ended_at).is_(None)
            )
        ).all()
        for open_session in still_open:
            open_session.ended_at = now
            session.add(open_session)
        details["portal_sessions_ended"] = len(still_open)
    audit_log.record(
        session,
        caller,
        "user.update",
        "user",
        row.id,
        stream=audit_log.stream_for(row.member_id),
        now=now,
        details=details,
    )
    session.commit()
    return row


# --- tokens --------------------------------------------------------------------------------


def issue_token(
    session: Session,
    user: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    secret: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret (never stored)."""
    secret = secret or tokens.generate()
    row = ApiToken(
        user_id=user.id,
        member_id=user.member_id,
        name=name,
        token_hash=tokens.digest(secret),
        display_prefix=tokens.display_prefix(secret),
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    return row, secret


def create_token(
    session: Session, caller: Principal, body: schemas.TokenCreate, now: datetime
) -> tuple[ApiToken, str]:
    caller.require_write()
    target = _user_by_ref(session, caller, body.user_id or caller.user_id)
    if target.id != caller.user_id and not (
        caller.is_platform_admin or caller.role is Role.MEMBER_ADMIN
    ):
        raise Forbidden("only admins issue tokens for other users")
    if target.disabled:
        raise InvalidRequest("the user is disabled", code="user_disabled")
    allowed = allowed_scopes(Role(target.role))
    scopes = body.scopes if body.scopes is not None else default_scopes(Role(target.role))
    extra = sorted(set(scopes) - set(allowed))
    if extra or not scopes:
        raise InvalidRequest(
            "scopes must be a non-empty subset of what the user's role allows",
            code="invalid_scopes",
            details={"requested": scopes, "allowed": allowed},
        )
    expires = now + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row, secret = issue_token(session, target, body.name, sorted(set(scopes)), expires)
    audit_log.record(
        session,
        caller,
        "token.create",
        "token",
        row.id,
        stream=audit_log.stream_for(target.member_id),
        now=now,
        details={
            "user_id": target.id,
            "name": body.name,
            "scopes": row.scopes,
            "expires_at": expires.isoformat() if expires else None,
        },
    )
    session.commit()
    return row, secret


def _visible_token(session: Session, caller: Principal, token_id: str) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound("token", token_id)
    if caller.reads_all_members or row.user_id == caller.user_id:
        return row
    if caller.role is Role.MEMBER_ADMIN and row.member_id == caller.member_id:
        return row
    raise NotFound("token", token_id)


def list_tokens(
    session: Session, caller: Principal, limit: int, cursor: str | None
) -> tuple[Sequence[ApiToken], str | None]:
    stmt = select(ApiToken)
    if caller.reads_all_members:
        pass
    elif caller.role is Role.MEMBER_ADMIN:
        stmt = stmt.where(ApiToken.member_id == caller.member_id)
    else:
        stmt = stmt.where(ApiToken.user_id == caller.user_id)
    return paging.page(session, stmt, ApiToken.id, limit, cursor)


def get_token(session: Session, caller: Principal, token_id: str) -> ApiToken:
    return _visible_token(session, caller, token_id)


def revoke_token(session: Session, caller: Principal, token_id: str, now: datetime) -> ApiToken:
    row = _visible_token(session, caller, token_id)
    caller.require_write()
    if row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        audit_log.record(
            session,
            caller,
            "token.revoke",
            "token",
            row.id,
            stream=audit_log.stream_for(row.member_id),
            now=now,
            details={"user_id": row.user_id},
        )
        session.commit()
    return row
