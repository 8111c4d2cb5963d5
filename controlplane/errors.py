"""Domain errors with stable codes, mapped to HTTP 4xx `{code, message, details}` in one place."""

from __future__ import annotations

from typing import Any


class NuriError(Exception):
    """Base of every error a client may see. ``code`` is stable and documented."""

    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class Unauthenticated(NuriError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(NuriError):
    status_code = 403
    code = "forbidden"


class NotFound(NuriError):
    status_code = 404
    code = "not_found"

    def __init__(self, kind: str, ident: str):
        super().__init__(f"{kind} {ident!r} not found", details={"kind": kind, "id": ident})


class Conflict(NuriError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class InvalidRequest(NuriError):
    status_code = 422
    code = "invalid_request"
