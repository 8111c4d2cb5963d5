"""/v1/audit: read, verify and export the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.engine import Engine

from controlplane.api.deps import CallerDep, SessionDep
from controlplane.api.schemas import DB_INT_MAX
from controlplane.audit import log, signing, store
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
    after: Annotated[
        int, Query(ge=0, le=DB_INT_MAX, description="return events with a larger id")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    items, nxt = auditing.list_events(session, caller, stream, after, limit, utcnow())
    return {"items": items, "next_after": nxt}


@router.get("/verify", operation_id="verifyAudit")
def verify(
    request: Request, session: SessionDep, caller: CallerDep, stream: str | None = None
) -> dict[str, Any]:
    return auditing.verify(session, caller, _key(request), stream, utcnow())


@router.get(
    "/export",
    operation_id="exportAudit",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "JSON Lines, every line ASCII: a header (format, streams, "
            "public_key_pem), then {event}, then {checkpoint} records, then an {end} record "
            "with the counts and each stream's last seq; a stream without it was cut off",
            "content": {store.MEDIA_TYPE: {}},
        }
    },
)
def export(
    request: Request, session: SessionDep, caller: CallerDep, stream: str | None = None
) -> StreamingResponse:
    """Everything an offline verifier needs, streamed in batches (``nuri audit export``).
    Audited as ``audit.export``, before the first row is sent."""
    streams = auditing.visible_streams(caller, stream)
    plan = store.plan_export(session, streams)
    log.record(
        session,
        caller,
        "audit.export",
        "audit_stream",
        stream,
        stream=log.stream_for(caller.member_id),
        now=utcnow(),
        details={"streams": plan.names, "events": plan.events},
    )
    session.commit()
    engine: Engine = request.app.state.engine
    return StreamingResponse(
        store.export_lines(engine, plan, signing.public_pem(_key(request))),
        media_type=store.MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.post("/checkpoints", operation_id="writeAuditCheckpoints")
def checkpoint(request: Request, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Sign every stream's head now (the platform also does this periodically)."""
    caller.require_platform_admin()
    n = log.write_checkpoints(session, _key(request), utcnow())
    return {"checkpoints": n}
