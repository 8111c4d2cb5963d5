"""The errors every API route may answer, documented in the OpenAPI from one place.

Routes declare what they return; the statuses that come from the framework around them
(authentication, the request guard, validation, the database) are the same for every route
and are added here, all with the ``ErrorBody`` schema, so a client generated from the
document (and Schemathesis, in the tests) knows every status it can meet.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}

# status -> (description, headers)
_COMMON: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("bad_request: a body that is not text or cannot be decoded", {}),
    "401": ("unauthenticated: missing, malformed, unknown, revoked or expired token", {}),
    "403": ("forbidden, insufficient_scope, member_required and other refusals", {}),
    "404": ("not_found: the object (or one it names) is missing or another member's", {}),
    "409": ("conflict, invalid_transition, idempotency_conflict", {}),
    "413": ("payload_too_large: the body exceeds NURI_MAX_REQUEST_BYTES", {}),
    "422": ("validation_error, invalid_request, unstorable_value and other bad input", {}),
    "429": ("rate_limited: this token is over its request rate", _RETRY_AFTER),
    "503": ("database_unavailable: retry the request", _RETRY_AFTER),
}
_WRITES = {"post", "put", "patch", "delete"}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the common error responses and the bearer token (the ``bearer`` security scheme)
    to every ``/v1`` operation of ``schema``, in place (returned for convenience). A route's
    own description of a status is kept, its schema set to ``ErrorBody``; FastAPI's
    ``HTTPValidationError`` is replaced: Nuri answers every 422 with ``{code, message,
    details}``."""
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            if method not in _WRITES | {"get"}:
                continue
            statuses = _statuses(path, method, op)
            responses = op.setdefault("responses", {})
            for status in statuses:
                description, headers = _COMMON[status]
                entry = responses.setdefault(status, {"description": description})
                entry["content"] = {"application/json": {"schema": _ERROR}}
                if headers:
                    entry["headers"] = headers
            if statuses and path not in _PROBES and _authenticated(op):
                op["security"] = [{"bearer": []}]
    components = schema.setdefault("components", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A Nuri API token (nuri_...): POST /v1/tokens, or `nuri token new` "
            "for the platform admin's bootstrap token",
        }
    }
    return schema


_PROBES = ("/healthz", "/readyz")  # unauthenticated: the orchestrator's probes


def _statuses(path: str, method: str, op: dict[str, Any]) -> list[str]:
    if path in _PROBES:
        return ["503"]
    if not path.startswith("/v1/"):
        return []
    out = ["401", "403", "404", "422", "429", "503"]
    if method in _WRITES:
        out.append("409")
    if "requestBody" in op:
        out += ["400", "413"]
    if not _authenticated(op):
        out.remove("429")
    return sorted(out)


def _authenticated(op: dict[str, Any]) -> bool:
    """Routes whose credential is a signed reference, not a token (no rate limit applies)."""
    return op.get("operationId") != "fetchArtifactContent"
