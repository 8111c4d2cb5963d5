"""/v1/endpoints on SQLite and PostgreSQL: validation like a job's (model, adapters, pools,
residency, replica shape, planner), member scoping (another member's endpoint is a 404 exactly
like a missing one), updates, deletion freeing the name, and the audit trail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, select

from controlplane.db.models import AuditEvent
from tests.conftest import World, bearer, ok

US_POOL = {
    "name": "us-west-h100",
    "gpu_model": "H100",
    "gpu_memory_gib": 80,
    "gpus_per_node": 8,
    "site": "Oregon",
    "region": "us-west",
    "jurisdiction": "US",
    "interconnect_domains": ["us-a"],
    "node_count": 2,
}


def create(world: World, token: str, **body: Any) -> Any:
    return world.client.post(
        "/v1/endpoints",
        headers=bearer(token),
        json={"name": "chat", "model": "axk1-tiny", **body},
    )


def audit(world: World, member_id: str) -> list[tuple[str, str]]:
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        rows = s.exec(
            select(AuditEvent).where(AuditEvent.stream == member_id).order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
        return [(e.action, e.outcome) for e in rows if e.action.startswith("endpoint.")]


def test_create_read_list_update_delete(world: World) -> None:
    a = world.a
    made = ok(
        create(
            world,
            a.user_token,
            min_replicas=1,
            max_replicas=3,
            adapters={"tuned": a.artifact["id"]},
            config={"max_context": 512, "max_tokens_default": 64, "target_ongoing_requests": 2},
        ),
        201,
    )
    assert made["name"] == "chat" and made["state"] == "active"
    assert made["desired_replicas"] == 1 and made["replicas"] == []
    assert made["adapters"] == {"tuned": a.artifact["id"]}
    assert made["config"]["max_context"] == 512 and made["config"]["cold_start_timeout_s"] == 60
    got = ok(world.client.get("/v1/endpoints/chat", headers=bearer(a.admin_token)))
    assert got["id"] == made["id"]
    listed = ok(world.client.get("/v1/endpoints", headers=bearer(a.user_token)))
    assert [e["name"] for e in listed["items"]] == ["chat"]
    # Same name in another member: allowed, separate.
    ok(create(world, world.b.user_token), 201)
    assert [
        e["name"] for e in ok(world.client.get("/v1/endpoints", headers=world.root))["items"]
    ] == [
        "chat",
        "chat",
    ]
    changed = ok(
        world.client.patch(
            "/v1/endpoints/chat", headers=bearer(a.user_token), json={"max_replicas": 5}
        )
    )
    assert changed["max_replicas"] == 5 and changed["min_replicas"] == 1
    bad = world.client.patch(
        "/v1/endpoints/chat", headers=bearer(a.user_token), json={"min_replicas": 6}
    )
    assert bad.status_code == 422 and "exceeds max_replicas" in bad.json()["message"]
    gone = ok(world.client.delete("/v1/endpoints/chat", headers=bearer(a.user_token)))
    assert gone["state"] == "deleted" and gone["desired_replicas"] == 0
    assert world.client.get("/v1/endpoints/chat", headers=bearer(a.user_token)).status_code == 404
    assert ok(create(world, a.user_token), 201)["name"] == "chat"  # the name is free again
    assert audit(world, a.member["id"]) == [
        ("endpoint.create", "success"),
        ("endpoint.update", "success"),
        ("endpoint.delete", "success"),
        ("endpoint.create", "success"),
    ]


def test_another_members_endpoint_is_a_404_like_a_missing_one(world: World) -> None:
    ok(create(world, world.a.user_token), 201)
    theirs = world.client.get("/v1/endpoints/chat", headers=bearer(world.b.user_token))
    missing = world.client.get("/v1/endpoints/nope", headers=bearer(world.b.user_token))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["code"] == missing.json()["code"] == "not_found"
    for call in (
        world.client.patch("/v1/endpoints/chat", headers=bearer(world.b.user_token), json={}),
        world.client.delete("/v1/endpoints/chat", headers=bearer(world.b.user_token)),
    ):
        assert call.status_code == 404
    assert ok(world.client.get("/v1/endpoints", headers=bearer(world.b.user_token)))["items"] == []
    # Still there for its owner.
    ok(world.client.get("/v1/endpoints/chat", headers=bearer(world.a.user_token)))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "no-such-model"}, 422, "unknown_model"),
        ({"model": "axk1"}, 422, "weights_unavailable"),
        ({"allowed_pools": ["nowhere"]}, 422, "unknown_pool"),
        ({"gpus_per_replica": 16}, 422, "exceeds_capacity"),
        ({"priority_class": "vip"}, 422, "unknown_priority_class"),
        ({"adapters": {"x": "art_doesnotexist"}}, 422, "unknown_adapter"),
        ({"min_replicas": 3, "max_replicas": 2}, 422, "validation_error"),
        ({"name": "Bad_Name"}, 422, "validation_error"),
        ({"config": {"max_context": 64, "max_tokens_default": 64}}, 422, "validation_error"),
        ({"config": {"unknown": 1}}, 422, "validation_error"),
        ({"id": "ep_mine"}, 422, "validation_error"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    world: World, body: dict[str, Any], status: int, code: str
) -> None:
    resp = create(world, world.a.user_token, **body)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code and resp.json()["message"]
    assert ok(world.client.get("/v1/endpoints", headers=bearer(world.a.user_token)))["items"] == []


def test_another_members_adapter_or_a_non_adapter_artifact_is_refused(world: World) -> None:
    theirs = create(world, world.a.user_token, adapters={"x": world.b.artifact["id"]})
    assert theirs.status_code == 422 and theirs.json()["code"] == "unknown_adapter"


def test_residency_denial_is_refused_like_a_jobs_and_audited(world: World) -> None:
    ok(world.client.post("/v1/pools", headers=world.root, json=US_POOL), 201)
    # The base model and the adapter (trained on alpha's Korean data) stay in kr-seoul.
    resp = create(
        world,
        world.a.user_token,
        adapters={"tuned": world.a.artifact["id"]},
        allowed_pools=["us-west-h100"],
    )
    assert resp.status_code == 422, resp.text  # as a job's residency denial
    body = resp.json()
    assert body["code"] == "residency_denied"
    assert body["details"]["pools"]["us-west-h100"]["allowed"] is False
    reasons = body["details"]["pools"]["us-west-h100"]["reasons"]
    assert any(world.a.artifact["id"] in r for r in reasons)  # the adapter named
    assert audit(world, world.a.member["id"]) == [("endpoint.create", "denied")]
    # Without the adapter, or in the Korean pool, it is fine.
    ok(
        create(world, world.a.user_token, name="kr", adapters={"tuned": world.a.artifact["id"]}),
        201,
    )


def test_auditors_and_read_only_callers_cannot_create(world: World) -> None:
    resp = create(world, world.auditor_token)
    assert resp.status_code == 403
    platform = create(world, "nuri-test-bootstrap-admin-token-0123456789")
    assert platform.status_code == 403 and platform.json()["code"] == "member_required"
