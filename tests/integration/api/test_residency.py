"""Residency enforcement at every point: submission, the engine's input, artifacts, dry-run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import Session

import quotas
from controlplane.scheduler.snapshot import build
from tests.conftest import World, bearer, ok, register_artifact

US_POOL = {
    "name": "us-test-h100",
    "gpu_model": "H100",
    "gpu_memory_gib": 80,
    "gpus_per_node": 8,
    "site": "Oregon",
    "region": "us-west",
    "jurisdiction": "US",
    "max_classification": "open",
    "node_count": 2,
}
DJ_POOL = {
    "name": "kr-test-h100",
    "gpu_model": "H100",
    "gpu_memory_gib": 80,
    "gpus_per_node": 8,
    "site": "Daejeon",
    "region": "kr-daejeon",
    "jurisdiction": "KR",
    "max_classification": "sensitive",
    "node_count": 2,
}


@pytest.fixture
def w(world: World) -> World:
    for pool in (US_POOL, DJ_POOL):
        ok(world.client.post("/v1/pools", headers=world.root, json=pool), 201)
    return world


def dataset(w: World, name: str, **labels: Any) -> dict[str, Any]:
    body = {
        "jurisdiction": "KR",
        "allowed_regions": ["kr-seoul", "kr-daejeon", "us-west"],
        **labels,
    }
    out: dict[str, Any] = ok(
        w.client.post(
            "/v1/datasets",
            headers=bearer(w.a.user_token),
            json={"name": name, "uri": f"s3://a/{name}", "labels": body},
        ),
        201,
    )
    return out


def submit(w: World, **body: Any) -> Any:
    return w.client.post(
        "/v1/jobs",
        headers=bearer(w.a.user_token),
        json={"kind": "finetune", "model": "student-tiny", "gpus": 8, **body},
    )


def denial(resp: Any, pool: str) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "residency_denied"
    decision: dict[str, Any] = body["details"]["pools"][pool]
    assert decision["allowed"] is False
    return decision


@pytest.mark.parametrize(
    ("labels", "pool", "rule"),
    [
        ({"allowed_regions": ["kr-seoul"]}, "us-test-h100", "residency.schedule.region"),
        ({"classification": "classified"}, "kr-test-h100", "residency.schedule.classification"),
        ({"personal_info": True}, "us-test-h100", "residency.schedule.personal-info-transfer"),
    ],
)
def test_submission_is_denied_naming_the_rule(
    w: World, labels: dict[str, Any], pool: str, rule: str
) -> None:
    ds = dataset(w, "sensitive-data", **labels)
    decision = denial(submit(w, inputs=[ds["id"]], allowed_pools=[pool]), pool)
    assert rule in decision["policy_ids"], decision
    assert any(r.startswith(rule) for r in decision["reasons"])
    # The denial is itself audited, with the rules and the policy set that decided it.
    events = ok(
        w.client.get(
            "/v1/audit/events",
            headers=bearer(w.auditor_token),
            params={"stream": w.a.member["id"], "limit": 1000},
        )
    )["items"]
    denied = [e for e in events if e["action"] == "job.submit" and e["outcome"] == "denied"]
    assert denied and denied[-1]["details"]["pools"][pool]["policy_ids"] == decision["policy_ids"]
    assert denied[-1]["details"]["policy_set_hash"]


def test_transfer_basis_lets_personal_data_leave(w: World) -> None:
    ds = dataset(w, "consented", personal_info=True, transfer_basis="consent")
    job = ok(submit(w, inputs=[ds["id"]], allowed_pools=["us-test-h100"]), 201)
    assert job["status"] == "QUEUED"


def test_only_permitted_pools_remain_candidates(w: World) -> None:
    # The caller allows every pool; residency narrows it, the job is accepted.
    ds = dataset(w, "kr-only", allowed_regions=["kr-seoul", "kr-daejeon"])
    job = ok(submit(w, inputs=[ds["id"]]), 201)
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        snap = build(s, set(), datetime.now(UTC), quotas.EngineConfig())
    pending = {p.job_id: p for p in snap.pending}
    assert set(pending[job["id"]].allowed_pools) == {"kr-test-h200", "kr-test-h100"}


def test_relabelled_input_reaches_queued_jobs(w: World) -> None:
    ds = dataset(w, "relabel-me")
    job = ok(submit(w, inputs=[ds["id"]], allowed_pools=["us-test-h100"]), 201)
    ok(
        w.client.patch(
            f"/v1/datasets/{ds['id']}",
            headers=bearer(w.a.user_token),
            json={"labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]}},
        )
    )
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        snap = build(
            s, {"us-test-h100-000", "us-test-h100-001"}, datetime.now(UTC), quotas.EngineConfig()
        )
    pending = {p.job_id: p for p in snap.pending}
    assert pending[job["id"]].allowed_pools == ()
    decisions = quotas.admit(snap, datetime.now(UTC).timestamp())
    reasons = decisions.pending_by_id()[job["id"]].reasons
    assert reasons[0].code == "no_allowed_pool"


def test_student_of_a_kr_only_teacher_stays_in_korea(w: World) -> None:
    corpus = dataset(w, "open-corpus")
    # The student (open weights, open data) learns from A.X K1 (Korean-jurisdiction weights).
    distill = ok(
        submit(w, kind="distill", model="student-tiny", teacher="axk1-tiny", inputs=[corpus["id"]]),
        201,
    )
    assert distill["status"] == "QUEUED" and distill["teacher"] == "axk1-tiny"
    student = register_artifact(w.client, distill["id"])
    assert set(student["labels"]["allowed_regions"]) <= {"kr-seoul", "kr-daejeon"}
    inputs = {(i["id"], i["role"]) for i in student["provenance"]["inputs"]}
    assert inputs == {("student-tiny", "model"), ("axk1-tiny", "teacher"), (corpus["id"], "input")}
    # It cannot be scheduled outside Korea...
    infer = {"kind": "inference", "model": student["id"], "gpus": 1, "inputs": [corpus["id"]]}
    resp = submit(w, **infer, allowed_pools=["us-test-h100"])
    assert "residency.schedule.region" in denial(resp, "us-test-h100")["policy_ids"]
    ok(submit(w, **infer, allowed_pools=["kr-test-h100"]), 201)
    # ...nor exported outside Korea, while export inside Korea is allowed; both are audited.
    resp = w.client.post(
        f"/v1/artifacts/{student['id']}/export",
        headers=bearer(w.a.user_token),
        json={"region": "us-west", "jurisdiction": "US"},
    )
    assert resp.status_code == 403 and resp.json()["code"] == "residency_denied"
    assert "residency.export.region" in resp.json()["details"]["decision"]["policy_ids"]
    allowed = ok(
        w.client.post(
            f"/v1/artifacts/{student['id']}/export",
            headers=bearer(w.a.user_token),
            json={"region": "kr-daejeon", "jurisdiction": "KR"},
        )
    )
    assert allowed["decision"]["allowed"] is True
    dl = ok(w.client.get(f"/v1/artifacts/{student['id']}/download", headers=bearer(w.a.user_token)))
    assert dl["sha256"] == "ab" * 32
    events = ok(
        w.client.get(
            "/v1/audit/events",
            headers=bearer(w.auditor_token),
            params={"stream": w.a.member["id"], "limit": 1000},
        )
    )["items"]
    exports = [(e["action"], e["outcome"]) for e in events if e["action"].startswith("artifact.")]
    assert ("artifact.export", "denied") in exports and ("artifact.export", "success") in exports
    assert ("artifact.download", "success") in exports


def test_relabelling_an_input_reaches_derived_artifacts(w: World) -> None:
    ds = dataset(w, "wide")
    job = ok(submit(w, inputs=[ds["id"]]), 201)
    art = register_artifact(w.client, job["id"])
    ok(
        w.client.post(
            f"/v1/artifacts/{art['id']}/export",
            headers=bearer(w.a.user_token),
            json={"region": "us-west", "jurisdiction": "US"},
        )
    )
    ok(
        w.client.patch(
            f"/v1/datasets/{ds['id']}",
            headers=bearer(w.a.user_token),
            json={"labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]}},
        )
    )
    resp = w.client.post(
        f"/v1/artifacts/{art['id']}/export",
        headers=bearer(w.a.user_token),
        json={"region": "us-west", "jurisdiction": "US"},
    )
    assert resp.status_code == 403
    # The stored label is unchanged (immutable); the decision uses the stricter lineage.
    stored = ok(w.client.get(f"/v1/artifacts/{art['id']}", headers=bearer(w.a.user_token)))
    assert "us-west" in stored["labels"]["allowed_regions"]


def test_dry_run_says_where_and_why(w: World) -> None:
    ds = dataset(w, "pi-data", personal_info=True)
    out = ok(
        w.client.post(
            "/v1/policies/where",
            headers=bearer(w.a.user_token),
            json={"model": "axk1", "inputs": ["pi-data"]},
        )
    )
    assert out["allowed_pools"] == ["kr-test-h100", "kr-test-h200"]
    us = out["pools"]["us-test-h100"]
    assert us["allowed"] is False and us["policy_ids"]
    assert out["output_labels"]["personal_info"] is True
    assert set(out["output_labels"]["allowed_regions"]) == {"kr-seoul", "kr-daejeon"}
    assert ds["id"]
