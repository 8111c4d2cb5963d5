"""What the OpenAI-compatible gateway answers: OpenAI's bodies, chunks and error body, and
the server-sent events response that carries a stream.

Pure shaping: nothing here reads the database or talks to a replica. A body is built from an
:class:`Answer` (the gateway's ``Call`` is one): its response id, creation time and what the
client asked for (chat or completion, the model as written, whether a usage chunk is wanted).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import anyio
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send


class Asked(Protocol):
    """What the client asked for that shapes the answer (the gateway's ``Parsed``)."""

    @property
    def kind(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def include_usage(self) -> bool: ...


class Answer(Protocol):
    """One answer's identity (the gateway's ``Call``)."""

    @property
    def response_id(self) -> str: ...
    @property
    def created(self) -> int: ...
    @property
    def parsed(self) -> Asked: ...


# --- the OpenAI error body -----------------------------------------------------------------

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}
_CODES = {
    "unauthenticated": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
    "validation_error": "invalid_request_error",
    "bad_request": "invalid_request_error",
}


def error_response(status: int, code: str, message: str, details: dict[str, Any]) -> Response:
    """Nuri's error as OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""
    status = 400 if status == 422 else status
    code = _CODES.get(code, code)
    kind = "insufficient_quota" if code == "insufficient_quota" else _TYPES.get(status)
    param = details.get("param")
    body = {
        "error": {
            "message": message,
            "type": kind or ("server_error" if status >= 500 else "invalid_request_error"),
            "param": param if isinstance(param, str) else None,
            "code": code,
        }
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


# --- answers -------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(call: Answer, result: dict[str, Any]) -> dict[str, Any]:
    """A whole answer (``chat.completion`` or ``text_completion``)."""
    text, reason = str(result.get("text", "")), result.get("finish_reason") or "stop"
    if call.parsed.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        kind = "text_completion"
    return {
        "id": call.response_id,
        "object": kind,
        "created": call.created,
        "model": call.parsed.model,
        "choices": [choice],
        "usage": usage(
            int(result.get("prompt_tokens", 0)), int(result.get("completion_tokens", 0))
        ),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``[DONE]`` as it is)."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")


def chunk(
    call: Answer, text: str | None, finish: str | None, *, role: bool = False
) -> dict[str, Any]:
    """One streamed piece: ``chat.completion.chunk`` (a delta) or ``text_completion``."""
    if call.parsed.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish,
        }
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    out: dict[str, Any] = {
        "id": call.response_id,
        "object": kind,
        "created": call.created,
        "model": call.parsed.model,
        "choices": [choice],
    }
    if call.parsed.include_usage:
        out["usage"] = None
    return out


def usage_chunk(call: Answer, prompt: int, completion: int) -> dict[str, Any]:
    """The one usage chunk of ``stream_options.include_usage``: last, with no choices."""
    kind = "chat.completion.chunk" if call.parsed.kind == "chat" else "text_completion"
    return {
        "id": call.response_id,
        "object": kind,
        "created": call.created,
        "model": call.parsed.model,
        "choices": [],
        "usage": usage(prompt, completion),
    }


def error_event(message: str, code: str) -> bytes:
    return sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


class EventStream(StreamingResponse):
    """Server-sent events that notice a client leaving at once (not at the next write):
    the events' generator is then closed, which stops the replica's generation."""

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})  # fmt: skip
                async for piece in self.events:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass  # the client left (ASGI 2.4 servers raise on a write after that)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.events.aclose()
                group.cancel_scope.cancel()
