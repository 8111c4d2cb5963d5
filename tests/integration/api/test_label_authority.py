"""Labels only widen with authority (PATCH /v1/datasets/{ref}), on SQLite and PostgreSQL.

Any writer may make a dataset's residency labels stricter; making them less strict in any
part needs the member admin or the platform admin, and a member user gets 403
``labels_widening_forbidden`` naming the parts. Every change (and refusal) is audited with
the labels before and after. Queued jobs that read a narrowed dataset and may now run
nowhere say so at once; the next cycle's snapshot leaves out the pools they may no longer
use, and a running job's placement is refused (which is what stops it: see
tests/integration/scheduler/test_lifecycle.py for the run on Ray).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import Session

import quotas
from controlplane import residency
from controlplane.db.models import Job
from controlplane.scheduler.snapshot import build
from tests.conftest import World, bearer, ok
from tests.integration.api.test_residency import DJ_POOL, US_POOL

# The dataset every test starts from: personal information under a consent basis, sensitive.
START = {
    "jurisdiction": "KR",
    "allowed_regions": ["kr-daejeon", "kr-seoul", "us-west"],
    "classification": "sensitive",
    "personal_info": True,
    "transfer_basis": "consent",
}


@pytest.fixture
def w(world: World) -> World:
    for pool in (US_POOL, DJ_POOL):
        ok(world.client.post("/v1/pools", headers=world.root, json=pool), 201)
    return world


def register(w: World, name: str = "corpus", **labels: Any) -> dict[str, Any]:
    out: dict[str, Any] = ok(
        w.client.post(
            "/v1/datasets",
            headers=bearer(w.a.user_token),
            json={"name": name, "uri": f"s3://a/{name}", "labels": {**START, **labels}},
        ),
        201,
    )
    return out


def relabel(w: World, token: str, ds: dict[str, Any], **labels: Any) -> Any:
    return w.client.patch(
        f"/v1/datasets/{ds['id']}", headers=bearer(token), json={"labels": {**START, **labels}}
    )


def updates(w: World, ds: dict[str, Any]) -> list[dict[str, Any]]:
    events = ok(
        w.client.get(
            "/v1/audit/events",
            headers=bearer(w.auditor_token),
            params={"stream": w.a.member["id"], "limit": 1000},
        )
    )["items"]
    return [e for e in events if e["action"] == "dataset.update" and e["resource_id"] == ds["id"]]


def current(w: World, ds: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = ok(
        w.client.get(f"/v1/datasets/{ds['id']}", headers=bearer(w.a.user_token))
    )
    return out


def test_a_member_user_may_narrow_every_part(w: World) -> None:
    ds = register(w)
    steps: list[tuple[dict[str, Any], list[str]]] = [
        ({"allowed_regions": ["kr-daejeon", "kr-seoul"]}, ["allowed_regions"]),
        ({"classification": "classified"}, ["classification"]),
        ({"transfer_basis": None}, ["transfer_basis"]),  # personal data stays in Korea now
    ]
    labels = dict(START)
    for change, narrowed in steps:
        labels.update(change)
        out = ok(relabel(w, w.a.user_token, ds, **labels))
        assert out["labels"] == labels
        event = updates(w, ds)[-1]
        assert event["outcome"] == "success" and event["actor"] == w.a.user["id"]
        assert event["details"]["labels"]["narrowed"] == narrowed
        assert event["details"]["labels"]["widened"] == []
        assert event["details"]["labels"]["after"] == labels
    assert current(w, ds)["version"] == ds["version"] + 3
    # Personal information first declared: that narrows, whatever jurisdiction it names.
    plain = register(w, "plain", personal_info=False, transfer_basis=None)
    ok(relabel(w, w.a.user_token, plain, jurisdiction="US", transfer_basis="contract"))
    event = updates(w, plain)[-1]
    assert event["details"]["labels"]["narrowed"] == ["personal_info", "jurisdiction"]
    assert event["details"]["labels"]["before"]["personal_info"] is False
    # The same labels again are no label change (nothing to compare, nothing re-checked).
    ok(relabel(w, w.a.user_token, plain, jurisdiction="US", transfer_basis="contract"))
    assert "labels" not in updates(w, plain)[-1]["details"]


@pytest.mark.parametrize(
    ("change", "widens"),
    [
        ({"allowed_regions": ["kr-daejeon", "kr-seoul", "us-west", "jp-tokyo"]}, "allowed_regions"),
        ({"allowed_regions": ["kr-seoul", "jp-tokyo"]}, "allowed_regions"),  # not a subset
        ({"classification": "open"}, "classification"),
        ({"personal_info": False}, "personal_info"),
        ({"transfer_basis": "contract"}, "transfer_basis"),  # a different legal ground
        ({"jurisdiction": "US"}, "jurisdiction"),
    ],
)
def test_a_member_user_may_not_widen(w: World, change: dict[str, Any], widens: str) -> None:
    ds = register(w)
    resp = w.client.patch(
        f"/v1/datasets/{ds['id']}",
        headers=bearer(w.a.user_token),
        json={"labels": {**START, **change}, "description": "riding along"},
    )
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["code"] == "labels_widening_forbidden"
    assert body["details"]["widening"] == [widens]
    assert widens in body["message"]
    assert body["details"]["required_roles"] == ["member_admin", "platform_admin"]
    # Nothing of the request happened...
    after = current(w, ds)
    assert after["labels"] == ds["labels"] and after["version"] == ds["version"]
    assert after["description"] == ds["description"]
    # ...and the refusal is in the member's audit stream with both labels.
    denied = updates(w, ds)[-1]
    assert denied["outcome"] == "denied" and denied["actor"] == w.a.user["id"]
    assert denied["details"]["code"] == "labels_widening_forbidden"
    assert denied["details"]["widened"] == [widens]
    assert denied["details"]["before"] == ds["labels"]
    assert denied["details"]["after"] == {**START, **change}


def test_a_basis_where_there_was_none_needs_the_admin(w: World) -> None:
    ds = register(w, transfer_basis=None)
    resp = relabel(w, w.a.user_token, ds, transfer_basis="consent")
    assert resp.status_code == 403 and resp.json()["details"]["widening"] == ["transfer_basis"]


@pytest.mark.parametrize("who", ["member_admin", "platform_admin"])
def test_admins_may_widen_and_it_is_audited(w: World, who: str) -> None:
    ds = register(w)
    token = w.a.admin_token if who == "member_admin" else w.root["Authorization"].split()[1]
    wider = {
        "allowed_regions": ["kr-daejeon", "kr-seoul", "us-west", "jp-tokyo"],
        "classification": "open",
        "personal_info": False,
        "transfer_basis": None,
        "jurisdiction": "US",
    }
    out = ok(relabel(w, token, ds, **wider))
    assert out["labels"] == {**START, **wider} and out["version"] == ds["version"] + 1
    event = updates(w, ds)[-1]
    assert event["outcome"] == "success" and event["actor_role"] == who
    labels = event["details"]["labels"]
    assert labels["before"] == ds["labels"] and labels["after"] == {**START, **wider}
    assert labels["widened"] == [
        "allowed_regions",
        "classification",
        "personal_info",
        "jurisdiction",
    ]
    # Then a member user may narrow again.
    ok(relabel(w, w.a.user_token, ds, **{**wider, "allowed_regions": ["us-west"]}))


def test_only_writers_of_the_member_relabel(w: World) -> None:
    ds = register(w)
    wider = {"classification": "open"}
    assert relabel(w, w.b.admin_token, ds, **wider).status_code == 404
    assert relabel(w, w.auditor_token, ds, **wider).status_code == 403
    assert current(w, ds)["labels"] == ds["labels"]


def submit(w: World, ds: dict[str, Any], **body: Any) -> dict[str, Any]:
    job: dict[str, Any] = ok(
        w.client.post(
            "/v1/jobs",
            headers=bearer(w.a.user_token),
            json={"kind": "finetune", "model": "student-tiny", "gpus": 8, "inputs": [ds["id"]]}
            | body,
        ),
        201,
    )
    return job


def test_a_narrowing_reaches_queued_and_running_jobs(w: World) -> None:
    plain = {"personal_info": False, "transfer_basis": None, "classification": "open"}
    ds = register(w, **plain)
    us_only = submit(w, ds, allowed_pools=["us-test-h100"])
    anywhere = submit(w, ds)
    unrelated = register(w, "other", **plain)
    other = submit(w, unrelated, allowed_pools=["us-test-h100"])
    engine = w.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        before = residency.placement(s, s.get(Job, us_only["id"]), "us-test-h100")
    assert before.allowed

    narrower = {"allowed_regions": ["kr-seoul", "kr-daejeon"]}
    ok(relabel(w, w.a.user_token, ds, **{**plain, **narrower}))

    # At once: the job that may run only in us-west says why it waits.
    stranded = ok(w.client.get(f"/v1/jobs/{us_only['id']}", headers=bearer(w.a.user_token)))
    assert stranded["status"] == "QUEUED"
    assert stranded["reasons"][0]["code"] == "no_allowed_pool"
    assert "corpus" in stranded["reasons"][0]["message"]
    assert stranded["queue_position"] is None
    event = updates(w, ds)[-1]
    assert event["details"]["queued_jobs_without_pool"] == [us_only["id"]]
    # Jobs with a pool left, and jobs not reading the dataset, are the scheduler's to explain.
    for job in (anywhere, other):
        left = ok(w.client.get(f"/v1/jobs/{job['id']}", headers=bearer(w.a.user_token)))
        assert left["reasons"] == job["reasons"]

    # The next cycle's snapshot leaves out the pools the jobs may no longer use.
    alive = {"us-test-h100-000", "kr-test-h100-000", "kr-test-h200-000"}
    with Session(engine) as s:
        snap = build(s, alive, datetime.now(UTC), quotas.EngineConfig())
        # A job running in us-west is refused its placement: the scheduler stops it.
        running = residency.placement(s, s.get(Job, us_only["id"]), "us-test-h100")
    pending = {p.job_id: p for p in snap.pending}
    assert pending[us_only["id"]].allowed_pools == ()
    assert set(pending[anywhere["id"]].allowed_pools) == {"kr-test-h200", "kr-test-h100"}
    assert pending[other["id"]].allowed_pools == ("us-test-h100",)
    assert not running.allowed and "residency.schedule.region" in running.policy_ids
    decisions = quotas.admit(snap, datetime.now(UTC).timestamp())
    assert decisions.pending_by_id()[us_only["id"]].reasons[0].code == "no_allowed_pool"


def test_a_narrowed_model_reaches_the_jobs_that_name_it(w: World) -> None:
    model = ok(
        w.client.post(
            "/v1/datasets",
            headers=bearer(w.a.user_token),
            json={
                "name": "my-model",
                "kind": "model",
                "uri": "s3://a/my-model",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul", "us-west"]},
            },
        ),
        201,
    )
    data = register(w, personal_info=False, transfer_basis=None, classification="open")
    job = submit(w, data, model="my-model", allowed_pools=["us-test-h100"])
    ok(
        w.client.patch(
            f"/v1/datasets/{model['id']}",
            headers=bearer(w.a.user_token),
            json={"labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]}},
        )
    )
    waiting = ok(w.client.get(f"/v1/jobs/{job['id']}", headers=bearer(w.a.user_token)))
    assert waiting["reasons"][0]["code"] == "no_allowed_pool"
