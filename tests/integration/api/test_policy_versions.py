"""Versioned policy sets: validated, activated, effective at once, audited, revertible."""

from __future__ import annotations

from typing import Any

import pytest

from policies.policy_set import shipped_sources
from tests.conftest import World, bearer, ok

EXTRA = """
@id("custom.no-us-pools-for-finetune-data")
@reason("the consortium board keeps {input} out of pool {pool} in {pool.region}")
forbid (
  principal is Nuri::Pool,
  action == Nuri::Action::"schedule",
  resource
)
when { principal.jurisdiction == "US" };
"""


@pytest.fixture
def w(sqlite_world: World) -> World:
    ok(
        sqlite_world.client.post(
            "/v1/pools",
            headers=sqlite_world.root,
            json={
                "name": "us-test-h100",
                "gpu_model": "H100",
                "gpu_memory_gib": 80,
                "gpus_per_node": 8,
                "site": "Oregon",
                "region": "us-west",
                "jurisdiction": "US",
                "node_count": 1,
            },
        ),
        201,
    )
    ok(
        sqlite_world.client.post(
            "/v1/datasets",
            headers=bearer(sqlite_world.a.user_token),
            json={
                "name": "global",
                "uri": "s3://a/g",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul", "us-west"]},
            },
        ),
        201,
    )
    return sqlite_world


def submit_us(w: World) -> Any:
    return w.client.post(
        "/v1/jobs",
        headers=bearer(w.a.user_token),
        json={
            "kind": "finetune",
            "model": "student-tiny",
            "gpus": 8,
            "inputs": ["global"],
            "allowed_pools": ["us-test-h100"],
        },
    )


def test_invalid_policy_sets_are_refused_with_the_problems(w: World) -> None:
    resp = w.client.post(
        "/v1/policies/versions",
        headers=w.root,
        json={"policies": "permit(principal, action, resource"},
    )
    assert resp.status_code == 422 and resp.json()["code"] == "policy_set_invalid"
    assert resp.json()["details"]["problems"]
    no_id = w.client.post(
        "/v1/policies/versions",
        headers=w.root,
        json={"policies": "permit(principal, action, resource);"},
    )
    assert no_id.status_code == 422
    assert ok(w.client.get("/v1/policies/versions", headers=w.root))["items"] == []


def test_activated_version_takes_effect_and_revert_restores(w: World) -> None:
    shipped = ok(w.client.get("/v1/policies", headers=bearer(w.a.user_token)))
    assert shipped["source"] == "shipped"
    assert ok(submit_us(w), 201)["status"] == "QUEUED"

    text = "\n".join(shipped_sources()[0].values()) + EXTRA
    created = ok(
        w.client.post(
            "/v1/policies/versions",
            headers=w.root,
            json={"policies": text, "note": "board decision 2026-11", "activate": True},
        ),
        201,
    )
    assert created["active"] is True
    now = ok(w.client.get("/v1/policies", headers=bearer(w.a.user_token)))
    assert now["source"] == "stored" and now["policy_set_hash"] != shipped["policy_set_hash"]
    assert "custom.no-us-pools-for-finetune-data" in now["rule_ids"]

    resp = submit_us(w)
    assert resp.status_code == 422 and resp.json()["code"] == "residency_denied"
    decision = resp.json()["details"]["pools"]["us-test-h100"]
    assert "custom.no-us-pools-for-finetune-data" in decision["policy_ids"]
    assert decision["policy_set_hash"] == now["policy_set_hash"]

    ok(w.client.post("/v1/policies/revert", headers=w.root))
    assert ok(submit_us(w), 201)["status"] == "QUEUED"
    ok(w.client.post(f"/v1/policies/versions/{created['id']}/activate", headers=w.root))
    assert submit_us(w).status_code == 422
    ok(w.client.post("/v1/policies/revert", headers=w.root))

    events = ok(
        w.client.get(
            "/v1/audit/events",
            headers=bearer(w.auditor_token),
            params={"stream": "platform", "limit": 1000},
        )
    )["items"]
    actions = [e["action"] for e in events if e["action"].startswith("policy.")]
    assert actions == [
        "policy.create",
        "policy.activate",
        "policy.activate",
        "policy.activate",
        "policy.activate",
    ]
    auditor_view = ok(w.client.get("/v1/policies/versions", headers=bearer(w.auditor_token)))
    assert [v["id"] for v in auditor_view["items"]] == [created["id"]]
