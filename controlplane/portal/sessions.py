"""Portal sessions: a browser signed in with an API token.

The cookie carries a random secret (``nps_`` + 256 bits); the database keeps its SHA-256, as
for API tokens. A session acts as the token it was opened with and is re-checked on every
request exactly as a bearer token is (revoked, expired, disabled user: signed out). Forms
carry a CSRF token derived from the secret (HMAC), which a page of another site cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from controlplane import tokens
from controlplane.audit import log as audit_log
from controlplane.auth import Origin, Principal, authenticate, authenticate_token_id
from controlplane.db.models import ApiToken, PortalSession
from controlplane.errors import Forbidden, Unauthenticated

COOKIE = "nuri_portal"
SECRET_PREFIX = "nps_"
LIFETIME = timedelta(hours=12)
_CSRF_LABEL = b"nuri-portal-csrf"


def sign_in(
    session: Session, token: str, now: datetime, touch_interval_s: float, origin: Origin
) -> tuple[str, Principal]:
    """Open a session for a valid API token; returns (cookie secret, principal).

    The session ends after ``LIFETIME`` or when the token expires, whichever is first. A bad
    token is the same 401 as on the API.
    """
    principal = authenticate(session, f"Bearer {token.strip()}", now, touch_interval_s, origin)
    api_token = session.get(ApiToken, principal.token_id)
    if api_token is None:  # deleted between the two reads
        raise Unauthenticated("invalid or expired token")
    expires = now + LIFETIME
    if api_token.expires_at is not None and api_token.expires_at < expires:
        expires = api_token.expires_at
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = PortalSession(
        secret_hash=tokens.digest(secret),
        token_id=principal.token_id,
        user_id=principal.user_id,
        created_at=now,
        expires_at=expires,
    )
    session.add(row)
    session.flush()
    audit_log.record(
        session,
        principal,
        "portal.sign_in",
        "portal_session",
        row.id,
        stream=audit_log.stream_for(principal.member_id),
        now=now,
        details={"token_id": principal.token_id, "expires_at": expires.isoformat()},
    )
    session.commit()
    return secret, principal


def resolve(
    session: Session, secret: str, now: datetime, touch_interval_s: float, origin: Origin
) -> tuple[Principal, PortalSession]:
    """The principal of a live session; 401 when it ended, expired or its token is no good."""
    row = None
    if secret.startswith(SECRET_PREFIX) and len(secret) < 100:
        row = session.exec(
            select(PortalSession).where(col(PortalSession.secret_hash) == tokens.digest(secret))
        ).first()
    if row is None or row.ended_at is not None or row.expires_at <= now:
        raise Unauthenticated("your portal session has ended; sign in again")
    principal = authenticate_token_id(session, row.token_id, now, touch_interval_s, origin)
    return principal, row


def sign_out(session: Session, principal: Principal, row: PortalSession, now: datetime) -> None:
    """End the session for good (its cookie no longer signs anyone in)."""
    row.ended_at = now
    session.add(row)
    audit_log.record(
        session,
        principal,
        "portal.sign_out",
        "portal_session",
        row.id,
        stream=audit_log.stream_for(principal.member_id),
        now=now,
    )
    session.commit()


def csrf_token(secret: str) -> str:
    """The token every form of this session carries (a keyed hash of the cookie's secret)."""
    return hmac.new(secret.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def check_csrf(secret: str, presented: str | None) -> None:
    if not presented or not hmac.compare_digest(csrf_token(secret), presented):
        raise Forbidden(
            "this form was not sent from your portal session (it may be stale): reload the "
            "page and try again",
            code="csrf_failed",
        )
