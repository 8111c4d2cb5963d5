"""Composition root: settings -> engine -> migrations -> bootstrap -> routers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane import planning
from controlplane.api import errors, limits
from controlplane.api import openapi as openapi_errors
from controlplane.api.deps import SessionDep, authenticate_request
from controlplane.api.routers import artifacts, audit, data, inventory, jobs, plan, tenancy
from controlplane.api.routers import endpoints as endpoints_route
from controlplane.api.routers import metrics as metrics_route
from controlplane.audit import signing
from controlplane.auth import client_address
from controlplane.db.engine import make_engine, migrate
from controlplane.observability import tracing
from controlplane.observability.metrics import RequestMetricsMiddleware
from controlplane.portal import admin as portal_admin
from controlplane.portal import endpoints as portal_endpoints
from controlplane.portal import jobs_list as portal_jobs_list
from controlplane.portal import live as portal_live
from controlplane.portal import overview as portal_overview
from controlplane.portal import people as portal_people
from controlplane.portal import routes as portal
from controlplane.portal import views as portal_views
from controlplane.services.bootstrap import BootstrapResult, bootstrap
from controlplane.serving import gateway
from controlplane.settings import Settings


class RequestIdMiddleware:
    """Echo the caller's X-Request-ID (or a new one) on every response.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware adds a
    task and a memory stream per request, a large share of a cheap request's cost.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value[:64]
                break
        rid = rid or uuid.uuid4().hex.encode()
        # Handlers read it as request.state.request_id (for the audit log).
        scope.setdefault("state", {})["request_id"] = rid.decode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class TrustedProxiesMiddleware:
    """Behind the proxies of NURI_TRUSTED_PROXIES, the caller's address is the one their
    X-Forwarded-For vouches for (:func:`controlplane.auth.client_address`); everything that
    reads ``request.client`` (the audit log's ``source_ip``) sees that address. Installed
    only when proxies are listed: otherwise the socket's peer stands and the header is
    never read. Servers must not rewrite the peer themselves (``nuri up`` and ``nuri api``
    run uvicorn with ``proxy_headers=False``).
    """

    def __init__(self, app: ASGIApp, trusted: Sequence[IPv4Network | IPv6Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client") if scope["type"] in ("http", "websocket") else None
        if client:
            forwarded = [
                v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for"
            ]
            host = client_address(client[0], forwarded, self.trusted)
            if host != client[0]:
                # The port was the proxy's; the caller's is unknown (uvicorn also says 0).
                scope["client"] = (host, 0)
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the API. Migrates the schema to head and bootstraps the platform admin."""
    settings = settings or Settings()
    if engine is None:
        if settings.database_url is None:
            settings.ensure_home()
        engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    boot = bootstrap(engine, settings.bootstrap_admin_token)

    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        title="Nuri",
        version="0.1.0",
        description="Control plane of the consortium's shared GPU cluster (A.X K1).",
        openapi_tags=[
            {"name": n}
            for n in (
                "jobs",
                "datasets",
                "members",
                "users",
                "tokens",
                "pools",
                "nodes",
                "quotas",
                "budgets",
                "usage",
                "artifacts",
                "policies",
                "audit",
                "health",
            )
        ],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.bootstrap = boot
    app.state.audit_key = signing.load_or_create(settings.resolved_audit_key_path)
    if settings.warm_planner:
        planning.warm_up_in_background()
    errors.install(app, html=portal.error_page, openai=gateway.error_response)

    app.state.rate_limiter = limits.RateLimiter(
        settings.rate_limit_per_s, settings.rate_limit_burst
    )
    # Innermost of the three: the guard sees the request id and the caller's address.
    app.add_middleware(
        limits.RequestGuard,
        max_body_bytes=settings.max_request_bytes,
        authenticate=authenticate_request,
        api_prefix=("/v1/", gateway.PREFIX + "/"),
    )
    app.add_middleware(RequestIdMiddleware)
    if settings.trusted_proxy_networks:
        app.add_middleware(TrustedProxiesMiddleware, trusted=settings.trusted_proxy_networks)
    # Outermost: the duration covers everything a caller waits for, refusals included.
    app.add_middleware(RequestMetricsMiddleware)

    @app.get("/healthz", operation_id="health", tags=["health"])
    def healthz(session: SessionDep) -> dict[str, Any]:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        return {"status": "ok", "database": engine.dialect.name}

    @app.get("/readyz", operation_id="ready", tags=["health"])
    def readyz(session: SessionDep) -> Any:
        """Ready to serve submissions at full speed (``/healthz``: alive). 503 while the
        planner still warms up (it holds its lock while importing torch)."""
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        waiting = [] if not settings.warm_planner or planning.is_warm() else ["planner"]
        if waiting:
            return JSONResponse(
                status_code=503,
                content={
                    "code": "not_ready",
                    "message": "starting: the planner is still warming up",
                    "details": {"waiting_for": waiting},
                },
                headers={"Retry-After": "1"},
            )
        return {"status": "ready", "database": engine.dialect.name}

    _self_hosted_docs(app)
    # Jobs first: routes are matched in order, and POST /v1/jobs is the hottest route (after
    # the other routers it paid ~0.2 ms of regex matching per request). No two routers share
    # a path, so the order changes nothing else (only the order of paths in /openapi.json).
    for module in (jobs, tenancy, inventory, data, plan, artifacts, audit, metrics_route):
        app.include_router(module.router)
    app.include_router(endpoints_route.router)
    app.include_router(gateway.router)
    _portal(app)
    _publish_job_configs(app)
    # Server and SQL spans only when the OTEL_* variables ask for export (once a process).
    tracing.configure("nuri-api")
    tracing.instrument_engine(engine)
    tracing.instrument_app(app)
    return app


def _publish_job_configs(app: FastAPI) -> None:
    """Each job kind's ``config`` schema in the OpenAPI (``workers.knobs``): components
    ``FinetuneConfig`` ... ``SyntheticConfig``; ``JobCreate.config`` is any of them (the
    job's kind decides which: a submission is validated against that one)."""
    from fastapi.openapi.utils import get_openapi

    from workers import knobs

    names = {
        "finetune": "FinetuneConfig",
        "pretrain": "PretrainConfig",
        "lora": "LoraConfig",
        "distill": "DistillConfig",
        "inference": "InferenceConfig",
        "synthetic": "SyntheticConfig",
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for kind, body in knobs.json_schemas().items():
                components[names[kind]] = {**body, "title": names[kind]}
            config = components["JobCreate"]["properties"]["config"]
            config["anyOf"] = [{"$ref": f"#/components/schemas/{n}"} for n in names.values()]
            config.pop("additionalProperties", None)
            app.openapi_schema = openapi_errors.document_errors(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _portal(app: FastAPI) -> None:
    """The web portal at /portal (pages over the same services), its assets, and / to it."""
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    app.include_router(portal.router)
    app.include_router(portal_live.router)  # after /portal/jobs/new: it owns /jobs/{id}
    app.include_router(portal_jobs_list.router)
    app.include_router(portal_people.router)
    app.include_router(portal_admin.router)
    app.include_router(portal_endpoints.router)
    app.include_router(portal_overview.router)
    app.mount(
        "/portal/static", StaticFiles(directory=portal_views.WEB_DIR / "static"), name="portal"
    )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal/jobs", status_code=303)


def _self_hosted_docs(app: FastAPI) -> None:
    """Swagger UI from a bundled copy: the cluster's network may not reach a CDN."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    app.mount(
        "/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger"
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Nuri API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon-32x32.png",
        )


def create_app_from_env() -> FastAPI:
    """:func:`create_app` with settings from the environment: the factory each API worker
    process calls (``uvicorn --factory --no-proxy-headers
    controlplane.api.app:create_app_from_env``: the app, not uvicorn, decides whom to believe
    about X-Forwarded-For; see :class:`TrustedProxiesMiddleware`)."""
    return create_app(Settings())


def bootstrap_result(app: FastAPI) -> BootstrapResult:
    result: BootstrapResult = app.state.bootstrap
    return result
