"""Tenant isolation on every route: another member's object is 404, admin routes are 403.

Runs on SQLite and on the real PostgreSQL. ``test_every_route_is_covered`` fails when a new
route appears without an isolation case here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import World, bearer, ok

# (method, path template) of every /v1 route, and which test below covers it.
COVERED = {
    ("POST", "/v1/members"),
    ("GET", "/v1/members"),
    ("GET", "/v1/members/{ref}"),
    ("PATCH", "/v1/members/{ref}"),
    ("POST", "/v1/users"),
    ("GET", "/v1/users"),
    ("GET", "/v1/users/me"),
    ("GET", "/v1/users/{user_id}"),
    ("PATCH", "/v1/users/{user_id}"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"),
    ("GET", "/v1/tokens/{token_id}"),
    ("DELETE", "/v1/tokens/{token_id}"),
    ("POST", "/v1/pools"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/pools/{ref}"),
    ("PATCH", "/v1/pools/{ref}"),
    ("POST", "/v1/nodes"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/nodes/{ref}"),
    ("PATCH", "/v1/nodes/{ref}"),
    ("GET", "/v1/priority-classes"),
    ("POST", "/v1/quotas"),
    ("GET", "/v1/quotas"),
    ("GET", "/v1/quotas/{quota_id}"),
    ("PATCH", "/v1/quotas/{quota_id}"),
    ("POST", "/v1/budgets"),
    ("GET", "/v1/budgets"),
    ("GET", "/v1/budgets/{budget_id}"),
    ("PATCH", "/v1/budgets/{budget_id}"),
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/datasets/{ref}"),
    ("PATCH", "/v1/datasets/{ref}"),
    ("GET", "/v1/jobs/{job_id}/logs"),
    ("GET", "/v1/jobs/{job_id}/metrics"),
    ("POST", "/v1/plan"),
    ("GET", "/v1/artifacts"),
    ("GET", "/v1/artifacts/{art_id}"),
    ("POST", "/v1/artifacts/{art_id}/export"),
    ("GET", "/v1/artifacts/{art_id}/download"),
    ("GET", "/v1/artifacts/{art_id}/content"),
    ("GET", "/v1/policies"),
    ("POST", "/v1/policies/where"),
    ("GET", "/v1/policies/versions"),
    ("POST", "/v1/policies/versions"),
    ("POST", "/v1/policies/versions/{version_id}/activate"),
    ("POST", "/v1/policies/revert"),
    ("GET", "/v1/audit/events"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/audit/export"),
    ("POST", "/v1/audit/checkpoints"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/usage"),
    # Endpoints: another member's is a 404 like a missing one, tested with the endpoints
    # (tests/integration/serving/test_endpoints_api.py).
    ("POST", "/v1/endpoints"),
    ("GET", "/v1/endpoints"),
    ("GET", "/v1/endpoints/{name}"),
    ("PATCH", "/v1/endpoints/{name}"),
    ("DELETE", "/v1/endpoints/{name}"),
}


def test_every_route_is_covered(sqlite_world: World) -> None:
    spec = sqlite_world.client.get("/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        if path.startswith("/v1")
        for method in ops
    }
    assert routes - COVERED == set(), "new routes need tenant-isolation cases"
    assert COVERED - routes == set(), "stale entries in COVERED"


def cross_member_requests(w: World) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Requests that name one of member B's objects."""
    b = w.b
    return [
        ("GET", f"/v1/members/{b.member['id']}", None),
        ("GET", f"/v1/members/{b.member['name']}", None),
        ("PATCH", f"/v1/members/{b.member['id']}", {"display_name": "pwned"}),
        ("GET", f"/v1/users/{b.user['id']}", None),
        ("GET", f"/v1/users/{b.admin['id']}", None),
        ("PATCH", f"/v1/users/{b.user['id']}", {"disabled": True}),
        ("GET", f"/v1/tokens/{b.user_token_id}", None),
        ("DELETE", f"/v1/tokens/{b.user_token_id}", None),
        ("GET", f"/v1/quotas/{b.quota['id']}", None),
        ("PATCH", f"/v1/quotas/{b.quota['id']}", {"nominal_gpus": 0}),
        ("GET", f"/v1/budgets/{b.budget['id']}", None),
        ("PATCH", f"/v1/budgets/{b.budget['id']}", {"gpu_hours": 0}),
        ("GET", f"/v1/datasets/{b.dataset['id']}", None),
        ("PATCH", f"/v1/datasets/{b.dataset['id']}", {"uri": "s3://stolen"}),
        ("GET", f"/v1/jobs/{b.job['id']}", None),
        ("POST", f"/v1/jobs/{b.job['id']}/cancel", {}),
        ("GET", f"/v1/jobs/{b.job['id']}/events", None),
        ("GET", f"/v1/jobs/{b.job['id']}/logs", None),
        ("GET", f"/v1/jobs/{b.job['id']}/metrics", None),
        ("GET", f"/v1/artifacts/{b.artifact['id']}", None),
        (
            "POST",
            f"/v1/artifacts/{b.artifact['id']}/export",
            {"region": "kr-seoul", "jurisdiction": "KR"},
        ),
        ("GET", f"/v1/artifacts/{b.artifact['id']}/download", None),
        ("GET", "/v1/users", {"member": b.member["name"]}),
        ("GET", "/v1/quotas", {"member": b.member["name"]}),
        ("GET", "/v1/budgets", {"member": b.member["name"]}),
        ("GET", "/v1/datasets", {"member": b.member["name"]}),
        ("GET", "/v1/usage", {"period": "2026-Q4", "member": b.member["name"]}),
    ]


def _send(w: World, token: str, method: str, path: str, body: dict[str, Any] | None) -> Any:
    if method == "GET":
        return w.client.get(path, headers=bearer(token), params=body)
    return w.client.request(method, path, headers=bearer(token), json=body)


@pytest.mark.parametrize("who", ["user", "admin"])
def test_another_members_objects_are_404(world: World, who: str) -> None:
    token = world.a.user_token if who == "user" else world.a.admin_token
    for method, path, body in cross_member_requests(world):
        resp = _send(world, token, method, path, body)
        # A list filtered on another member is 404 too; unfiltered lists are scoped silently.
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["code"] == "not_found"
    # Nothing of B's changed, and B's token still works.
    b = world.b
    job = ok(world.client.get(f"/v1/jobs/{b.job['id']}", headers=bearer(b.user_token)))
    assert job["status"] == "QUEUED"
    ds = ok(world.client.get(f"/v1/datasets/{b.dataset['id']}", headers=bearer(b.user_token)))
    assert ds["uri"] == b.dataset["uri"] and ds["version"] == 1
    member = ok(world.client.get(f"/v1/members/{b.member['id']}", headers=bearer(b.admin_token)))
    assert member["display_name"] == "Beta"
    quota = ok(world.client.get(f"/v1/quotas/{b.quota['id']}", headers=world.root))
    assert quota["nominal_gpus"] == 16


def test_artifact_content_needs_a_reference_for_that_artifact_and_user(world: World) -> None:
    """``GET /v1/artifacts/{id}/content`` takes no token: its reference is the credential.
    One minted for another artifact, or for a user who cannot see this one, is a 403 that
    says nothing of whether the artifact exists."""
    from datetime import UTC, datetime, timedelta

    from controlplane.services.artifact_content import make_ref, ref_key

    a, b = world.a, world.b
    key = ref_key(world.client.app.state.audit_key)  # type: ignore[attr-defined]
    soon = datetime.now(UTC) + timedelta(minutes=5)
    a_link = ok(
        world.client.get(f"/v1/artifacts/{a.artifact['id']}/download", headers=bearer(a.user_token))
    )["href"]
    a_ref = a_link.split("ref=", 1)[1]
    refused = [
        # A's reference, on B's artifact.
        (b.artifact["id"], a_ref),
        # References for B's artifact minted for A's user and token (A cannot see it).
        (b.artifact["id"], make_ref(key, b.artifact["id"], a.user["id"], a.user_token_id, soon)),
        # A reference for A's artifact with B's user and token (B cannot see it)...
        (a.artifact["id"], make_ref(key, a.artifact["id"], b.user["id"], b.user_token_id, soon)),
        # ...or with A's user and B's token.
        (a.artifact["id"], make_ref(key, a.artifact["id"], a.user["id"], b.user_token_id, soon)),
    ]
    for art_id, ref in refused:
        resp = world.client.get(f"/v1/artifacts/{art_id}/content", params={"ref": ref})
        assert resp.status_code == 403, (art_id, resp.text)
        assert resp.json()["code"] == "invalid_reference"
        # Not even B's own token turns A's reference into a valid one for B's artifact.
        resp = world.client.get(
            f"/v1/artifacts/{art_id}/content",
            params={"ref": ref},
            headers=bearer(b.user_token),
        )
        assert resp.status_code == 403
    # A's own reference is accepted (the world's artifacts are in the members' own S3
    # stores, so Nuri answers where instead of serving them).
    resp = world.client.get(a_link)
    assert resp.status_code == 409 and resp.json()["code"] == "not_served"


def test_lists_show_only_the_callers_member(world: World) -> None:
    a, b = world.a, world.b
    for token in (a.user_token, a.admin_token):
        for coll in (
            "members",
            "users",
            "tokens",
            "quotas",
            "budgets",
            "datasets",
            "jobs",
            "artifacts",
        ):
            items = ok(world.client.get(f"/v1/{coll}", headers=bearer(token)))["items"]
            assert items, coll
            for item in items:
                owner = item["id"] if coll == "members" else item.get("member_id")
                assert owner == a.member["id"], (coll, item)
    # A member user sees only itself among users and its own tokens.
    users = ok(world.client.get("/v1/users", headers=bearer(a.user_token)))["items"]
    assert [u["id"] for u in users] == [a.user["id"]]
    toks = ok(world.client.get("/v1/tokens", headers=bearer(a.user_token)))["items"]
    assert {t["user_id"] for t in toks} == {a.user["id"]}
    # The platform admin and the auditor see both members' jobs.
    for token in (None, world.auditor_token):
        headers = world.root if token is None else bearer(token)
        jobs = ok(world.client.get("/v1/jobs", headers=headers))["items"]
        assert {j["member_id"] for j in jobs} == {a.member["id"], b.member["id"]}


def test_dry_run_with_another_members_dataset_reveals_nothing(world: World) -> None:
    resp = world.client.post(
        "/v1/policies/where",
        headers=bearer(world.a.user_token),
        json={"model": "axk1", "inputs": [world.b.dataset["id"]]},
    )
    assert resp.status_code == 422 and resp.json()["code"] == "unknown_dataset"
    ok(world.client.get("/v1/policies", headers=bearer(world.a.user_token)))


def test_submitting_with_another_members_dataset_reveals_nothing(world: World) -> None:
    resp = world.client.post(
        "/v1/jobs",
        headers=bearer(world.a.user_token),
        json={"kind": "finetune", "model": "axk1", "gpus": 8, "inputs": [world.b.dataset["id"]]},
    )
    assert resp.status_code == 422
    assert resp.json()["code"] == "unknown_dataset"
    # Same answer as for a dataset that does not exist at all.
    resp2 = world.client.post(
        "/v1/jobs",
        headers=bearer(world.a.user_token),
        json={"kind": "finetune", "model": "axk1", "gpus": 8, "inputs": ["ds_doesnotexist"]},
    )
    assert resp2.json()["code"] == resp.json()["code"]


def admin_only_requests(w: World) -> list[tuple[str, str, dict[str, Any]]]:
    a = w.a
    return [
        ("POST", "/v1/members", {"name": "gamma", "display_name": "Gamma"}),
        ("PATCH", f"/v1/members/{a.member['id']}", {"display_name": "Renamed"}),
        (
            "POST",
            "/v1/pools",
            {
                "name": "p2",
                "gpu_model": "H100",
                "gpu_memory_gib": 80,
                "gpus_per_node": 8,
                "site": "x",
                "region": "kr-seoul",
                "jurisdiction": "KR",
            },
        ),
        ("PATCH", "/v1/pools/kr-test-h200", {"region": "us-west"}),
        ("POST", "/v1/nodes", {"name": "rogue-node", "pool": "kr-test-h200"}),
        ("PATCH", "/v1/nodes/kr-test-h200-000", {"status": "down"}),
        (
            "POST",
            "/v1/quotas",
            {"member": a.member["name"], "pool": "kr-test-h200", "nominal_gpus": 1},
        ),
        ("PATCH", f"/v1/quotas/{a.quota['id']}", {"nominal_gpus": 32}),
        ("POST", "/v1/budgets", {"member": a.member["name"], "period": "2027-Q1", "gpu_hours": 1}),
        ("PATCH", f"/v1/budgets/{a.budget['id']}", {"gpu_hours": 1e6}),
        ("POST", "/v1/policies/versions", {"policies": "permit(principal, action, resource);"}),
        ("POST", "/v1/policies/versions/1/activate", None),
        ("POST", "/v1/policies/revert", None),
    ]


@pytest.mark.parametrize("who", ["user", "admin", "auditor"])
def test_admin_routes_are_403_for_others(world: World, who: str) -> None:
    token = {
        "user": world.a.user_token,
        "admin": world.a.admin_token,
        "auditor": world.auditor_token,
    }[who]
    for method, path, body in admin_only_requests(world):
        resp = world.client.request(method, path, headers=bearer(token), json=body)
        assert resp.status_code == 403, (method, path, resp.text)
        assert resp.json()["code"] == "forbidden"
    pool = ok(world.client.get("/v1/pools/kr-test-h200", headers=world.root))
    assert pool["region"] == "kr-seoul"
    quota = ok(world.client.get(f"/v1/quotas/{world.a.quota['id']}", headers=world.root))
    assert quota["nominal_gpus"] == 16


def test_shared_infrastructure_is_readable_by_every_member(world: World) -> None:
    for path in (
        "/v1/pools",
        "/v1/pools/kr-test-h200",
        "/v1/nodes",
        "/v1/nodes/kr-test-h200-000",
        "/v1/priority-classes",
        "/v1/users/me",
    ):
        ok(world.client.get(path, headers=bearer(world.a.user_token)))


def test_auditor_reads_everything_and_changes_nothing(world: World) -> None:
    aud = bearer(world.auditor_token)
    ok(world.client.get(f"/v1/jobs/{world.b.job['id']}", headers=aud))
    ok(world.client.get(f"/v1/datasets/{world.a.dataset['id']}", headers=aud))
    resp = world.client.post(f"/v1/jobs/{world.b.job['id']}/cancel", headers=aud, json={})
    assert resp.status_code == 403
    resp = world.client.post(
        "/v1/jobs", headers=aud, json={"kind": "lora", "model": "axk1", "gpus": 1}
    )
    assert resp.status_code == 403


def test_member_admin_manages_only_its_own_member(world: World) -> None:
    a_admin = bearer(world.a.admin_token)
    # Creating a user in another member is as if that member did not exist.
    resp = world.client.post(
        "/v1/users",
        headers=a_admin,
        json={"email": "x@beta.example", "name": "X", "member": world.b.member["name"]},
    )
    assert resp.status_code == 404
    # Nor may a member admin mint platform roles or tokens for other members' users.
    resp = world.client.post(
        "/v1/users",
        headers=a_admin,
        json={"email": "boss@alpha.example", "name": "Boss", "role": "platform_admin"},
    )
    assert resp.status_code == 403
    resp = world.client.post(
        "/v1/tokens", headers=a_admin, json={"name": "steal", "user_id": world.b.user["id"]}
    )
    assert resp.status_code == 404
    # Member users cannot create users or tokens for colleagues.
    resp = world.client.post(
        "/v1/tokens",
        headers=bearer(world.a.user_token),
        json={"name": "x", "user_id": world.a.admin["id"]},
    )
    assert resp.status_code == 404
    # But the admin does manage its own users.
    u = ok(
        world.client.patch(
            f"/v1/users/{world.a.user['id']}", headers=a_admin, json={"disabled": True}
        )
    )
    assert u["disabled"] is True
    resp = world.client.get("/v1/jobs", headers=bearer(world.a.user_token))
    assert resp.status_code == 401, "a disabled user's tokens stop working"


def test_audit_streams_are_scoped(world: World) -> None:
    a, b = world.a, world.b
    for path in ("/v1/audit/events", "/v1/audit/verify", "/v1/audit/export"):
        # Another member's stream does not exist for a member admin...
        resp = world.client.get(
            path, headers=bearer(a.admin_token), params={"stream": b.member["id"]}
        )
        assert resp.status_code == 404, (path, resp.text)
        resp = world.client.get(path, headers=bearer(a.admin_token), params={"stream": "platform"})
        assert resp.status_code == 404, (path, resp.text)
        # ...member users may not read the log at all...
        assert world.client.get(path, headers=bearer(a.user_token)).status_code == 403
        # ...and without a filter a member admin gets exactly its own stream.
        assert world.client.get(path, headers=bearer(a.admin_token)).status_code == 200
    own = ok(
        world.client.get("/v1/audit/events", headers=bearer(a.admin_token), params={"limit": 1000})
    )["items"]
    assert own and {e["stream"] for e in own} == {a.member["id"]}
    exported = world.client.get("/v1/audit/export", headers=bearer(a.admin_token))
    records = [json.loads(line) for line in exported.content.split(b"\n") if line]
    assert records[0]["streams"] == [a.member["id"]] and "end" in records[-1]
    assert {r["event"]["stream"] for r in records if "event" in r} == {a.member["id"]}
    # The auditor reads every stream; only the platform admin forces checkpoints.
    every = ok(
        world.client.get(
            "/v1/audit/events", headers=bearer(world.auditor_token), params={"limit": 1000}
        )
    )["items"]
    assert {a.member["id"], b.member["id"], "platform"} <= {e["stream"] for e in every}
    for token in (a.admin_token, world.auditor_token, a.user_token):
        assert world.client.post("/v1/audit/checkpoints", headers=bearer(token)).status_code == 403
    ok(world.client.post("/v1/audit/checkpoints", headers=world.root))
