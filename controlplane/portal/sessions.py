"""Portal sessions: a browser signed in with an API token.

The cookie carries a random secret (``nps_`` + 256 bits); the database keeps its SHA-256, as
for API tokens. A session acts as the token it was opened with and is re-checked on every
request exactly as a bearer token is (revoked, expired, disabled user: signed out; disabling
a user also ends their sessions for good, so enabling them later revives none). Forms carry a
CSRF token derived from the secret (HMAC), which a page of another site cannot read.

Signing in is guarded against login CSRF (another site posting its own token to sign the
victim's browser into the attacker's account) twice over: the sign-in form carries a token
bound to a pre-session cookie (``LOGIN_COOKIE``, double submit: ``HttpOnly``,
``SameSite=Strict``, so a cross-site post arrives without it), and a POST whose ``Origin``
(or ``Referer`` when there is no ``Origin``) names another site is refused (``same_site``),
which also covers a cookie planted by a sibling subdomain. Both refusals are 403s.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlmodel import Session, col, select

from controlplane import tokens
from controlplane.audit import log as audit_log
from controlplane.auth import Origin, Principal, authenticate, authenticate_token_id
from controlplane.db.models import ApiToken, PortalSession, User
from controlplane.errors import Forbidden, Unauthenticated

COOKIE = "nuri_portal"
SECRET_PREFIX = "nps_"
LIFETIME = timedelta(hours=12)
_CSRF_LABEL = b"nuri-portal-csrf"
# The pre-session cookie of the sign-in form (see the module's docstring).
LOGIN_COOKIE = "nuri_signin"
LOGIN_PREFIX = "npl_"
LOGIN_LIFETIME = timedelta(hours=12)
_LOGIN_LABEL = b"nuri-portal-login"
_LOGIN_SECRET = re.compile(r"npl_[A-Za-z0-9_-]{40,90}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    # A disable that committed since the token was checked must win: read the user's flag
    # under a row lock (PostgreSQL; SQLite serialises writers anyway). A concurrent disable
    # either waits for this session to commit and then ends it, or commits first and is seen
    # here, so no session of a disabled user is ever left open to revive on enable.
    disabled = session.exec(
        select(User.disabled)
        .where(col(User.id) == principal.user_id)
        .with_for_update(key_share=True)
    ).first()
    if disabled is None or disabled:
        raise Unauthenticated("invalid or expired token")
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


# -- signing in: login CSRF ------------------------------------------------------------------


def login_secret(existing: str | None) -> str:
    """The pre-session cookie's value: the browser's own when well formed (several sign-in
    tabs share it), else a new random one."""
    if existing and _LOGIN_SECRET.fullmatch(existing):
        return existing
    return LOGIN_PREFIX + secrets.token_urlsafe(32)


def login_token(secret: str) -> str:
    """The sign-in form's token: a keyed hash of the pre-session cookie's secret."""
    return hmac.new(secret.encode(), _LOGIN_LABEL, hashlib.sha256).hexdigest()


def check_login_token(cookie: str | None, presented: str | None) -> None:
    """The form's token must match the pre-session cookie (absent on a cross-site post)."""
    if (
        not cookie
        or not presented
        or not _LOGIN_SECRET.fullmatch(cookie)
        or not hmac.compare_digest(login_token(cookie), presented)
    ):
        raise Forbidden(
            "this sign-in form was not sent from this site's sign-in page (it may be stale, "
            "or your browser refused the portal's cookie): reload the page and sign in again",
            code="csrf_failed",
        )


def _site(url: str, scheme: str | None = None) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, or of a ``Host`` header value when
    ``scheme`` says which scheme's default port it implies; None when malformed or not
    http(s)."""
    try:
        parts = urlsplit(url.strip() if scheme is None else f"//{url.strip()}")
        scheme = scheme or parts.scheme.lower()
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.rstrip("."), port or _DEFAULT_PORTS[scheme]


def same_site(origin: str | None, referer: str | None, hosts: Iterable[str]) -> bool:
    """Whether a POST comes from this site: its ``Origin`` (``Referer`` when the browser sent
    no ``Origin``) names one of ``hosts``: the ``Host`` the request was sent to (an ingress
    passes it through) and any ``X-Forwarded-Host``. A page cannot set these headers on a
    form it posts, so a foreign or opaque (``null``) origin is another site. Only the host and
    port are compared, not the scheme: behind a TLS-terminating ingress the request arrives
    as http. A request with neither header is no browser's cross-site form post (browsers
    send ``Origin`` with every POST); the sign-in form's token still guards it.
    """
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    site = _site(claimed)
    if site is None:
        return False
    scheme = site[0]
    return any(
        _site(host, scheme) == site for header in hosts for host in header.split(",") if host
    )


def check_same_site(origin: str | None, referer: str | None, hosts: list[str]) -> None:
    if not same_site(origin, referer, hosts):
        claimed = origin if origin is not None else referer or ""
        raise Forbidden(
            "this form was sent from another site; use the portal's own pages",
            code="cross_site_request",
            details={"origin": claimed[:200], "host": (hosts[0] if hosts else "")[:200]},
        )
