"""Limits every request meets before a handler sees it: the body's size, authentication
before the body is read, and a per-token request rate.

One ASGI middleware (:class:`RequestGuard`) wraps the request body's ``receive``: the first
time anything reads the body it checks the declared size and, on the API, authenticates the
caller, so an unauthenticated or oversized body is answered (401, 413) without a byte of it
parsed; later reads count bytes, so a body without a Content-Length (chunked) stops at the
limit too. Routes that never read a body pay nothing here; their callers are authenticated by
the ``get_principal`` dependency, which also applies the rate limit (:func:`admit`).

The refusals are raised as :class:`Refused`, an ``HTTPException`` carrying a
:class:`~controlplane.errors.NuriError`: FastAPI passes HTTP exceptions raised while reading
a body through unchanged, and the error handlers (``controlplane.api.errors``) answer them
like any other ``{code, message, details}`` error (an error page under /portal).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controlplane.errors import NuriError

if TYPE_CHECKING:
    from controlplane.auth import Principal

# Where an authenticated principal is kept for the rest of the request (``scope["state"]``).
PRINCIPAL_KEY = "principal"
# Methods whose body a route may read.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class PayloadTooLarge(NuriError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(NuriError):
    """A token sent more requests than its rate allows; ``retry_after`` seconds until the next
    one is accepted (the ``Retry-After`` header)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after: int, rate: float, burst: int):
        super().__init__(
            f"too many requests with this token; retry after {retry_after} s",
            details={"retry_after_s": retry_after, "rate_per_s": rate, "burst": burst},
        )
        self.retry_after = retry_after


class Refused(HTTPException):
    """An error raised while the request body is being read (see the module): a
    :class:`NuriError` (401, 403, 413, 429) or whatever else authentication raised (a lost
    database connection), answered by the handler that error would have had anywhere else."""

    def __init__(self, error: Exception):
        status = error.status_code if isinstance(error, NuriError) else 500
        super().__init__(status_code=status, detail=str(error))
        self.error = error


class RateLimiter:
    """A token bucket per API token: ``burst`` requests at once, refilled at ``rate`` per
    second; ``rate == 0`` switches it off.

    Kept in the process: with ``nuri api --workers N`` each worker process has its own buckets,
    so a token's ceiling is up to N times the rate (as with any per-process limiter; the
    setting is documented so). Buckets that have refilled are forgotten once there are many,
    so memory stays bounded by the tokens active in the last ``burst / rate`` seconds.
    """

    _PRUNE_AT = 10_000

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s bucket: 0.0 when allowed, else the seconds until
        one would be."""
        if not self.enabled:
            return 0.0
        now = float(self._clock())
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self._PRUNE_AT:
                    self._prune(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]


def admit(limiter: RateLimiter, principal: Principal) -> None:
    """Raise :class:`RateLimited` when ``principal``'s token is over its rate."""
    wait = limiter.take(principal.token_id)
    if wait > 0:
        raise RateLimited(max(1, math.ceil(wait)), limiter.rate, limiter.burst)


class RequestGuard:
    """See the module. ``authenticate(request)`` is called (in the thread pool) before an API
    body (a path under ``api_prefix``, one prefix or several) is read; it returns the
    principal, which is kept in the request's state so the route does not authenticate twice,
    or raises a NuriError."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        authenticate: Any,
        api_prefix: str | tuple[str, ...] = "/v1/",
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.authenticate = authenticate
        self.api_prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        api = scope["path"].startswith(self.api_prefix)
        checked = False
        received = 0

        async def guarded_receive() -> Message:
            nonlocal checked, received
            if not checked:
                checked = True
                if declared is not None and declared > limit:
                    raise Refused(_too_large(limit, declared))
                if api:
                    try:
                        principal = await run_in_threadpool(self.authenticate, Request(scope))
                    except Exception as exc:  # as an HTTP exception (see above)
                        raise Refused(exc) from exc
                    scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise Refused(_too_large(limit, None))
            return message

        await self.app(scope, guarded_receive, send)


def _too_large(limit: int, declared: int | None) -> PayloadTooLarge:
    details: dict[str, Any] = {"max_bytes": limit}
    if declared is not None:
        details["content_length"] = declared
    return PayloadTooLarge(f"the request body is larger than {limit} bytes", details=details)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            # ASCII digits only (int() would take "²" or " 1_0 "); a malformed length is
            # treated as unknown and the bytes are counted as they arrive.
            if text.isascii() and text.isdigit():
                return int(text)
            return None
    return None
