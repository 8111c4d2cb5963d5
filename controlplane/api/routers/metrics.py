"""/metrics: the Prometheus exposition (``controlplane.observability.metrics``).

Left out of the OpenAPI: it is for scrapers, in Prometheus' text format, not a REST resource.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from controlplane.api.deps import SessionDep, SettingsDep, principal_for
from controlplane.observability import metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def exposition(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    if not metrics.open_without_token(settings.host, settings.metrics_public):
        caller = principal_for(request, session, settings, request.headers.get("authorization"))
        caller.require_scope("metrics")
    body = metrics.exposition(request.app.state.engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
