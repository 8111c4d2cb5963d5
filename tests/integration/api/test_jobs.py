"""Job submission, idempotency, listing, cancellation and events through the REST API."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlmodel import Session, select

from controlplane.db.models import Job, JobEvent
from tests.conftest import World, bearer, ok

# A real job reads registered data: the world's dataset of member alpha.
LORA = {"kind": "lora", "model": "axk1-tiny", "gpus": 8, "inputs": ["alpha-corpus"]}
LORA_B = {**LORA, "inputs": ["beta-corpus"]}


def submit(w: World, body: dict[str, Any], key: str | None = None, token: str | None = None):
    headers = bearer(token or w.a.user_token)
    if key is not None:
        headers["Idempotency-Key"] = key
    return w.client.post("/v1/jobs", headers=headers, json=body)


def count_jobs(w: World) -> int:
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        return len(s.exec(select(Job)).all())


def test_submit_persists_a_queued_job_with_its_first_event(world: World) -> None:
    resp = submit(
        world,
        {
            **LORA,
            "name": "my-lora",
            "inputs": ["alpha-corpus"],
            "allowed_pools": ["kr-test-h200"],
            "max_runtime_s": 3600,
        },
    )
    job = ok(resp, 201)
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "QUEUED" and job["attempt"] == 1
    assert (job["nodes"], job["gpus_per_node"]) == (1, 8)
    assert job["inputs"] == [world.a.dataset["id"]], "inputs are stored by id"
    assert job["member_id"] == world.a.member["id"]
    assert job["submitter_id"] == world.a.user["id"]
    assert job["priority_class"] == "research" and job["preemptible"] is True
    events = ok(
        world.client.get(f"/v1/jobs/{job['id']}/events", headers=bearer(world.a.user_token))
    )["items"]
    assert [(e["type"], e["to_status"]) for e in events] == [("submitted", "QUEUED")]


def test_shape_is_derived_for_multi_node_requests(world: World) -> None:
    job = ok(submit(world, {**LORA, "gpus": 16}), 201)
    assert (job["nodes"], job["gpus_per_node"]) == (2, 8)
    # Multi-node jobs take whole nodes: 2 x 2 GPUs is refused, 2 x 8 is derived from 16.
    resp = submit(world, {**LORA, "gpus": 4, "nodes": 2})
    assert resp.status_code == 422 and resp.json()["code"] == "exceeds_capacity"


def test_client_cannot_set_server_owned_fields(world: World) -> None:
    for field, value in (
        ("member_id", world.b.member["id"]),
        ("status", "RUNNING"),
        ("id", "job_mine"),
        ("attempt", 7),
        ("submitter_id", "usr_x"),
    ):
        resp = submit(world, {**LORA, field: value})
        assert resp.status_code == 422, field
        assert resp.json()["code"] == "validation_error"
        assert field in resp.json()["message"]


def test_same_key_same_body_returns_the_same_job(world: World) -> None:
    first = submit(world, LORA, key="nightly-1")
    again = submit(world, LORA, key="nightly-1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"]
    assert count_jobs(world) == 3  # the two of the world + this one


def test_same_key_different_body_is_409_and_changes_nothing(world: World) -> None:
    first = ok(submit(world, LORA, key="nightly-2"), 201)
    resp = submit(world, {**LORA, "gpus": 16}, key="nightly-2")
    assert resp.status_code == 409
    body = resp.json()
    assert body["code"] == "idempotency_conflict"
    assert body["details"]["job_id"] == first["id"]
    assert count_jobs(world) == 3


def test_idempotency_keys_are_per_member(world: World) -> None:
    a = ok(submit(world, LORA, key="shared-key"), 201)
    b = ok(submit(world, LORA_B, key="shared-key", token=world.b.user_token), 201)
    assert a["id"] != b["id"]
    # And B's key reveals nothing about A's job, even with a different body.
    resp = submit(world, {**LORA_B, "gpus": 1}, key="shared-key", token=world.b.user_token)
    assert resp.status_code == 409 and resp.json()["details"]["job_id"] == b["id"]


def test_concurrent_submissions_with_one_key_make_one_job(sqlite_world: World) -> None:
    w = sqlite_world
    results: list[int] = []
    ids: list[str] = []

    def go() -> None:
        r = submit(w, LORA, key="race-1")
        results.append(r.status_code)
        ids.append(r.json()["id"])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results).count(201) == 1, results
    assert set(results) <= {200, 201}
    assert len(set(ids)) == 1
    assert count_jobs(w) == 3


def test_list_filters_and_cursor_pagination(world: World) -> None:
    created = [ok(submit(world, {**LORA, "name": f"j{i}"}), 201)["id"] for i in range(7)]
    ok(
        submit(
            world,
            {"kind": "inference", "model": "axk1-tiny", "gpus": 1, "inputs": ["alpha-corpus"]},
        ),
        201,
    )
    token = bearer(world.a.user_token)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "kind": "lora"}
        if cursor:
            params["cursor"] = cursor
        page = ok(world.client.get("/v1/jobs", headers=token, params=params))
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 8  # 7 + the world's job
    assert seen == sorted(seen, reverse=True), "newest first"
    assert set(created) <= set(seen)
    ok(world.client.post(f"/v1/jobs/{created[0]}/cancel", headers=token, json={}))
    cancelled = ok(world.client.get("/v1/jobs", headers=token, params={"status": "CANCELLED"}))[
        "items"
    ]
    assert [j["id"] for j in cancelled] == [created[0]]
    both = ok(
        world.client.get(
            "/v1/jobs", headers=token, params=[("status", "CANCELLED"), ("status", "QUEUED")]
        )
    )["items"]
    assert len(both) == 9
    mine = ok(
        world.client.get(
            "/v1/jobs", headers=bearer(world.a.admin_token), params={"submitter": "me"}
        )
    )["items"]
    assert mine == []


def test_cancel_is_recorded_and_final(world: World) -> None:
    job_id = world.a.job["id"]
    token = bearer(world.a.user_token)
    job = ok(
        world.client.post(
            f"/v1/jobs/{job_id}/cancel", headers=token, json={"reason": "wrong dataset"}
        )
    )
    assert job["status"] == "CANCELLED" and job["finished_at"] is not None
    events = ok(world.client.get(f"/v1/jobs/{job_id}/events", headers=token))["items"]
    assert events[-1]["from_status"] == "QUEUED" and events[-1]["to_status"] == "CANCELLED"
    assert events[-1]["message"] == "wrong dataset"
    assert events[-1]["actor"] == world.a.user["id"]
    again = world.client.post(f"/v1/jobs/{job_id}/cancel", headers=token, json={})
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"
    assert again.json()["details"]["status"] == "CANCELLED"
    assert len(ok(world.client.get(f"/v1/jobs/{job_id}/events", headers=token))["items"]) == 2


def test_member_users_cancel_only_their_own_jobs(world: World) -> None:
    colleague = ok(
        world.client.post(
            "/v1/users",
            headers=bearer(world.a.admin_token),
            json={"email": "c@alpha.example", "name": "C"},
        ),
        201,
    )
    tok = ok(
        world.client.post(
            "/v1/tokens",
            headers=bearer(world.a.admin_token),
            json={"name": "c", "user_id": colleague["id"]},
        ),
        201,
    )["token"]
    resp = world.client.post(f"/v1/jobs/{world.a.job['id']}/cancel", headers=bearer(tok), json={})
    assert resp.status_code == 403
    # The colleague can still read it, and the member admin may cancel it.
    ok(world.client.get(f"/v1/jobs/{world.a.job['id']}", headers=bearer(tok)))
    ok(
        world.client.post(
            f"/v1/jobs/{world.a.job['id']}/cancel", headers=bearer(world.a.admin_token), json={}
        )
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({**LORA, "gpus": 4096}, "exceeds_capacity"),
        ({**LORA, "gpus": 40, "nodes": 5}, "exceeds_capacity"),  # 5 nodes, pool has 4
        ({**LORA, "gpus": 24, "nodes": 3}, "exceeds_capacity"),  # 3 in one domain of 2
        ({**LORA, "gpus": 16, "gpus_per_node": 16}, "exceeds_capacity"),
        ({**LORA, "gpus": 12}, "invalid_shape"),
        ({**LORA, "allowed_pools": ["mars-h100"]}, "unknown_pool"),
        ({**LORA, "inputs": ["nope"]}, "unknown_dataset"),
        ({**LORA, "model": "gpt-17"}, "unknown_model"),
        ({**LORA, "priority_class": "vip"}, "unknown_priority_class"),
        ({**LORA, "preemptible": False}, "invalid_preemptible"),
        ({**LORA, "gpus": 0}, "validation_error"),
        ({**LORA, "kind": "mining"}, "validation_error"),
        ({**LORA, "gpus": 8, "nodes": 3}, "validation_error"),
        ({**LORA, "max_runtime_s": 10}, "validation_error"),
        ({"model": "axk1", "gpus": 8}, "validation_error"),
        ({**LORA, "config": {"x": "y" * 70_000}}, "config_too_large"),
    ],
)
def test_bad_submissions_are_4xx_and_persist_nothing(world: World, body: Any, code: str) -> None:
    before = count_jobs(world)
    resp = submit(world, body)
    assert 400 <= resp.status_code < 500, resp.text
    out = resp.json()
    assert set(out) == {"code", "message", "details"}
    assert out["code"] == code, out
    assert out["message"]
    assert count_jobs(world) == before


def test_spread_jobs_may_cross_domains(world: World) -> None:
    job = ok(submit(world, {**LORA, "gpus": 24, "nodes": 3, "same_domain": False}), 201)
    assert job["nodes"] == 3


def test_non_preemptible_classes_and_opt_in(world: World) -> None:
    job = ok(submit(world, {**LORA, "priority_class": "training"}), 201)
    assert job["preemptible"] is False
    job = ok(submit(world, {**LORA, "priority_class": "training", "preemptible": True}), 201)
    assert job["preemptible"] is True


def test_events_are_ordered_and_scoped(world: World) -> None:
    with Session(world.client.app.state.engine) as s:  # type: ignore[attr-defined]
        n = len(s.exec(select(JobEvent).where(JobEvent.job_id == world.a.job["id"])).all())
    events = ok(
        world.client.get(f"/v1/jobs/{world.a.job['id']}/events", headers=bearer(world.a.user_token))
    )["items"]
    assert len(events) == n == 1


def test_the_plan_refuses_too_few_gpus_and_is_served(world: World) -> None:
    # Sized from the configuration alone (the synthetic payload needs no weights).
    synthetic = {"payload": "synthetic"}
    resp = submit(world, {"kind": "lora", "model": "axk1", "gpus": 8, "config": synthetic})
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "insufficient_gpus"
    plan = body["details"]["plans"]["kr-test-h200"]
    assert plan["gpus"] == 16 and plan["nodes"] == 2
    assert "needs at least 16 GPUs" in body["message"]
    ok(submit(world, {"kind": "lora", "model": "axk1", "gpus": 16, "config": synthetic}), 201)
    served = ok(
        world.client.post(
            "/v1/plan",
            headers=bearer(world.a.user_token),
            json={"model": "axk1", "kind": "inference", "precision": "fp8", "pool": "kr-test-h200"},
        )
    )
    assert served["gpus"] == 8 and served["nodes"] == 1
    bad = world.client.post(
        "/v1/plan", headers=bearer(world.a.user_token), json={"model": "axk1", "kind": "juggling"}
    )
    assert bad.status_code == 422 and set(bad.json()) == {"code", "message", "details"}


def test_first_plans_under_concurrency_never_fail(sqlite_world: World) -> None:
    # Several threads planning at once (the first may import transformers): no 500s.
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from controlplane import planning\n"
        "errors = []\n"
        "def go():\n"
        "    try:\n"
        "        planning.check_submission('lora', 'axk1-tiny', None, {}, 8, 1,"
        " [('p', 141.0, 8)])\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "ts = [threading.Thread(target=go) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('ERRORS', errors)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERRORS []" in out.stdout, out.stdout + out.stderr
    assert sqlite_world.a.job["status"] == "QUEUED"
