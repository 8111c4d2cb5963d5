"""Who is calling: bearer-token authentication and the caller's tenant scope."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from controlplane import tokens
from controlplane.audit import log as audit_log
from controlplane.db.models import ApiToken, Role, User
from controlplane.errors import Forbidden, Unauthenticated

# ``inference``: calling the serving gateway (``/openai/v1``) with the token.
SCOPES = ("read", "write", "admin", "metrics", "inference")


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
    return ["read", "write", "inference"]


def allowed_scopes(role: Role) -> list[str]:
    """What a token of ``role`` may be given. ``metrics`` (reading /metrics, which shows every
    member's usage) is never a default: it is asked for, typically alone, for a scraper's
    token, and only identities that see all members may hold it."""
    extra = ["metrics"] if role in (Role.PLATFORM_ADMIN, Role.AUDITOR) else []
    return default_scopes(role) + extra


@dataclass(frozen=True, slots=True)
class Origin:
    """Request metadata that travels with the caller into the audit log."""

    source_ip: str | None = None
    request_id: str | None = None
    trace_id: str | None = None


def client_address(
    peer: str | None,
    forwarded_for: Iterable[str],
    trusted: Sequence[IPv4Network | IPv6Network],
) -> str | None:
    """The caller's address: the socket's ``peer`` unless that is a trusted proxy.

    Only a peer in ``trusted`` (NURI_TRUSTED_PROXIES) is believed about X-Forwarded-For
    (``forwarded_for``: the values of every such header, in order); anyone else's header is
    ignored, so a caller cannot choose the address its audit events carry. From a trusted
    peer, the list is read from the right, each proxy vouching for the hop before it: the
    answer is the right-most address that is not itself a trusted proxy, the left-most
    address when all are, and the last vouched-for hop when an entry is not an address
    (garbage goes no further than the last proxy we believe). Never raises; the result is
    ``peer`` unchanged or a normalised IP address.
    """
    if peer is None or not trusted:
        return peer
    hop = _address(peer)
    if hop is None or not _is_trusted(hop, trusted):
        return peer
    for entry in reversed(",".join(forwarded_for).split(",")):
        if not entry.strip():
            continue  # "a,,b" or a trailing comma: no claim at all
        claimed = _address(entry)
        if claimed is None:
            break
        hop = claimed
        if not _is_trusted(hop, trusted):
            break
    return str(hop)


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """An X-Forwarded-For entry as an address: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:80``; None for anything else."""
    text = text.strip()
    if len(text) > 64:  # the audit log's column; no address in these forms is longer
        return None
    if text.startswith("["):
        text, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not _is_port(port):
            return None
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 (a dual-stack socket's view)
    return addr


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _is_trusted(
    addr: IPv4Address | IPv6Address, trusted: Sequence[IPv4Network | IPv6Network]
) -> bool:
    return any(addr in net for net in trusted)


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
