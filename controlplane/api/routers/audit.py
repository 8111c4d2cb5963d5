"""/v1/audit: read, verify and export the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Query, Request

from controlplane.api.deps import CallerDep, SessionDep
from controlplane.audit import log
from controlplane.db.types import utcnow
from controlplane.services import auditing

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def _key(request: Request) -> Ed25519PrivateKey:
    key: Ed25519PrivateKey = request.app.state.audit_key
    return key


@router.get("/events", operation_id="listAuditEvents")
def list_events(
    session: SessionDep,
    caller: CallerDep,
    stream: Annotated[str | None, Query(description="member id or 'platform'")] = None,
    after: Annotated[int, Query(ge=0, description="return events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    items, nxt = auditing.list_events(session, caller, stream, after, limit, utcnow())
    return {"items": items, "next_after": nxt}


@router.get("/verify", operation_id="verifyAudit")
def verify(
    request: Request, session: SessionDep, caller: CallerDep, stream: str | None = None
) -> dict[str, Any]:
    return auditing.verify(session, caller, _key(request), stream, utcnow())


@router.get("/export", operation_id="exportAudit")
def export(
    request: Request, session: SessionDep, caller: CallerDep, stream: str | None = None
) -> dict[str, Any]:
    return auditing.export(session, caller, _key(request), stream, utcnow())


@router.post("/checkpoints", operation_id="writeAuditCheckpoints")
def checkpoint(request: Request, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Sign every stream's head now (the platform also does this periodically)."""
    caller.require_platform_admin()
    n = log.write_checkpoints(session, _key(request), utcnow())
    return {"checkpoints": n}
