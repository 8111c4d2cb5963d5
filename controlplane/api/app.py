"""Composition root: settings -> engine -> migrations -> bootstrap -> routers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from sqlalchemy import text
from sqlalchemy.engine import Engine

from controlplane.api import errors
from controlplane.api.deps import SessionDep
from controlplane.api.routers import data, inventory, jobs, tenancy
from controlplane.db.engine import make_engine, migrate
from controlplane.services.bootstrap import BootstrapResult, bootstrap
from controlplane.settings import Settings


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
                "health",
            )
        ],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.bootstrap = boot
    errors.install(app)

    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid[:64]
        return response

    @app.get("/healthz", operation_id="health", tags=["health"])
    def healthz(session: SessionDep) -> dict[str, Any]:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        return {"status": "ok", "database": engine.dialect.name}

    for module in (tenancy, inventory, data, jobs):
        app.include_router(module.router)
    return app


def bootstrap_result(app: FastAPI) -> BootstrapResult:
    result: BootstrapResult = app.state.bootstrap
    return result
