"""FastAPI dependencies: the session, the settings, the authenticated caller, paging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.api import limits
from controlplane.auth import Origin, Principal, authenticate, trace_id_from
from controlplane.db.types import utcnow
from controlplane.observability import tracing
from controlplane.settings import Settings

# Dependencies that do no I/O are ``async`` so FastAPI runs them on the event loop instead of
# hopping to the thread pool for each one; on a busy 2-core machine every hop costs.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    # Creating a Session is free (it connects lazily, inside the endpoint's thread). Closing
    # one that never connected is free too; one that did returns its connection to the pool.
    engine: Engine = request.app.state.engine
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_principal(request: Request, session: SessionDep, settings: SettingsDep) -> Principal:
    # The header is read here, not declared as a parameter: the OpenAPI documents the token
    # as the ``bearer`` security scheme (``api.openapi``), not as an input of every route.
    return principal_for(request, session, settings, request.headers.get("authorization"))


def principal_for(
    request: Request, session: Session, settings: Settings, authorization: str | None
) -> Principal:
    """Authenticate within the caller's thread and session (see ``get_principal``), once per
    request: a caller authenticated before its body was read (``api.limits.RequestGuard``)
    is not looked up again, nor counted twice against its rate."""
    known: Principal | None = getattr(request.state, limits.PRINCIPAL_KEY, None)
    if known is not None:
        return known
    principal = _authenticate(request, session, settings, authorization)
    setattr(request.state, limits.PRINCIPAL_KEY, principal)
    return principal


def authenticate_request(request: Request) -> Principal:
    """The caller of ``request`` from its Authorization header, in a session of its own: what
    ``RequestGuard`` runs before a body is read."""
    settings: Settings = request.app.state.settings
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        return _authenticate(request, session, settings, request.headers.get("authorization"))


def _authenticate(
    request: Request, session: Session, settings: Settings, authorization: str | None
) -> Principal:
    origin = Origin(
        source_ip=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
        # The request's trace: its server span's when the API traces, else the caller's.
        trace_id=trace_id_from(tracing.submission_traceparent(request.headers.get("traceparent"))),
    )
    principal = authenticate(
        session, authorization, utcnow(), settings.token_touch_interval_s, origin
    )
    limits.admit(request.app.state.rate_limiter, principal)
    return principal


CallerDep = Annotated[Principal, Depends(get_principal)]


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: str | None


async def page_params(
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PageParams:
    return PageParams(limit=min(limit, settings.max_page_size), cursor=cursor)


PageDep = Annotated[PageParams, Depends(page_params)]
