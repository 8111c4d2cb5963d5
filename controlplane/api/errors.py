"""One place maps every error to ``{code, message, details}``; no traceback reaches a client."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controlplane.api.limits import Refused
from controlplane.errors import NuriError

log = logging.getLogger("nuri.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class _AsciiJSONResponse(JSONResponse):
    """Errors echo what the caller sent, which may hold text UTF-8 cannot encode (a lone
    surrogate): escaped JSON always encodes, so the answer is the error, never a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode()


def error_response(status: int, code: str, message: str, details: dict[str, Any]) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _AsciiJSONResponse(
        status_code=status,
        content={"code": code, "message": message, "details": details},
        headers=headers,
    )


def _clean_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item: dict[str, Any] = {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        out.append(item)
    return out


# Pages under this prefix (the portal) show errors as pages; ``install`` gets the renderer.
HTML_PREFIX = "/portal"
HtmlErrors = Callable[[Request, int, str, str, dict[str, Any]], Response]
# Under this prefix (the serving gateway) errors have OpenAI's body, for OpenAI's clients.
OPENAI_PREFIX = "/openai/"
BodyErrors = Callable[[int, str, str, dict[str, Any]], Response]


def install(app: FastAPI, html: HtmlErrors | None = None, openai: BodyErrors | None = None) -> None:
    def respond(
        request: Request, status: int, code: str, message: str, details: dict[str, Any]
    ) -> Response:
        if html is not None and request.url.path.startswith(HTML_PREFIX):
            return html(request, status, code, message, details)
        if openai is not None and request.url.path.startswith(OPENAI_PREFIX):
            return openai(status, code, message, details)
        return error_response(status, code, message, details)

    def nuri_error(request: Request, exc: NuriError) -> Response:
        response = respond(request, exc.status_code, exc.code, exc.message, exc.details)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.exception_handler(NuriError)
    async def _nuri(request: Request, exc: NuriError) -> Response:
        return nuri_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = _clean_validation_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "request"
        return respond(
            request, 422, "validation_error", f"{where}: {first['msg']}", {"errors": errors}
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, Refused):  # raised while the body was being read (api.limits)
            return await _carried(request, exc.error)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return respond(request, exc.status_code, code, str(exc.detail), {})

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        # A lost connection (a restarted server, a dropped link; the pool replaces it) or a
        # database that cannot be reached or is busy: a retry is the cure.
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            log.warning(
                "database unavailable on %s %s: %s",
                request.method,
                request.url.path,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
            )
            response = respond(
                request,
                503,
                "database_unavailable",
                "the database is unavailable or lost the connection; retry the request "
                "(with an Idempotency-Key a retried submission cannot create a second job)",
                {},
            )
            response.headers["Retry-After"] = "1"
            return response
        if isinstance(exc, DataError):
            # The database refused a value (a number past its 64-bit range, a NUL in text on
            # PostgreSQL): bad input, rolled back with its transaction, answered as such.
            return respond(
                request,
                422,
                "unstorable_value",
                "a value in the request cannot be stored: out of range, or a character the "
                "database refuses",
                {},
            )
        return respond(request, *_internal_error(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return respond(request, *_internal_error(request))

    async def _carried(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NuriError):
            return nuri_error(request, exc)
        if isinstance(exc, DBAPIError):
            return await _database(request, exc)
        return await _unexpected(request, exc)


def _internal_error(request: Request) -> tuple[int, str, str, dict[str, Any]]:
    """A bug, not bad input: logged (with the traceback being handled) and the request id for
    operators; the client is told nothing internal."""
    rid = request.headers.get("x-request-id", "")
    log.exception("unhandled error on %s %s (request %s)", request.method, request.url.path, rid)
    return 500, "internal_error", "internal error; it has been logged", {"request_id": rid}
