"""The OpenAI-compatible API at ``/openai/v1``: models, chat completions, completions.

Callers are Nuri API tokens with the ``inference`` scope; ``model`` is one of the caller's
member's endpoints (``<endpoint>`` or ``<endpoint>:<adapter>``). Each request, in order:

1. authenticate (before the body is read: ``api.limits.RequestGuard``), check the scope;
2. parse the body (only what Nuri serves; anything else is a 400 naming the field);
3. find the endpoint (404 ``model_not_found`` for another member's, unknown or deleted);
4. rate limits of the endpoint (requests and tokens per minute: 429 + Retry-After);
5. reserve the worst case in the ledger (``metering.reserve``: 429 ``insufficient_quota``);
6. route to a replica (``routing.route``: residency 403, cold start, 503 + Retry-After);
7. answer (JSON, or SSE chunks), and settle the reservation once, whatever happened
   (a client that leaves mid-stream stops the generation and pays for what was generated).

Errors under this prefix have OpenAI's body (``openai_shapes.error_response``, installed by
``api.errors``); bodies, chunks and the event stream are shaped in ``openai_shapes``.
Refusals by budget and residency are audit events (``gateway.refuse``); served requests are
not: the ledger is their record.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from controlplane.api.deps import CallerDep, SessionDep, principal_for
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Endpoint, EndpointState
from controlplane.db.types import utcnow
from controlplane.errors import NuriError
from controlplane.serving import metering, routing
from controlplane.serving.openai_shapes import (
    DONE,
    EventStream,
    chunk,
    completion_body,
    error_event,
    sse,
    usage_chunk,
)

# Re-exported: the gateway's names before the shapes had a module of their own.
from controlplane.serving.openai_shapes import error_response as error_response
from controlplane.serving.openai_shapes import usage as usage
from controlplane.settings import Settings

PREFIX = "/openai/v1"
INFERENCE_SCOPE = "inference"

# Not in Nuri's OpenAPI document: these routes follow OpenAI's API and answer its error body,
# not Nuri's ``{code, message, details}`` (which every route of /openapi.json promises).
router = APIRouter(prefix=PREFIX, tags=["openai"], include_in_schema=False)

Kind = Literal["chat", "completion"]


class InvalidRequest(NuriError):
    """A body the gateway does not serve; ``details["param"]`` names the field."""

    status_code = 400
    code = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, details={"param": param})


class ModelNotFound(NuriError):
    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"the model {model[:200]!r} does not exist or you do not have access to it",
            details={"param": "model"},
        )


# --- requests ------------------------------------------------------------------------------

# Accepted as long as they ask for nothing Nuri does not do (None is always fine).
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v == 1,
    "logprobs": lambda v: v is False,
    "echo": lambda v: v is False,
    "best_of": lambda v: v == 1,
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "logit_bias": lambda v: v == {},
    "response_format": lambda v: v == {"type": "text"},
    "parallel_tool_calls": lambda v: True,
    "user": lambda v: isinstance(v, str),
    "store": lambda v: v is False,
}
_SAMPLING = ("temperature", "top_p", "seed", "stop")
_FIELDS = {
    "chat": {"model", "messages", "max_tokens", "max_completion_tokens", "stream",
             "stream_options", *_SAMPLING, *_NEUTRAL},
    "completion": {"model", "prompt", "max_tokens", "stream", "stream_options", *_SAMPLING,
                   *_NEUTRAL},
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Parsed:
    kind: Kind
    model: str  # as the client wrote it
    endpoint: str
    adapter: str | None
    messages: list[dict[str, str]] | None
    prompt: str | None
    max_tokens: int | None
    sampling: dict[str, Any]
    stream: bool
    include_usage: bool


def parse_body(raw: bytes, kind: Kind) -> Parsed:
    """The request as the gateway serves it, or :class:`InvalidRequest`."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for key, value in body.items():
        if key not in _FIELDS[kind]:
            raise InvalidRequest(f"unrecognized request argument supplied: {key[:80]}", key[:80])
        if value is not None and key in _NEUTRAL and not _NEUTRAL[key](value):
            raise InvalidRequest(f"'{key}' is not supported by Nuri endpoints", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", "model")
    endpoint, _, adapter = model.partition(":")
    messages, prompt = None, None
    if kind == "chat":
        messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest("'prompt' must be a string (one prompt per request)", "prompt")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequest("'max_tokens' must be a positive integer", "max_tokens")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidRequest("'stream_options' may only hold 'include_usage'", "stream_options")
    include_usage = options.get("include_usage") or False
    if not isinstance(include_usage, bool) or (include_usage and not stream):
        raise InvalidRequest("'stream_options' needs 'stream': true", "stream_options")
    sampling = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    return Parsed(
        kind, model, endpoint, adapter or None, messages, prompt, max_tokens, sampling,
        stream, include_usage,
    )  # fmt: skip


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty list", "messages")
    out = []
    for n, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user",
                                                            "assistant"):  # fmt: skip
            raise InvalidRequest(
                f"messages[{n}]: role must be system, user or assistant", f"messages[{n}].role"
            )
        if set(m) - {"role", "content", "name"}:
            extra = sorted(set(m) - {"role", "content", "name"})[0][:40]
            raise InvalidRequest(f"messages[{n}].{extra} is not supported", f"messages[{n}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and
                       isinstance(p.get("text"), str) for p in content):  # fmt: skip
                raise InvalidRequest(
                    f"messages[{n}].content: only text parts are supported",
                    f"messages[{n}].content",
                )
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequest(
                f"messages[{n}].content must be a string", f"messages[{n}].content"
            )
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    return out


# --- endpoints and their knobs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeConf:
    max_context: int
    max_tokens_default: int
    system_prompt: str | None
    cold_start_timeout_s: float
    rpm: int | None
    tpm: int | None


def serve_conf(endpoint: Endpoint, settings: Settings) -> ServeConf:
    c = endpoint.config or {}
    return ServeConf(
        max_context=int(c.get("max_context") or 2048),
        max_tokens_default=int(c.get("max_tokens_default") or 256),
        system_prompt=c.get("system_prompt"),
        cold_start_timeout_s=float(c.get("cold_start_timeout_s") or 60),
        rpm=c.get("rpm") if c.get("rpm") is not None else settings.serve_rpm,
        tpm=c.get("tpm") if c.get("tpm") is not None else settings.serve_tpm,
    )


def find_endpoint(session: Session, member_id: str, parsed: Parsed) -> Endpoint:
    found = session.exec(
        select(Endpoint).where(
            Endpoint.member_id == member_id,
            Endpoint.name == parsed.endpoint,
            Endpoint.state == EndpointState.ACTIVE.value,
        )
    ).first()
    if found is None or (parsed.adapter is not None and parsed.adapter not in found.adapters):
        raise ModelNotFound(parsed.model)
    return found


def record_refusal(
    engine: Engine, caller: Principal, endpoint: Endpoint, error: NuriError, model: str
) -> None:
    """A refused request in the member's audit stream (its own transaction)."""
    with Session(engine) as session:
        audit_log.record(
            session,
            caller,
            "gateway.refuse",
            "endpoint",
            endpoint.id,
            stream=endpoint.member_id,
            now=utcnow(),
            outcome="denied",
            details={"code": error.code, "model": model[:200], "message": error.message[:500]},
        )
        session.commit()


# --- one request ---------------------------------------------------------------------------


@dataclass
class GatewayState:
    """What the gateway keeps in the process (``app.state.gateway``): caches only."""

    backend: routing.ReplicaBackend
    limits: metering.TokenRateLimits = field(default_factory=metering.TokenRateLimits)
    inflight: routing.InFlight = field(default_factory=routing.InFlight)


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None:
        settings: Settings = request.app.state.settings
        state = GatewayState(backend=routing.RayServeBackend(settings.ray_address))
        request.app.state.gateway = state
    return state


@dataclass
class Call:
    """One admitted request: its reservation, settled exactly once."""

    engine: Engine
    state: GatewayState
    principal: Principal
    endpoint: Endpoint
    conf: ServeConf
    parsed: Parsed
    max_tokens: int
    reservation: str
    reserved: int
    created: int = field(default_factory=lambda: int(time.time()))
    settled: bool = False

    @property
    def response_id(self) -> str:
        head = "chatcmpl" if self.parsed.kind == "chat" else "cmpl"
        return f"{head}-{self.reservation}"

    def replica_request(self) -> dict[str, Any]:
        """What the replica gets (``workers.serving.GenerationRequest``): never the body."""
        p = self.parsed
        text: dict[str, Any] = (
            {"messages": p.messages} if p.kind == "chat" else {"prompt": p.prompt}
        )
        return {**text, **p.sampling, "max_tokens": self.max_tokens}

    async def settle(self, prompt: int, completion: int, outcome: str, job_id: str | None) -> None:
        if self.settled:
            return
        self.settled = True
        unused = self.reserved - prompt - completion
        self.state.limits.refund(self.endpoint.id, self.conf.tpm, unused)

        def write() -> None:
            with Session(self.engine) as session:
                metering.settle(
                    session,
                    self.reservation,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    outcome=outcome,
                    job_id=job_id,
                    now=utcnow(),
                )

        # Shielded: this also runs while a request whose client left is being cancelled.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(write)


async def _admit(request: Request, kind: Kind) -> Call:
    """Steps 1-5 of the module: a request that may be routed, its reservation open."""
    raw = await request.body()  # RequestGuard authenticates the caller first
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings

    def caller() -> Principal:
        with Session(engine) as session:
            return principal_for(request, session, settings, request.headers.get("authorization"))

    principal = await run_in_threadpool(caller)
    principal.require_scope(INFERENCE_SCOPE)
    member_id = principal.require_member()
    parsed = parse_body(raw, kind)

    def lookup() -> Endpoint:
        with Session(engine, expire_on_commit=False) as session:
            return find_endpoint(session, member_id, parsed)

    endpoint = await run_in_threadpool(lookup)
    conf = serve_conf(endpoint, settings)
    max_tokens = min(parsed.max_tokens or conf.max_tokens_default, conf.max_context)
    bound = metering.prompt_token_bound(parsed.messages, parsed.prompt, conf.system_prompt)
    reserved = bound + max_tokens
    state = gateway_state(request)
    state.limits.admit(endpoint.id, conf.rpm, conf.tpm, reserved)
    touch_every = timedelta(seconds=settings.serve_touch_interval_s)

    def reserve() -> str:
        now = utcnow()
        with Session(engine) as session:
            rid = metering.reserve(
                session,
                member_id=member_id,
                endpoint_id=endpoint.id,
                tokens=reserved,
                now=now,
                token_id=principal.token_id,
                adapter=parsed.adapter,
            )
            metering.touch_endpoint(session, endpoint.id, now, touch_every)
            return rid

    try:
        rid = await run_in_threadpool(reserve)
    except metering.BudgetExhausted as exc:
        state.limits.refund(endpoint.id, conf.tpm, reserved)
        await run_in_threadpool(record_refusal, engine, principal, endpoint, exc, parsed.model)
        raise
    return Call(engine, state, principal, endpoint, conf, parsed, max_tokens, rid, reserved)


async def _route(
    request: Request, call: Call, run: Callable[[routing.Replica], Awaitable[Any]]
) -> tuple[routing.Replica, Any]:
    """Step 6: ``run`` on a replica (cold start, residency, one retry; see ``routing``)."""
    engine, endpoint = call.engine, call.endpoint

    def load() -> routing.Candidates:
        with Session(engine) as session:
            return routing.candidates(session, endpoint)

    def touch() -> None:
        with Session(engine) as session:
            metering.touch_endpoint(session, endpoint.id, utcnow())
        wake = getattr(request.app.state, "scheduler_wake", None)
        if wake is not None:
            wake()  # a cold start: the controller starts a replica on the next cycle, now

    settings: Settings = request.app.state.settings
    try:
        return await routing.route(
            lambda: run_in_threadpool(load),
            run,
            call.state.inflight,
            endpoint=endpoint,
            timeout_s=call.conf.cold_start_timeout_s,
            gone=request.is_disconnected,
            on_cold_start=lambda: run_in_threadpool(touch),
            poll_s=settings.serve_cold_start_poll_s,
        )
    except routing.ResidencyBlocked as exc:
        await run_in_threadpool(
            record_refusal, engine, call.principal, endpoint, exc, call.parsed.model
        )
        raise


# --- answers -------------------------------------------------------------------------------


@dataclass
class Opened:
    stream: routing.ReplicaStream
    deltas: Any  # the stream's async iterator
    first: dict[str, Any] | None


async def _events(
    call: Call, replica: routing.Replica, opened: Opened
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a stream; settles the reservation when it ends, however it ends."""
    prompt = completion = 0
    outcome = "disconnected"
    try:
        if call.parsed.kind == "chat":
            yield sse(chunk(call, None, None, role=True))
        delta = opened.first
        while delta is not None:
            prompt = int(delta.get("prompt_tokens", prompt))
            completion = int(delta.get("completion_tokens", completion))
            finish = delta.get("finish_reason")
            if delta.get("text"):
                yield sse(chunk(call, str(delta["text"]), None))
            if finish is not None:
                outcome = str(finish)
                break
            try:
                delta = await opened.deltas.__anext__()
            except StopAsyncIteration:
                delta = None
        else:
            outcome = "stop"  # the replica ended without saying why
        yield sse(chunk(call, None, outcome if outcome in ("stop", "length") else "stop"))
        if call.parsed.include_usage:
            yield sse(usage_chunk(call, prompt, completion))
        yield DONE
    except routing.ReplicaFailed as exc:
        outcome = "error"
        yield error_event(f"the replica failed while answering: {exc}"[:500], "replica_failed")
    except routing.ReplicaRefused as exc:
        outcome = "error"
        yield error_event(exc.message, exc.code)
    finally:
        with anyio.CancelScope(shield=True):
            await opened.stream.close()
        call.state.inflight.release(replica)
        await call.settle(prompt, completion, outcome, replica.job_id)


async def _answer(request: Request, kind: Kind) -> Response:
    call = await _admit(request, kind)
    backend = call.state.backend
    body, adapter = call.replica_request(), call.parsed.adapter
    try:
        if not call.parsed.stream:
            replica, result = await _route(
                request, call, lambda r: backend.complete(r, body, adapter)
            )
            call.state.inflight.release(replica)
            await call.settle(
                int(result.get("prompt_tokens", 0)),
                int(result.get("completion_tokens", 0)),
                str(result.get("finish_reason") or "stop"),
                replica.job_id,
            )
            return JSONResponse(completion_body(call, result))

        async def open_(replica: routing.Replica) -> Opened:
            stream = await backend.stream(replica, body, adapter)
            deltas = stream.__aiter__()
            try:
                return Opened(stream, deltas, await deltas.__anext__())
            except StopAsyncIteration:
                return Opened(stream, deltas, None)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.close()
                raise

        replica, opened = await _route(request, call, open_)
    except routing.ClientGone:
        await call.settle(0, 0, "disconnected", None)
        return Response(status_code=499)
    except BaseException:
        await call.settle(0, 0, "error", None)
        raise
    return EventStream(_events(call, replica, opened))


# --- routes --------------------------------------------------------------------------------


@router.get("/models", operation_id="openaiListModels")
def list_models(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's member's active endpoints (and ``<endpoint>:<adapter>`` per adapter)."""
    caller.require_scope(INFERENCE_SCOPE)
    member_id = caller.require_member()
    rows = session.exec(
        select(Endpoint)
        .where(Endpoint.member_id == member_id, Endpoint.state == EndpointState.ACTIVE.value)
        .order_by(col(Endpoint.name))
    ).all()
    data = []
    for ep in rows:
        created = int(ep.created_at.timestamp())
        owner = ep.member_id
        data.append({"id": ep.name, "object": "model", "created": created, "owned_by": owner})
        for adapter in sorted(ep.adapters):
            data.append(
                {
                    "id": f"{ep.name}:{adapter}",
                    "object": "model",
                    "created": created,
                    "owned_by": owner,
                }
            )
    return {"object": "list", "data": data}


@router.post("/chat/completions", operation_id="openaiCreateChatCompletion")
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions (``stream: true`` for server-sent events)."""
    return await _answer(request, "chat")


@router.post("/completions", operation_id="openaiCreateCompletion")
async def completions(request: Request) -> Response:
    """OpenAI's (legacy) text completions (``stream: true`` for server-sent events)."""
    return await _answer(request, "completion")
