"""No existence oracles: another member's object looks exactly like a missing one.

For every route that takes a reference (an id, a name or an e-mail, in the path, the query,
a header or the body), a reference to something the caller may not see (another member's
user, dataset, job, ...; a platform admin or auditor; a colleague a member user does not
see) and a reference to nothing at all must get the same answer: the same status and,
once the reference string itself is replaced, byte-identical bodies (code, message
template, details). Nothing of the hidden object may appear in the answer either.

Runs on SQLite and on the real PostgreSQL. ``test_every_reference_is_in_the_table`` fails
when a /v1 route with a path parameter (or a query parameter, header or body field that
names an object) appears without a case here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.db.types import new_id
from controlplane.services import tenancy
from controlplane.services.artifact_content import make_ref, ref_key
from controlplane.services.bootstrap import ADMIN_EMAIL
from tests.conftest import World, bearer, ok

# --- what the caller may not see ----------------------------------------------------------


@dataclass
class Hidden:
    """References to objects caller A may not see, and what must never leak of them."""

    world: World
    b_model: dict[str, Any]
    auditor: dict[str, Any]
    root_user: dict[str, Any]
    a_admin_token_id: str
    policy_version: int
    # Strings of the hidden objects that no answer may contain (beyond the reference given).
    secrets: set[str] = field(default_factory=set)

    def users(self, who: str) -> list[str]:
        b = self.world.b
        refs = [b.user["id"], b.admin["id"], self.auditor["id"], self.root_user["id"]]
        if who == "user":  # a member user sees only itself, not its member's admin
            refs.append(self.world.a.admin["id"])
        return refs

    def emails(self, who: str) -> list[str]:
        b = self.world.b
        refs = [
            b.user["email"],
            b.admin["email"],
            b.user["email"].upper(),
            self.auditor["email"],
            ADMIN_EMAIL,
        ]
        if who == "user":
            refs.append(self.world.a.admin["email"])
        return refs

    def tokens(self, who: str) -> list[str]:
        refs = [self.world.b.user_token_id]
        if who == "user":
            refs.append(self.a_admin_token_id)
        return refs

    def members(self) -> list[str]:
        b = self.world.b
        return [b.member["id"], b.member["name"]]

    def datasets(self) -> list[str]:
        b = self.world.b
        return [b.dataset["id"], b.dataset["name"], self.b_model["id"], self.b_model["name"]]

    def models(self) -> list[str]:
        b = self.world.b
        return [b.artifact["id"], self.b_model["id"], self.b_model["name"]]


def hidden_objects(w: World) -> Hidden:
    b = w.b
    b_model = ok(
        w.client.post(
            "/v1/datasets",
            headers=bearer(b.user_token),
            json={
                "name": "beta-weights",
                "kind": "model",
                "uri": "s3://beta/weights",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            },
        ),
        201,
    )
    users = ok(w.client.get("/v1/users", headers=w.root, params={"limit": 100}))["items"]
    auditor = next(u for u in users if u["role"] == "auditor")
    root_user = ok(w.client.get("/v1/users/me", headers=w.root))
    a_tokens = ok(w.client.get("/v1/tokens", headers=bearer(w.a.admin_token)))["items"]
    a_admin_token_id = next(t["id"] for t in a_tokens if t["user_id"] == w.a.admin["id"])
    from policies.policy_set import shipped_sources

    version = ok(
        w.client.post(
            "/v1/policies/versions",
            headers=w.root,
            json={"policies": "\n".join(shipped_sources()[0].values()), "note": "not active"},
        ),
        201,
    )
    secrets = {
        b.member["id"],
        b.member["name"],
        b.user["id"],
        b.user["email"],
        b.admin["id"],
        b.admin["email"],
        b.user_token_id,
        b.dataset["id"],
        b.dataset["name"],
        b.dataset["uri"],
        b_model["id"],
        b_model["name"],
        b.job["id"],
        b.artifact["id"],
        b.quota["id"],
        b.budget["id"],
        auditor["id"],
        auditor["email"],
        root_user["id"],
        ADMIN_EMAIL,
    }
    return Hidden(w, b_model, auditor, root_user, a_admin_token_id, version["id"], secrets)


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    anonymous: bool = False  # sent without a bearer token (the content link is its own key)


@dataclass(frozen=True)
class Case:
    method: str
    route: str  # the OpenAPI path template
    fields: tuple[str, ...]  # which reference inputs of the route this case covers
    request: Callable[[World, str], Req]
    hidden: Callable[[Hidden, str], list[str]]  # (objects, who) -> refs the caller cannot see
    missing: Callable[[], list[str]]  # refs to nothing at all
    listing: bool = False  # a filter the route ignores for the caller: 200 either way


def _ids(prefix: str, *names: str) -> Callable[[], list[str]]:
    return lambda: [new_id(prefix), *names]


def _job_body(w: World, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "lora",
        "model": "axk1-tiny",
        "gpus": 8,
        "inputs": [w.a.dataset["id"]],
        **fields,
    }


def _content(w: World, art_id: str) -> Req:
    """A download link for ``art_id`` minted (validly signed) for A's user and token."""
    key = ref_key(w.client.app.state.audit_key)  # type: ignore[attr-defined]
    soon = datetime.now(UTC) + timedelta(minutes=5)
    link = make_ref(key, art_id, w.a.user["id"], w.a.user_token_id, soon)
    return Req(f"/v1/artifacts/{art_id}/content", params={"ref": link}, anonymous=True)


def b_endpoint(w: World) -> str:
    """Member B's endpoint (created on first use), by name."""
    name = "beta-secret-chat"
    if w.client.get(f"/v1/endpoints/{name}", headers=bearer(w.b.user_token)).status_code == 404:
        body = {"name": name, "model": "axk1-tiny"}
        ok(w.client.post("/v1/endpoints", headers=bearer(w.b.user_token), json=body), 201)
    return name


def _path(template: str) -> Callable[[World, str], Req]:
    return lambda w, ref: Req(template.format(ref=ref))


def _query(path: str, name: str) -> Callable[[World, str], Req]:
    return lambda w, ref: Req(path, params={name: ref})


def _path_json(template: str, body: dict[str, Any]) -> Callable[[World, str], Req]:
    return lambda w, ref: Req(template.format(ref=ref), json=body)


MEMBER_FILTER_MISSING = _ids("mem", "gamma")

CASES: list[Case] = [
    # members
    Case(
        "GET",
        "/v1/members/{ref}",
        ("ref",),
        _path("/v1/members/{ref}"),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "PATCH",
        "/v1/members/{ref}",
        ("ref",),
        _path_json("/v1/members/{ref}", {"display_name": "pwned"}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    # users
    Case(
        "GET",
        "/v1/users/{user_id}",
        ("user_id",),
        _path("/v1/users/{ref}"),
        lambda h, who: h.users(who),
        _ids("usr"),
    ),
    Case(
        "PATCH",
        "/v1/users/{user_id}",
        ("user_id",),
        _path_json("/v1/users/{ref}", {"disabled": True}),
        lambda h, who: h.users(who),
        _ids("usr"),
    ),
    Case(
        "PATCH",
        "/v1/users/{user_id}",
        ("user_id",),
        _path_json("/v1/users/{ref}", {"name": "pwned", "role": "member_admin"}),
        lambda h, who: h.users(who),
        _ids("usr"),
    ),
    Case(
        "POST",
        "/v1/users",
        ("member",),
        lambda w, ref: Req(
            "/v1/users", json={"email": "new@alpha.example", "name": "New", "member": ref}
        ),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "GET",
        "/v1/users",
        ("member",),
        lambda w, ref: Req("/v1/users", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    # tokens
    Case(
        "POST",
        "/v1/tokens",
        ("user_id",),
        lambda w, ref: Req("/v1/tokens", json={"name": "steal", "user_id": ref}),
        lambda h, who: h.users(who),
        _ids("usr"),
    ),
    Case(
        "POST",
        "/v1/tokens",
        ("user_id",),
        lambda w, ref: Req("/v1/tokens", json={"name": "steal", "user_id": ref}),
        lambda h, who: h.emails(who),
        lambda: ["nobody@gamma.example", "NOBODY@GAMMA.example"],
    ),
    Case(
        "GET",
        "/v1/tokens/{token_id}",
        ("token_id",),
        _path("/v1/tokens/{ref}"),
        lambda h, who: h.tokens(who),
        _ids("tok"),
    ),
    Case(
        "DELETE",
        "/v1/tokens/{token_id}",
        ("token_id",),
        _path("/v1/tokens/{ref}"),
        lambda h, who: h.tokens(who),
        _ids("tok"),
    ),
    # quotas and budgets
    Case(
        "GET",
        "/v1/quotas/{quota_id}",
        ("quota_id",),
        _path("/v1/quotas/{ref}"),
        lambda h, who: [h.world.b.quota["id"]],
        _ids("quota"),
    ),
    Case(
        "PATCH",
        "/v1/quotas/{quota_id}",
        ("quota_id",),
        _path_json("/v1/quotas/{ref}", {"nominal_gpus": 0}),
        lambda h, who: [h.world.b.quota["id"]],
        _ids("quota"),
    ),
    Case(
        "POST",
        "/v1/quotas",
        ("member",),
        lambda w, ref: Req(
            "/v1/quotas", json={"member": ref, "pool": "kr-test-h200", "nominal_gpus": 1}
        ),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "GET",
        "/v1/quotas",
        ("member",),
        lambda w, ref: Req("/v1/quotas", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "GET",
        "/v1/budgets/{budget_id}",
        ("budget_id",),
        _path("/v1/budgets/{ref}"),
        lambda h, who: [h.world.b.budget["id"]],
        _ids("bud"),
    ),
    Case(
        "PATCH",
        "/v1/budgets/{budget_id}",
        ("budget_id",),
        _path_json("/v1/budgets/{ref}", {"gpu_hours": 0}),
        lambda h, who: [h.world.b.budget["id"]],
        _ids("bud"),
    ),
    Case(
        "POST",
        "/v1/budgets",
        ("member",),
        lambda w, ref: Req(
            "/v1/budgets", json={"member": ref, "period": "2027-Q1", "gpu_hours": 1}
        ),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "GET",
        "/v1/budgets",
        ("member",),
        lambda w, ref: Req("/v1/budgets", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    Case(
        "GET",
        "/v1/usage",
        ("member",),
        lambda w, ref: Req("/v1/usage", params={"period": "2026-Q4", "member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    # datasets (by id or name)
    Case(
        "GET",
        "/v1/datasets/{ref}",
        ("ref",),
        _path("/v1/datasets/{ref}"),
        lambda h, who: h.datasets(),
        _ids("ds", "gamma-corpus"),
    ),
    Case(
        "PATCH",
        "/v1/datasets/{ref}",
        ("ref",),
        _path_json("/v1/datasets/{ref}", {"description": "pwned"}),
        lambda h, who: h.datasets(),
        _ids("ds", "gamma-corpus"),
    ),
    Case(
        "GET",
        "/v1/datasets",
        ("member",),
        lambda w, ref: Req("/v1/datasets", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
    ),
    # jobs
    Case(
        "GET",
        "/v1/jobs/{job_id}",
        ("job_id",),
        _path("/v1/jobs/{ref}"),
        lambda h, who: [h.world.b.job["id"]],
        _ids("job"),
    ),
    Case(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        ("job_id",),
        _path_json("/v1/jobs/{ref}/cancel", {"reason": "pwned"}),
        lambda h, who: [h.world.b.job["id"]],
        _ids("job"),
    ),
    Case(
        "GET",
        "/v1/jobs/{job_id}/events",
        ("job_id",),
        _path("/v1/jobs/{ref}/events"),
        lambda h, who: [h.world.b.job["id"]],
        _ids("job"),
    ),
    Case(
        "GET",
        "/v1/jobs/{job_id}/logs",
        ("job_id",),
        _path("/v1/jobs/{ref}/logs"),
        lambda h, who: [h.world.b.job["id"]],
        _ids("job"),
    ),
    Case(
        "GET",
        "/v1/jobs/{job_id}/metrics",
        ("job_id",),
        _path("/v1/jobs/{ref}/metrics"),
        lambda h, who: [h.world.b.job["id"]],
        _ids("job"),
    ),
    Case(
        "GET",
        "/v1/jobs",
        ("member",),
        lambda w, ref: Req("/v1/jobs", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
        listing=True,  # a member's listing ignores the filter: its own jobs either way
    ),
    Case(
        "GET",
        "/v1/jobs",
        ("submitter",),
        lambda w, ref: Req("/v1/jobs", params={"submitter": ref}),
        lambda h, who: h.users(who),
        _ids("usr"),
        listing=True,  # nobody of the caller's member: an empty page either way
    ),
    # job submission naming another member's dataset, model or artifact
    Case(
        "POST",
        "/v1/jobs",
        ("inputs",),
        lambda w, ref: Req("/v1/jobs", json=_job_body(w, inputs=[w.a.dataset["id"], ref])),
        lambda h, who: [*h.datasets(), h.world.b.artifact["id"]],
        _ids("ds", "gamma-corpus"),
    ),
    Case(
        "POST",
        "/v1/jobs",
        ("model",),
        lambda w, ref: Req("/v1/jobs", json=_job_body(w, model=ref)),
        lambda h, who: h.models(),
        lambda: [new_id("art"), new_id("ds"), "gamma-weights"],
    ),
    Case(
        "POST",
        "/v1/jobs",
        ("teacher",),
        lambda w, ref: Req(
            "/v1/jobs", json=_job_body(w, kind="distill", model="student-tiny", teacher=ref)
        ),
        lambda h, who: h.models(),
        lambda: [new_id("art"), new_id("ds"), "gamma-weights"],
    ),
    # endpoints: by name within the caller's member; another member's is a missing one
    Case(
        "GET",
        "/v1/endpoints/{name}",
        ("name",),
        _path("/v1/endpoints/{ref}"),
        lambda h, who: [b_endpoint(h.world)],
        lambda: ["gamma-chat"],
    ),
    Case(
        "PATCH",
        "/v1/endpoints/{name}",
        ("name",),
        _path_json("/v1/endpoints/{ref}", {"max_replicas": 9}),
        lambda h, who: [b_endpoint(h.world)],
        lambda: ["gamma-chat"],
    ),
    Case(
        "DELETE",
        "/v1/endpoints/{name}",
        ("name",),
        _path("/v1/endpoints/{ref}"),
        lambda h, who: [b_endpoint(h.world)],
        lambda: ["gamma-chat"],
    ),
    Case(
        "GET",
        "/v1/endpoints",
        ("member",),
        lambda w, ref: Req("/v1/endpoints", params={"member": ref}),
        lambda h, who: h.members(),
        MEMBER_FILTER_MISSING,
        listing=True,  # a member's listing ignores the filter: its own endpoints either way
    ),
    Case(
        "POST",
        "/v1/endpoints",
        ("model",),
        lambda w, ref: Req("/v1/endpoints", json={"name": "mine", "model": ref}),
        lambda h, who: h.models(),
        lambda: [new_id("art"), new_id("ds"), "gamma-weights"],
    ),
    Case(
        "POST",
        "/v1/endpoints",
        ("adapters",),
        lambda w, ref: Req(
            "/v1/endpoints", json={"name": "mine", "model": "axk1-tiny", "adapters": {"x": ref}}
        ),
        lambda h, who: [h.world.b.artifact["id"]],
        _ids("art"),
    ),
    # artifacts
    Case(
        "GET",
        "/v1/artifacts/{art_id}",
        ("art_id",),
        _path("/v1/artifacts/{ref}"),
        lambda h, who: [h.world.b.artifact["id"]],
        _ids("art"),
    ),
    Case(
        "POST",
        "/v1/artifacts/{art_id}/export",
        ("art_id",),
        _path_json("/v1/artifacts/{ref}/export", {"region": "kr-seoul", "jurisdiction": "KR"}),
        lambda h, who: [h.world.b.artifact["id"]],
        _ids("art"),
    ),
    Case(
        "GET",
        "/v1/artifacts/{art_id}/download",
        ("art_id",),
        _path("/v1/artifacts/{ref}/download"),
        lambda h, who: [h.world.b.artifact["id"]],
        _ids("art"),
    ),
    Case(
        "GET",
        "/v1/artifacts/{art_id}/content",
        ("art_id", "ref"),
        _content,
        lambda h, who: [h.world.b.artifact["id"]],
        _ids("art"),
    ),
    # policies: dry runs naming another member's model or inputs
    Case(
        "POST",
        "/v1/policies/where",
        ("inputs",),
        lambda w, ref: Req("/v1/policies/where", json={"model": "axk1", "inputs": [ref]}),
        lambda h, who: [*h.datasets(), h.world.b.artifact["id"]],
        _ids("ds", "gamma-corpus"),
    ),
    Case(
        "POST",
        "/v1/policies/where",
        ("model",),
        lambda w, ref: Req(
            "/v1/policies/where", json={"model": ref, "inputs": [w.a.dataset["id"]]}
        ),
        lambda h, who: h.models(),
        lambda: [new_id("art"), new_id("ds"), "gamma-weights"],
    ),
    Case(
        "POST",
        "/v1/plan",
        ("model",),
        lambda w, ref: Req(
            "/v1/plan",
            json={"model": ref, "kind": "lora", "gpu_memory_gib": 80, "gpus_per_node": 8},
        ),
        lambda h, who: h.models(),
        lambda: [new_id("art"), new_id("ds"), "gamma-weights"],
    ),
    # platform objects a member may not change: the refusal is the same whether they exist
    Case(
        "POST",
        "/v1/policies/versions/{version_id}/activate",
        ("version_id",),
        _path("/v1/policies/versions/{ref}/activate"),
        lambda h, who: [str(h.policy_version)],
        lambda: ["987654"],
    ),
    Case(
        "PATCH",
        "/v1/pools/{ref}",
        ("ref",),
        _path_json("/v1/pools/{ref}", {"site": "pwned"}),
        lambda h, who: ["kr-test-h200", h.world.pool["id"]],
        lambda: ["no-such-pool", new_id("pool")],
    ),
    Case(
        "PATCH",
        "/v1/nodes/{ref}",
        ("ref",),
        _path_json("/v1/nodes/{ref}", {"status": "down"}),
        lambda h, who: ["kr-test-h200-000"],
        lambda: ["no-such-node", new_id("node")],
    ),
    # audit streams
    *[
        Case(
            "GET",
            f"/v1/audit/{name}",
            ("stream",),
            _query(f"/v1/audit/{name}", "stream"),
            lambda h, who: [h.world.b.member["id"], "platform"],
            _ids("mem"),
        )
        for name in ("events", "verify", "export")
    ],
]

# Reference inputs that name shared objects every member may read: nothing to hide.
PUBLIC = {
    ("GET", "/v1/pools/{ref}", "ref"): "pools are shared infrastructure every member reads",
    ("GET", "/v1/nodes/{ref}", "ref"): "nodes are shared infrastructure every member reads",
}

# Reference inputs with a test of their own below (the answers cannot be compared with the
# answer for a missing reference: a free e-mail or a fresh key succeeds).
ELSEWHERE = {
    ("POST", "/v1/users", "email"): "test_taken_emails_name_nobody",
    ("POST", "/v1/jobs", "idempotency-key"): "test_idempotency_keys_are_per_member",
}

# Names of query parameters, headers and body fields that name an object.
REFERENCE_FIELDS = {
    "member",
    "user_id",
    "email",
    "inputs",
    "model",
    "teacher",
    "adapters",
    "submitter",
    "stream",
    "ref",
    "idempotency-key",
}


def reference_inputs(client: TestClient) -> set[tuple[str, str, str]]:
    """(method, route, input) of every /v1 path parameter, and of every query parameter,
    header and JSON body field whose name is in REFERENCE_FIELDS."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    found: set[tuple[str, str, str]] = set()
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, op in ops.items():
            for param in op.get("parameters", []):
                name = param["name"].lower()
                if param["in"] == "path" or name in REFERENCE_FIELDS:
                    found.add((method.upper(), path, name))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            props = schemas[ref.rsplit("/", 1)[-1]].get("properties", {}) if ref else {}
            for name in props:
                if name in REFERENCE_FIELDS:
                    found.add((method.upper(), path, name))
    return found


def test_every_reference_is_in_the_table(sqlite_client: TestClient) -> None:
    found = reference_inputs(sqlite_client)
    assert ("GET", "/v1/jobs/{job_id}", "job_id") in found  # the scan works
    in_table = {(c.method, c.route, f) for c in CASES for f in c.fields}
    covered = in_table | set(PUBLIC) | set(ELSEWHERE)
    assert found - covered == set(), "routes taking a reference need an existence-oracle case"
    spec_routes = {
        (m.upper(), p)
        for p, ops in sqlite_client.get("/openapi.json").json()["paths"].items()
        for m in ops
    }
    stale = {(m, p, f) for m, p, f in covered if (m, p) not in spec_routes}
    assert stale == set(), "stale entries in the existence-oracle table"


# --- the comparison -----------------------------------------------------------------------


def _send(w: World, token: str, method: str, req: Req) -> Any:
    headers = {} if req.anonymous else bearer(token)
    return w.client.request(method, req.path, headers=headers, params=req.params, json=req.json)


def _answer(resp: Any, ref: str) -> tuple[int, str]:
    """Status and body with the reference itself replaced: what must not differ."""
    return resp.status_code, resp.text.replace(ref, "<ref>")


@pytest.mark.parametrize("who", ["user", "admin"])
def test_hidden_objects_look_missing_on_every_route(world: World, who: str) -> None:
    hidden = hidden_objects(world)
    token = world.a.user_token if who == "user" else world.a.admin_token
    problems: list[str] = []
    for case in CASES:
        label = f"{case.method} {case.route} {'/'.join(case.fields)}"
        missing = [
            (ref, _answer(_send(world, token, case.method, case.request(world, ref)), ref))
            for ref in case.missing()
        ]
        expected = missing[0][1]
        if not case.listing and expected[0] < 400:
            problems.append(f"{label}: a missing reference answered {expected}")
        for ref, got in missing[1:]:
            if got != expected:
                problems.append(f"{label}: missing {ref!r} answered {got}, not {expected}")
        for ref in case.hidden(hidden, who):
            got = _answer(_send(world, token, case.method, case.request(world, ref)), ref)
            if got != expected:
                problems.append(f"{label}: hidden {ref!r} answered {got}, missing {expected}")
            leaked = sorted(s for s in hidden.secrets if s != ref and s in got[1])
            if leaked:
                problems.append(f"{label}: hidden {ref!r}: the answer names {leaked}")
    assert not problems, "\n".join(problems)
    # None of those requests changed anything of B's.
    b = world.b
    assert (
        ok(world.client.get(f"/v1/jobs/{b.job['id']}", headers=bearer(b.user_token)))["status"]
        == "QUEUED"
    )
    ds = ok(world.client.get(f"/v1/datasets/{b.dataset['id']}", headers=bearer(b.user_token)))
    assert ds["description"] == b.dataset["description"] and ds["version"] == 1
    user = ok(world.client.get(f"/v1/users/{b.user['id']}", headers=bearer(b.admin_token)))
    assert user["disabled"] is False and user["name"] == b.user["name"]
    tok = ok(world.client.get(f"/v1/tokens/{b.user_token_id}", headers=bearer(b.user_token)))
    assert tok["revoked_at"] is None
    member = ok(world.client.get(f"/v1/members/{b.member['id']}", headers=bearer(b.admin_token)))
    assert member["display_name"] == "Beta"
    if who == "user":  # A's admin, hidden from A's user, is untouched too
        admin = ok(world.client.get("/v1/users/me", headers=bearer(world.a.admin_token)))
        assert admin["disabled"] is False and admin["name"] == world.a.admin["name"]
    pool = ok(world.client.get("/v1/pools/kr-test-h200", headers=world.root))
    assert pool["site"] == "Seoul"


# --- e-mails --------------------------------------------------------------------------------


def _create_user(w: World, token: str, email: str) -> Any:
    return w.client.post("/v1/users", headers=bearer(token), json={"email": email, "name": "X"})


def test_taken_emails_name_nobody(world: World) -> None:
    """E-mails are unique across the platform, so an address someone holds cannot be given
    to a new user. A member admin is told so in one answer for every holder it may not see
    (another member's user or admin, an auditor, a platform admin): 422
    ``email_unavailable``, repeating the address given and nothing of its holder."""
    hidden = hidden_objects(world)
    a = world.a
    answers = []
    for email in [*hidden.emails("admin"), world.b.admin["email"].title()]:
        resp = _create_user(world, a.admin_token, email)
        assert resp.status_code == 422, (email, resp.text)
        body = resp.json()
        assert body["code"] == "email_unavailable", body
        assert set(body["details"]) == {"field", "email"} and body["details"]["email"] == email
        text = resp.text.replace(email, "<email>")
        assert not [s for s in hidden.secrets if s in text], text
        answers.append(text)
    assert len(set(answers)) == 1, answers
    # The caller's own users are its to see: a plain conflict.
    resp = _create_user(world, a.admin_token, a.user["email"])
    assert resp.status_code == 409 and resp.json()["code"] == "already_exists", resp.text
    # A member user may not create users at all, whatever the address.
    for email in (world.b.user["email"], "fresh@alpha.example"):
        resp = _create_user(world, a.user_token, email)
        assert resp.status_code == 403 and resp.json()["code"] == "forbidden", resp.text
    # A free address works; the platform admin sees every user and gets the conflict.
    ok(_create_user(world, a.admin_token, "fresh@alpha.example"), 201)
    resp = world.client.post(
        "/v1/users",
        headers=world.root,
        json={"email": world.b.user["email"], "name": "X", "member": "alpha"},
    )
    assert resp.status_code == 409 and resp.json()["code"] == "already_exists", resp.text
    # Nothing of B's changed.
    users = ok(world.client.get("/v1/users", headers=bearer(world.b.admin_token)))["items"]
    assert {u["email"] for u in users} == {world.b.user["email"], world.b.admin["email"]}


def test_an_email_taken_concurrently_gets_the_same_answer(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the address is taken between the check and the insert (the unique index
    refuses it), the answer is the one the check would have given."""
    expected = {}
    for email in (world.b.user["email"], world.a.user["email"]):
        resp = _create_user(world, world.a.admin_token, email)
        expected[email] = (resp.status_code, resp.text)
    real = tenancy._email_taken
    calls: list[str] = []

    def first_check_misses(*args: Any) -> Any:
        calls.append(args[-1])
        return None if len(calls) % 2 == 1 else real(*args)

    monkeypatch.setattr(tenancy, "_email_taken", first_check_misses)
    for email, answer in expected.items():
        resp = _create_user(world, world.a.admin_token, email)
        assert (resp.status_code, resp.text) == answer
    assert len(calls) == 4  # each request was checked again after the insert failed


def test_tokens_by_email_repeat_only_the_address(world: World) -> None:
    """The first known oracle: a token for another member's user by e-mail answered a 404
    that named the user's internal id."""
    b_email = world.b.user["email"]
    for token in (world.a.admin_token, world.a.user_token):
        resp = world.client.post(
            "/v1/tokens", headers=bearer(token), json={"name": "x", "user_id": b_email}
        )
        assert resp.status_code == 404, resp.text
        assert resp.json() == {
            "code": "not_found",
            "message": f"user {b_email!r} not found",
            "details": {"kind": "user", "id": b_email},
        }
    # Admins still issue tokens for their own users by e-mail.
    made = ok(
        world.client.post(
            "/v1/tokens",
            headers=bearer(world.a.admin_token),
            json={"name": "x", "user_id": world.a.user["email"].upper()},
        ),
        201,
    )
    assert made["user_id"] == world.a.user["id"]


# --- idempotency keys -------------------------------------------------------------------------


def test_idempotency_keys_are_per_member(world: World) -> None:
    """A key another member used is as free as a key nobody used: a new job, never a replay
    of theirs or a conflict."""
    b_job = ok(
        world.client.post(
            "/v1/jobs",
            headers={**bearer(world.b.user_token), "Idempotency-Key": "nightly-1"},
            json=_job_body(world, inputs=[world.b.dataset["id"]]),
        ),
        201,
    )
    for key in ("nightly-1", "never-used"):
        resp = world.client.post(
            "/v1/jobs",
            headers={**bearer(world.a.user_token), "Idempotency-Key": key},
            json=_job_body(world, inputs=[world.a.dataset["id"]]),
        )
        assert resp.status_code == 201, resp.text
        job = resp.json()
        assert job["member_id"] == world.a.member["id"] and job["id"] != b_job["id"]
        assert "Idempotent-Replayed" not in resp.headers
