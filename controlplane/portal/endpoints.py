"""Portal pages for online serving (``/portal/endpoints``): the member's endpoints, where
their replicas run, a create form, deletion and a small playground.

Every page goes through ``controlplane.serving.endpoints`` exactly as ``/v1/endpoints`` does
(member scoping: another member's endpoint is a 404 page like a missing one; validation and
its messages; audit). The playground sends one chat completion through the gateway's own
handler (``controlplane.serving.gateway``) as the session's principal, so the ``inference``
scope, rate limits, the token ledger, residency on routing and the cold-start bound all
apply as for an OpenAI client; the page waits at most ``PLAYGROUND_WAIT_S``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select
from starlette.types import Message

from controlplane.api.deps import SessionDep
from controlplane.api.limits import PRINCIPAL_KEY
from controlplane.auth import Principal
from controlplane.db.models import Pool, PriorityClass
from controlplane.db.types import utcnow
from controlplane.errors import NuriError
from controlplane.numerals import finite_float
from controlplane.portal import i18n, notices, routes, sessions, views
from controlplane.portal.routes import (
    FormDep,
    Visit,
    VisitDep,
    member_names,
    page,
    see_other,
)
from controlplane.serving import endpoints, gateway, schemas

router = APIRouter(prefix="/portal", include_in_schema=False)

# The playground answers within this bound whatever the endpoint's cold-start bound is: a
# page must not hang while a replica starts from zero (the gateway's 503 comes first when the
# endpoint's own bound is shorter).
PLAYGROUND_WAIT_S = 10.0
PROMPT_MAX_CHARS = 4000


@dataclass(slots=True)
class EndpointForm:
    """The create form's fields as the user typed them (re-shown after an error)."""

    name: str = ""
    model: str = "axk1-tiny"
    min_replicas: str = "1"
    max_replicas: str = "1"
    gpus_per_replica: str = "1"
    allowed_pools: list[str] = field(default_factory=list)
    priority_class: str = "production-inference"
    max_context: str = "2048"
    max_tokens_default: str = "256"
    idle_s: str = "300"

    TEXT = (
        "name",
        "model",
        "min_replicas",
        "max_replicas",
        "gpus_per_replica",
        "priority_class",
        "max_context",
        "max_tokens_default",
        "idle_s",
    )

    @classmethod
    def parse(cls, pairs: list[tuple[str, str]]) -> EndpointForm:
        form = cls(allowed_pools=[])
        for key, value in pairs:
            if key == "allowed_pools":
                form.allowed_pools.append(value)
            elif key in cls.TEXT:
                setattr(form, key, value.strip())
        return form

    def to_request(self) -> dict[str, Any]:
        """The REST body this form stands for (``EndpointCreate``); an empty field takes the
        API's default, and numbers that do not parse are passed on as text, so validation
        reports them exactly as it would for the API."""
        body: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "allowed_pools": self.allowed_pools,
            "priority_class": self.priority_class,
        }
        for key in ("min_replicas", "max_replicas", "gpus_per_replica"):
            if getattr(self, key):
                body[key] = views.number(getattr(self, key))
        config: dict[str, Any] = {}
        for key in ("max_context", "max_tokens_default"):
            if getattr(self, key):
                config[key] = views.number(getattr(self, key))
        if self.idle_s:
            seconds = finite_float(self.idle_s)
            config["idle_s"] = self.idle_s if seconds is None else seconds
        if config:
            body["config"] = config
        return body


@dataclass(frozen=True, slots=True)
class Played:
    """What the playground shows: the answer and its usage, or the gateway's refusal."""

    prompt: str
    max_tokens: str
    model: str
    answer: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    status: int = 200
    code: str | None = None
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _wake(request: Request) -> None:
    wake = getattr(request.app.state, "scheduler_wake", None)
    if wake is not None:
        wake()  # the controller acts on the next cycle: start it now


# -- list and create -------------------------------------------------------------------------


@router.get("/endpoints")
def endpoint_list(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    rows, _ = endpoints.list_endpoints(session, visit.principal, 500, None)
    shown = endpoints.public(session, rows)
    return page(
        request,
        "endpoints.html",
        visit=visit,
        endpoints=shown,
        members=member_names(session, {e.member_id for e in shown}),
    )


@router.get("/endpoints/new")
def create_form(request: Request, session: SessionDep, visit: VisitDep) -> HTMLResponse:
    return _create_page(request, session, visit, EndpointForm(), None, 200)


@router.post("/endpoints/new")
def create(request: Request, session: SessionDep, visit: VisitDep, form: FormDep) -> Response:
    sessions.check_csrf(visit.secret, routes.field(form, "csrf"))
    typed = EndpointForm.parse(form)
    try:
        body = schemas.EndpointCreate.model_validate(typed.to_request())
        row = endpoints.create(session, visit.principal, body, utcnow())
    except (ValidationError, NuriError) as exc:
        session.rollback()
        problems, status = views.problems_of(exc), views.status_of(exc)
        refused = views.refusal_of(exc)
        return _create_page(request, session, visit, typed, problems, status, refused)
    _wake(request)
    return see_other(f"/portal/endpoints/{row.name}")


def _create_page(
    request: Request,
    session: Session,
    visit: Visit,
    form: EndpointForm,
    errors: list[str] | None,
    status: int,
    refused: list[views.PoolVerdict] | None = None,
) -> HTMLResponse:
    return page(
        request,
        "endpoint_new.html",
        status,
        visit=visit,
        form=form,
        errors=errors,
        refused=refused,
        pools=session.exec(select(Pool).order_by(col(Pool.name))).all(),
        classes=session.exec(select(PriorityClass).order_by(col(PriorityClass.value))).all(),
    )


# -- one endpoint ----------------------------------------------------------------------------


@router.get("/endpoints/{name}")
def endpoint_page(
    request: Request, session: SessionDep, visit: VisitDep, name: str
) -> HTMLResponse:
    return _detail_page(request, session, visit, name, None)


def _detail_page(
    request: Request, session: Session, visit: Visit, name: str, played: Played | None
) -> HTMLResponse:
    shown = endpoints.public(session, [endpoints.get(session, visit.principal, name)])[0]
    return page(
        request,
        "endpoint.html",
        played.status if played is not None else 200,
        visit=visit,
        endpoint=shown,
        member=member_names(session, {shown.member_id}).get(shown.member_id, shown.member_id),
        gateway_url=str(request.base_url).rstrip("/") + gateway.PREFIX,
        plays=visit.principal.member_id is not None
        and gateway.INFERENCE_SCOPE in visit.principal.scopes,
        models=[shown.name] + [f"{shown.name}:{a}" for a in sorted(shown.adapters)],
        played=played,
        wait_s=PLAYGROUND_WAIT_S,
    )


@router.post("/endpoints/{name}/delete")
def delete(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep, name: str
) -> Response:
    """Asks first (a confirmation page, nothing changes), then deletes as the API does."""
    sessions.check_csrf(visit.secret, routes.field(form, "csrf"))
    if not notices.confirmed(visit.secret, "delete", name, routes.field(form, "confirm")):
        shown = endpoints.get(session, visit.principal, name)  # another member's: a 404
        visit.principal.require_write()  # an auditor is refused here, not after confirming
        said = i18n.catalog_for(request).gettext
        return routes.confirmation(
            request,
            visit,
            "delete",
            name,
            question=said("Delete endpoint %(name)s?") % {"name": shown.name},
            consequence=said(
                "Its replicas stop and its GPUs go back to the pool; requests for it are "
                "refused from now on. A deleted endpoint cannot be restored; create it again "
                "instead."
            ),
            button=said("Yes, delete the endpoint"),
            back=f"/portal/endpoints/{quote(name)}",
        )
    endpoints.delete(session, visit.principal, name, utcnow())
    _wake(request)
    return routes.done("/portal/endpoints", visit, "endpoint_deleted")


@router.post("/endpoints/{name}/playground")
def playground(
    request: Request, session: SessionDep, visit: VisitDep, form: FormDep, name: str
) -> HTMLResponse:
    sessions.check_csrf(visit.secret, routes.field(form, "csrf"))
    endpoints.get(session, visit.principal, name)  # another member's: the 404 page
    session.rollback()  # no transaction stays open while the gateway waits for a replica
    prompt = (routes.field(form, "prompt") or "")[:PROMPT_MAX_CHARS]
    max_tokens = (routes.field(form, "max_tokens") or "").strip()
    model = routes.field(form, "model") or name
    if model != name and not model.startswith(f"{name}:"):
        model = name  # the playground only speaks to this endpoint (or its adapters)
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if max_tokens:
        body["max_tokens"] = views.number(max_tokens)
    played = anyio.from_thread.run(ask_gateway, request, visit.principal, body, PLAYGROUND_WAIT_S)
    shown = Played(prompt, max_tokens, model, **played)
    return _detail_page(request, session, visit, name, shown)


async def ask_gateway(
    request: Request, principal: Principal, body: dict[str, Any], wait_s: float
) -> dict[str, Any]:
    """One chat completion through the gateway's own handler, as ``principal`` (the portal
    session's token): what ``RequestGuard`` would have authenticated is put in the request's
    state, the rest (scope, limits, ledger, routing) is the gateway's. Returns ``Played``'s
    fields: the answer and usage, or the refusal's status, code and message."""
    raw = json.dumps(body).encode()
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": request.url.scheme,
        "path": f"{gateway.PREFIX}/chat/completions",
        "raw_path": f"{gateway.PREFIX}/chat/completions".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": request.scope.get("client"),
        "server": request.scope.get("server"),
        "app": request.app,
        "state": {PRINCIPAL_KEY: principal},
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await request.receive()  # the browser leaving ends the wait

    try:
        with anyio.fail_after(wait_s):
            response = await gateway.chat_completions(Request(scope, receive))
    except NuriError as exc:
        return {
            "status": exc.status_code,
            "code": exc.code,
            "message": exc.message,
            "details": dict(exc.details),
        }
    except TimeoutError:
        return {
            "status": 504,
            "code": "playground_timeout",
            "message": f"no answer within {wait_s:g} s: no replica is ready yet (it may be "
            "starting from zero). Try again in a minute.",
        }
    if response.status_code != 200:  # the client left (499): nobody reads this page
        return {"status": response.status_code, "code": "no_answer", "message": "no answer"}
    answer = json.loads(bytes(response.body))
    choice = answer["choices"][0]
    return {
        "answer": choice["message"]["content"],
        "finish_reason": choice.get("finish_reason"),
        "usage": answer.get("usage"),
    }
