"""Who is calling: bearer-token authentication and the caller's tenant scope."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from controlplane import tokens
from controlplane.audit import log as audit_log
from controlplane.db.models import ApiToken, Role, User
from controlplane.errors import Forbidden, Unauthenticated

SCOPES = ("read", "write", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. ``member_id`` is None for platform admins and auditors."""

    user_id: str
    member_id: str | None
    role: Role
    token_id: str
    scopes: frozenset[str]
    # Where the call came from, recorded with every audit event it causes.
    source_ip: str | None = None
    request_id: str | None = None
    trace_id: str | None = None

    @property
    def is_platform_admin(self) -> bool:
        return self.role is Role.PLATFORM_ADMIN

    @property
    def reads_all_members(self) -> bool:
        return self.role in (Role.PLATFORM_ADMIN, Role.AUDITOR)

    def can_see_member(self, member_id: str | None) -> bool:
        return self.reads_all_members or (member_id is not None and member_id == self.member_id)

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(
                f"this token lacks the {scope!r} scope",
                code="insufficient_scope",
                details={"required": scope, "token_scopes": sorted(self.scopes)},
            )

    def require_write(self) -> None:
        if self.role is Role.AUDITOR:
            raise Forbidden("auditors have read-only access")
        self.require_scope("write")

    def require_platform_admin(self) -> None:
        if not self.is_platform_admin:
            raise Forbidden(
                "this action needs the platform_admin role", details={"role": self.role.value}
            )
        self.require_scope("admin")

    def require_member(self) -> str:
        """The caller's member; platform-level identities must act through a member user."""
        if self.member_id is None:
            raise Forbidden(
                "this action belongs to a member; use a member user's token",
                code="member_required",
            )
        return self.member_id


# Columns, not entities, built once with a bound parameter: this runs on every request, and
# ORM loading or building the statement anew each time would cost more than the query itself.
_TOKEN_COLUMNS = sa_select(
    col(ApiToken.id),
    col(ApiToken.scopes),
    col(ApiToken.expires_at),
    col(ApiToken.revoked_at),
    col(ApiToken.last_used_at),
    col(User.id),
    col(User.member_id),
    col(User.role),
    col(User.disabled),
).join(User, col(User.id) == col(ApiToken.user_id))
_TOKEN_LOOKUP = _TOKEN_COLUMNS.where(col(ApiToken.token_hash) == bindparam("token_hash"))
_TOKEN_BY_ID = _TOKEN_COLUMNS.where(col(ApiToken.id) == bindparam("token_id"))


def default_scopes(role: Role) -> list[str]:
    if role is Role.PLATFORM_ADMIN:
        return ["read", "write", "admin"]
    if role is Role.AUDITOR:
        return ["read"]
    return ["read", "write"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Request metadata that travels with the caller into the audit log."""

    source_ip: str | None = None
    request_id: str | None = None
    trace_id: str | None = None


def trace_id_from(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and all(c in "0123456789abcdef" for c in parts[1]):
        return parts[1]
    return None


def authenticate(
    session: Session,
    authorization: str | None,
    now: datetime,
    touch_interval_s: float,
    origin: Origin | None = None,
) -> Principal:
    """Resolve an ``Authorization: Bearer nuri_...`` header to a Principal.

    Every failure is the same 401 so a caller learns nothing about which tokens exist.
    """
    if not authorization:
        raise Unauthenticated(
            "missing bearer token", details={"hint": "send Authorization: Bearer nuri_..."}
        )
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    if secret.startswith(tokens.PREFIX) and not tokens.well_formed(secret):
        raise Unauthenticated("invalid or expired token")
    row = session.connection().execute(_TOKEN_LOOKUP, {"token_hash": tokens.digest(secret)}).first()
    return _principal(session, row, now, touch_interval_s, origin)


def authenticate_token_id(
    session: Session,
    token_id: str,
    now: datetime,
    touch_interval_s: float,
    origin: Origin | None = None,
) -> Principal:
    """The caller acting with the token ``token_id`` (a portal session's token), checked
    exactly as a bearer token is: revoked, expired or of a disabled user is a 401."""
    row = session.connection().execute(_TOKEN_BY_ID, {"token_id": token_id}).first()
    return _principal(session, row, now, touch_interval_s, origin)


def _principal(
    session: Session,
    row: Any,  # a row of _TOKEN_LOOKUP or _TOKEN_BY_ID, or None
    now: datetime,
    touch_interval_s: float,
    origin: Origin | None,
) -> Principal:
    if row is None:
        raise Unauthenticated("invalid or expired token")
    token_id, scopes, expires_at, revoked_at, last_used_at, user_id, member_id, role, disabled = row
    if revoked_at is not None or (expires_at is not None and expires_at <= now) or disabled:
        raise Unauthenticated("invalid or expired token")
    origin = origin or Origin()
    principal = Principal(
        user_id=user_id,
        member_id=member_id,
        role=Role(role),
        token_id=token_id,
        scopes=frozenset(scopes),
        source_ip=origin.source_ip,
        request_id=origin.request_id,
        trace_id=origin.trace_id,
    )
    if last_used_at is None or now - last_used_at >= timedelta(seconds=touch_interval_s):
        # Throttled: a write per request would double the cost of every call. The stamp and
        # a sign-in event for the audit log go together, at most once per interval.
        # In a transaction of its own when the session is bound to an engine: the caller's
        # session may read in autocommit mode (see the jobs router), and the stamp and its
        # event must commit together, under the audit stream's lock.
        bind = session.get_bind()
        own = Session(bind) if isinstance(bind, Engine) else None
        writer = own or session
        try:
            writer.execute(
                update(ApiToken).where(col(ApiToken.id) == token_id).values(last_used_at=now)
            )
            audit_log.record(
                writer,
                principal,
                "auth.token_use",
                "token",
                token_id,
                stream=audit_log.stream_for(member_id),
                now=now,
                details={"previous_use": last_used_at.isoformat() if last_used_at else None},
            )
            writer.commit()
        finally:
            if own is not None:
                own.close()
    return principal
