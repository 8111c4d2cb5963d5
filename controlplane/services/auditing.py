"""Reading, verifying and exporting the audit log; each of these is itself audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from controlplane.audit import log, store
from controlplane.auth import Principal
from controlplane.db.models import Role
from controlplane.errors import Forbidden, NotFound


def visible_streams(caller: Principal, stream: str | None) -> list[str] | None:
    """The streams the caller may read (None: all). Auditors and platform admins read every
    stream; a member admin reads its member's stream; other roles read none."""
    if caller.reads_all_members:
        return None if stream is None else [stream]
    if caller.role is not Role.MEMBER_ADMIN or caller.member_id is None:
        raise Forbidden("reading the audit log needs the auditor or member_admin role")
    if stream is not None and stream != caller.member_id:
        raise NotFound("audit stream", stream)
    return [caller.member_id]


def list_events(
    session: Session,
    caller: Principal,
    stream: str | None,
    after: int,
    limit: int,
    now: datetime,
) -> tuple[list[dict[str, Any]], int | None]:
    streams = visible_streams(caller, stream)
    rows = store.read_events(session, streams, after_id=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    log.record(
        session,
        caller,
        "audit.read",
        "audit_stream",
        stream,
        stream=log.stream_for(caller.member_id),
        now=now,
        details={"streams": streams or "all", "events": len(rows), "after": after},
    )
    session.commit()
    items = [{"id": r.id, **store.event_dict(r)} for r in rows]
    return items, (rows[-1].id if more and rows else None)


def verify(
    session: Session,
    caller: Principal,
    key: Ed25519PrivateKey,
    stream: str | None,
    now: datetime,
) -> dict[str, Any]:
    streams = visible_streams(caller, stream)
    report = store.verify_db(session, key.public_key(), streams)
    log.record(
        session,
        caller,
        "audit.verify",
        "audit_stream",
        stream,
        stream=log.stream_for(caller.member_id),
        now=now,
        details={"ok": report.ok, "streams": len(report.streams)},
    )
    session.commit()
    return report.to_dict()
