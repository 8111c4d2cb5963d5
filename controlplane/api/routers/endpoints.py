"""/v1/endpoints: online models served through the gateway (``controlplane.serving``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from controlplane.api.deps import CallerDep, PageDep, SessionDep
from controlplane.api.schemas import Page
from controlplane.db.types import utcnow
from controlplane.serving import endpoints, schemas

router = APIRouter(prefix="/v1", tags=["endpoints"])


def _wake(request: Request) -> None:
    wake = getattr(request.app.state, "scheduler_wake", None)
    if wake is not None:
        wake()  # the controller acts on the next cycle: start it now


@router.post("/endpoints", status_code=status.HTTP_201_CREATED, operation_id="createEndpoint")
def create_endpoint(
    request: Request, body: schemas.EndpointCreate, session: SessionDep, caller: CallerDep
) -> schemas.EndpointPublic:
    row = endpoints.create(session, caller, body, utcnow())
    _wake(request)
    return endpoints.public(session, [row])[0]


@router.get("/endpoints", operation_id="listEndpoints")
def list_endpoints(
    session: SessionDep, caller: CallerDep, page: PageDep, member: str | None = None
) -> Page[schemas.EndpointPublic]:
    rows, nxt = endpoints.list_endpoints(session, caller, page.limit, page.cursor, member)
    return Page(items=endpoints.public(session, rows), next_cursor=nxt)


@router.get("/endpoints/{name}", operation_id="getEndpoint")
def get_endpoint(name: str, session: SessionDep, caller: CallerDep) -> schemas.EndpointPublic:
    return endpoints.public(session, [endpoints.get(session, caller, name)])[0]


@router.patch("/endpoints/{name}", operation_id="updateEndpoint")
def update_endpoint(
    request: Request,
    name: str,
    body: schemas.EndpointUpdate,
    session: SessionDep,
    caller: CallerDep,
) -> schemas.EndpointPublic:
    row = endpoints.update(session, caller, name, body, utcnow())
    _wake(request)
    return endpoints.public(session, [row])[0]


@router.delete("/endpoints/{name}", operation_id="deleteEndpoint")
def delete_endpoint(
    request: Request, name: str, session: SessionDep, caller: CallerDep
) -> schemas.EndpointPublic:
    row = endpoints.delete(session, caller, name, utcnow())
    _wake(request)
    return endpoints.public(session, [row])[0]
