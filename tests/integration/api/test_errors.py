"""Every bad input is a 4xx with ``{code, message, details}``; never a 500 or a traceback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlmodel import Session

from controlplane.db.models import ApiToken
from tests.conftest import World, bearer, ok


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "message", "details"}, body
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in resp.text
    if code is not None:
        assert body["code"] == code, body
    return body


def test_authentication_failures_are_uniform_401(sqlite_world: World) -> None:
    w = sqlite_world
    c = w.client
    assert_error(c.get("/v1/jobs"), 401, "unauthenticated")
    assert_error(c.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)
    assert_error(c.get("/v1/jobs", headers=bearer("nuri_" + "x" * 38)), 401)  # bad checksum
    assert_error(c.get("/v1/jobs", headers=bearer("not-a-token-at-all")), 401)
    resp = c.get("/v1/jobs", headers=bearer("nuri_" + "x" * 38))
    assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_revoked_and_expired_tokens_stop_working(sqlite_world: World) -> None:
    w = sqlite_world
    c = w.client
    created = ok(c.post("/v1/tokens", headers=bearer(w.a.user_token), json={"name": "ci"}), 201)
    assert created["token"].startswith("nuri_")
    assert created["display_prefix"] == created["token"][:12]
    ok(c.get("/v1/jobs", headers=bearer(created["token"])))
    ok(c.delete(f"/v1/tokens/{created['id']}", headers=bearer(w.a.user_token)))
    assert_error(c.get("/v1/jobs", headers=bearer(created["token"])), 401)

    other = ok(c.post("/v1/tokens", headers=bearer(w.a.user_token), json={"name": "x"}), 201)
    with Session(c.app.state.engine) as s:  # type: ignore[attr-defined]
        s.execute(
            update(ApiToken)
            .where(ApiToken.id == other["id"])
            .values(  # type: ignore[arg-type]
                expires_at=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
        s.commit()
    assert_error(c.get("/v1/jobs", headers=bearer(other["token"])), 401)


def test_tokens_are_stored_hashed_and_shown_once(sqlite_world: World) -> None:
    w = sqlite_world
    created = ok(
        w.client.post(
            "/v1/tokens",
            headers=bearer(w.a.user_token),
            json={"name": "pipeline", "scopes": ["read"]},
        ),
        201,
    )
    listed = ok(w.client.get(f"/v1/tokens/{created['id']}", headers=bearer(w.a.user_token)))
    assert "token" not in listed and "token_hash" not in listed
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        row = s.get(ApiToken, created["id"])
        assert row is not None
        assert created["token"] not in row.token_hash
        assert len(row.token_hash) == 64
    # A read-only token cannot write.
    resp = w.client.post(
        "/v1/jobs",
        headers=bearer(created["token"]),
        json={"kind": "lora", "model": "axk1", "gpus": 1},
    )
    assert_error(resp, 403, "insufficient_scope")
    # Nor can a member user mint an admin-scoped token.
    resp = w.client.post(
        "/v1/tokens", headers=bearer(w.a.user_token), json={"name": "x", "scopes": ["admin"]}
    )
    assert_error(resp, 422, "invalid_scopes")


def test_malformed_requests(sqlite_world: World) -> None:
    w = sqlite_world
    c = w.client
    h = bearer(w.a.user_token)
    assert_error(
        c.post("/v1/jobs", headers={**h, "Content-Type": "application/json"}, content=b"{not json"),
        422,
        "validation_error",
    )
    assert_error(c.post("/v1/jobs", headers=h, content=b"[]"), 422, "validation_error")
    assert_error(c.post("/v1/jobs", headers=h, json=None), 422, "validation_error")
    assert_error(c.get("/v1/nope", headers=h), 404, "not_found")
    assert_error(c.put("/v1/jobs", headers=h, json={}), 405, "method_not_allowed")
    assert_error(c.get("/v1/jobs", headers=h, params={"cursor": "%%%"}), 422, "invalid_cursor")
    assert_error(c.get("/v1/jobs", headers=h, params={"status": "DONE"}), 422, "invalid_filter")
    assert_error(c.get("/v1/jobs", headers=h, params={"limit": 0}), 422, "validation_error")
    assert_error(c.get("/v1/jobs/job_unknown", headers=h), 404, "not_found")
    assert_error(
        c.post(
            "/v1/jobs",
            headers={**h, "Idempotency-Key": "k" * 201},
            json={"kind": "lora", "model": "axk1", "gpus": 1},
        ),
        422,
        "invalid_idempotency_key",
    )


def test_admin_input_errors(sqlite_world: World) -> None:
    w = sqlite_world
    c = w.client
    assert_error(
        c.post("/v1/members", headers=w.root, json={"name": "alpha", "display_name": "dup"}),
        409,
        "already_exists",
    )
    assert_error(
        c.post(
            "/v1/quotas",
            headers=w.root,
            json={"member": "alpha", "pool": "kr-test-h200", "nominal_gpus": 1},
        ),
        409,
        "already_exists",
    )
    body = assert_error(
        c.patch(f"/v1/quotas/{w.a.quota['id']}", headers=w.root, json={"nominal_gpus": 20}),
        422,
        "quota_exceeds_capacity",
    )
    assert body["details"]["capacity_gpus"] == 32
    assert_error(
        c.post(
            "/v1/quotas",
            headers=w.root,
            json={"member": "nobody", "pool": "kr-test-h200", "nominal_gpus": 1},
        ),
        404,
        "not_found",
    )
    assert_error(
        c.post(
            "/v1/budgets",
            headers=w.root,
            json={"member": "alpha", "period": "2026-13", "gpu_hours": 1},
        ),
        422,
    )
    assert_error(
        c.post(
            "/v1/nodes", headers=w.root, json={"name": "big", "pool": "kr-test-h200", "gpus": 16}
        ),
        422,
        "invalid_request",
    )
    assert_error(
        c.post(
            "/v1/users",
            headers=w.root,
            json={"email": "x@y.example", "name": "X", "role": "member_user"},
        ),
        422,
        "member_required",
    )
    assert_error(
        c.post(
            "/v1/users",
            headers=w.root,
            json={"email": "admin@alpha.example", "name": "dup", "member": "alpha"},
        ),
        409,
    )
    assert_error(
        c.patch(f"/v1/members/{w.a.member['id']}", headers=w.root, json={"display_name": None}), 422
    )


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
JOB_FIELDS = [
    "kind",
    "model",
    "gpus",
    "nodes",
    "gpus_per_node",
    "allowed_pools",
    "inputs",
    "priority_class",
    "max_runtime_s",
    "preemptible",
    "config",
    "name",
    "same_domain",
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(st.sampled_from(JOB_FIELDS), JSONISH, max_size=8)
    | st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["lora", "finetune", "inference"]),
            "model": st.sampled_from(["axk1", "alpha-corpus", "x"]),
            "gpus": st.integers(-5, 100),
        },
        optional={
            "nodes": st.integers(-1, 9),
            "allowed_pools": st.lists(st.text(max_size=8), max_size=2),
        },
    ),
    route=st.sampled_from(
        ["/v1/jobs", "/v1/datasets", "/v1/tokens", "/v1/quotas", "/v1/users", "/v1/pools"]
    ),
)
def test_random_bodies_never_cause_a_500(
    sqlite_world: World, body: dict[str, Any], route: str
) -> None:
    token = sqlite_world.a.admin_token if route != "/v1/pools" else None
    headers = bearer(token) if token else sqlite_world.root
    resp = sqlite_world.client.post(route, headers=headers, json=body)
    assert resp.status_code < 500, (route, body, resp.text)
    if resp.status_code >= 400:
        assert set(resp.json()) == {"code", "message", "details"}


def test_docs_are_served_without_a_cdn(sqlite_world: World) -> None:
    html = sqlite_world.client.get("/docs")
    assert html.status_code == 200
    assert "/static/swagger/swagger-ui-bundle.js" in html.text and "cdn" not in html.text
    js = sqlite_world.client.get("/static/swagger/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    spec = sqlite_world.client.get("/openapi.json").json()
    ops = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ops) == len(set(ops)) and "submitJob" in ops
