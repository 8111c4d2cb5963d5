"""The portal's Endpoints pages over the real app and database (SQLite and PostgreSQL): the
create form through the same service as ``/v1/endpoints`` (errors inline, nothing written),
member scoping (another member's endpoint is a 404 page exactly like a missing one),
replicas and where they run, deletion, and the playground through the gateway (its refusal
when no replica is ready, within a short bound; its answer and usage from a replica)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from controlplane.db.models import Endpoint, Job, TokenUsage, User
from controlplane.portal import endpoints as portal_endpoints
from controlplane.serving.names import SERVE_KIND
from tests.conftest import World, bearer, ok
from tests.integration.portal.test_portal import (
    audit_actions,
    confirmed,
    csrf,
    engine_session,
    signed_in,
)

POOL = "kr-test-h200"  # the World's pool
FORM = {
    "name": "chat",
    "model": "axk1-tiny",
    "min_replicas": "1",
    "max_replicas": "2",
    "gpus_per_replica": "1",
    "priority_class": "production-inference",
    "max_context": "512",
    "max_tokens_default": "64",
    "idle_s": "120",
    "allowed_pools": POOL,
}


def endpoints_of(w: World, token: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(w.client.get("/v1/endpoints", headers=bearer(token)))["items"]
    return items


def create_in_form(client: TestClient, **fields: str) -> Any:
    token = csrf(client, "/portal/endpoints/new")
    return client.post("/portal/endpoints/new", data={**FORM, **fields, "csrf": token})


def api_create(w: World, token: str, name: str, **body: Any) -> dict[str, Any]:
    made: dict[str, Any] = ok(
        w.client.post(
            "/v1/endpoints",
            headers=bearer(token),
            json={"name": name, "model": "axk1-tiny", **body},
        ),
        201,
    )
    return made


def test_create_list_detail_delete(world: World) -> None:
    client = signed_in(world, world.a.user_token)
    listed = client.get("/portal/endpoints")
    assert listed.status_code == 200 and 'data-testid="no-endpoints"' in listed.text
    assert 'href="/portal/endpoints" aria-current="page"' in listed.text  # the navigation

    resp = create_in_form(client)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == "/portal/endpoints/chat"
    [made] = endpoints_of(world, world.a.user_token)
    assert (made["min_replicas"], made["max_replicas"], made["allowed_pools"]) == (1, 2, [POOL])
    assert made["config"]["max_context"] == 512 and made["config"]["idle_s"] == 120
    assert made["priority_class"] == "production-inference"
    assert audit_actions(world, world.a.member["id"]).count("endpoint.create") == 1

    listed = client.get("/portal/endpoints")
    row = re.search(r'<tr data-endpoint="chat">.*?</tr>', listed.text, re.S)
    assert row, listed.text
    assert "axk1-tiny" in row.group(0) and "waiting for a replica" in row.group(0)

    detail = client.get("/portal/endpoints/chat")
    assert detail.status_code == 200
    assert "0 ready of 1 desired (between 1 and 2)" in detail.text
    assert 'data-testid="no-replicas"' in detail.text and "/openai/v1" in detail.text
    assert 'name="prompt"' in detail.text  # a member's user plays

    # Delete asks first: the question names the endpoint, and nothing changes until confirmed.
    asked = client.post("/portal/endpoints/chat/delete", data={"csrf": csrf(client)})
    assert asked.status_code == 200 and 'data-testid="confirm"' in asked.text, asked.text
    assert "Delete endpoint chat?" in asked.text
    assert 'href="/portal/endpoints/chat"' in asked.text  # "No, go back"
    assert [e["name"] for e in endpoints_of(world, world.a.user_token)] == ["chat"]
    assert "endpoint.delete" not in audit_actions(world, world.a.member["id"])
    gone = confirmed(client, "/portal/endpoints/chat/delete", {"csrf": csrf(client)})
    assert gone.status_code == 303 and gone.headers["location"] == "/portal/endpoints"
    assert "The endpoint was deleted" in client.get("/portal/endpoints").text  # said once
    assert endpoints_of(world, world.a.user_token) == []
    assert client.get("/portal/endpoints/chat").status_code == 404
    assert audit_actions(world, world.a.member["id"]).count("endpoint.delete") == 1


@pytest.mark.parametrize(
    ("fields", "needle", "status"),
    [
        (
            {"min_replicas": "3", "max_replicas": "2"},
            "min_replicas (3) exceeds max_replicas (2)",
            422,
        ),
        ({"allowed_pools": "nowhere"}, "unknown pool &#39;nowhere&#39;", 422),
        ({"model": "no-such-model"}, "no-such-model", 422),
        ({"name": "Bad_Name"}, "name: should be a name: lowercase letters", 422),
        ({"max_context": "64", "max_tokens_default": "64"}, "must be below max_context", 422),
        ({"gpus_per_replica": "16"}, "fits no node of an allowed pool", 422),
        ({"idle_s": "inf"}, "idle_s", 422),
        ({"max_replicas": "²"}, "max_replicas", 422),
    ],
)
def test_a_bad_form_is_the_form_again_with_the_apis_message_and_nothing_written(
    world: World, fields: dict[str, str], needle: str, status: int
) -> None:
    client = signed_in(world, world.a.user_token)
    resp = create_in_form(client, **fields)
    assert resp.status_code == status, resp.text
    errors = re.search(r'data-testid="form-errors">(.*?)</div>', resp.text, re.S)
    assert errors and "The endpoint was not created." in errors.group(1), resp.text
    assert needle in errors.group(1), errors.group(1)
    # What was typed is shown again.
    assert f'value="{fields.get("max_replicas", "2")}"' in resp.text
    assert endpoints_of(world, world.a.user_token) == []
    assert "endpoint.create" not in audit_actions(world, world.a.member["id"])


def test_forms_need_the_sessions_csrf_token(world: World) -> None:
    client = signed_in(world, world.a.user_token)
    assert client.post("/portal/endpoints/new", data=FORM).status_code == 403
    api_create(world, world.a.user_token, "chat")
    assert client.post("/portal/endpoints/chat/delete", data={}).status_code == 403
    assert client.post("/portal/endpoints/chat/playground", data={"prompt": "x"}).status_code == 403
    assert [e["name"] for e in endpoints_of(world, world.a.user_token)] == ["chat"]


def test_another_members_endpoint_is_a_404_page_exactly_like_a_missing_one(world: World) -> None:
    api_create(world, world.b.user_token, "secret")
    client = signed_in(world, world.a.user_token)
    theirs = client.get("/portal/endpoints/secret")
    missing = client.get("/portal/endpoints/absent")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.text.replace("secret", "absent") == missing.text.replace("secret", "absent")
    assert 'data-testid="error-code">not_found<' in theirs.text
    token = csrf(client)
    for path in ("/portal/endpoints/secret/delete", "/portal/endpoints/secret/playground"):
        refused = client.post(path, data={"csrf": token, "prompt": "hi"})
        assert refused.status_code == 404, refused.text
    assert "secret" not in client.get("/portal/endpoints").text
    # Still there, untouched, for its owner; nothing was charged to anyone.
    assert [e["name"] for e in endpoints_of(world, world.b.user_token)] == ["secret"]
    with engine_session(world) as s:
        assert s.exec(select(TokenUsage)).all() == []


def test_an_auditor_reads_but_neither_creates_nor_plays(world: World) -> None:
    api_create(world, world.a.user_token, "chat")
    client = signed_in(world, world.auditor_token)
    listed = client.get("/portal/endpoints")
    assert 'data-endpoint="chat"' in listed.text and "Create an endpoint" not in listed.text
    assert "does not create endpoints" in client.get("/portal/endpoints/new").text
    refused = client.post("/portal/endpoints/new", data={**FORM, "csrf": csrf(client)})
    assert (
        refused.status_code == 403 and endpoints_of(world, world.a.user_token)[0]["name"] == "chat"
    )


def seed_replicas(w: World, name: str) -> tuple[str, str]:
    """A guaranteed replica running on two nodes and a burst one waiting, for ``name``."""
    with engine_session(w) as s:
        ep = s.exec(select(Endpoint).where(Endpoint.name == name)).one()
        user = s.exec(select(User).where(User.member_id == ep.member_id)).first()
        assert user is not None
        common: dict[str, Any] = dict(
            member_id=ep.member_id, submitter_id=user.id, name=f"{name}-replica", kind=SERVE_KIND,
            model=ep.model, gpus=1, nodes=1, gpus_per_node=1, priority_class="research",
            max_runtime_s=10**6, endpoint_id=ep.id,
        )  # fmt: skip
        s.add(Job(id="job_replica0", status="RUNNING", pool=POOL, preemptible=False,
                  assignment=[["kr-test-h200-n0", 1]], config={"replica": 0},
                  **common))  # fmt: skip
        s.add(Job(id="job_replica1", status="QUEUED", preemptible=True, config={"replica": 1},
                  reasons=[{"code": "quota_exhausted", "message": "no GPUs left to borrow"}],
                  **common))  # fmt: skip
        s.commit()
    return "job_replica0", "job_replica1"


def test_replicas_show_where_they_run_and_why_they_wait(world: World) -> None:
    api_create(world, world.a.user_token, "chat", min_replicas=1, max_replicas=2)
    running, waiting = seed_replicas(world, "chat")
    client = signed_in(world, world.a.user_token)
    detail = client.get("/portal/endpoints/chat").text
    first = re.search(rf'<tr data-replica="{running}">.*?</tr>', detail, re.S)
    second = re.search(rf'<tr data-replica="{waiting}">.*?</tr>', detail, re.S)
    assert first and second, detail
    for needle in ("RUNNING", "guaranteed", POOL, "kr-test-h200-n0", f"/portal/jobs/{running}"):
        assert needle in first.group(0)
    for needle in ("QUEUED", "burst (preemptible)", "quota_exhausted", "no GPUs left to borrow"):
        assert needle in second.group(0)
    assert "1 ready of 1 desired" in detail
    row = re.search(
        r'<tr data-endpoint="chat">.*?</tr>', client.get("/portal/endpoints").text, re.S
    )
    assert row and f"{POOL}: kr-test-h200-n0" in row.group(0) and "QUEUED" in row.group(0)


def play(client: TestClient, name: str, **fields: str) -> Any:
    data = {"prompt": "the cat sat on the", "max_tokens": "8", **fields}
    return client.post(f"/portal/endpoints/{name}/playground", data={**data, "csrf": csrf(client)})


def ledger(w: World) -> list[TokenUsage]:
    with engine_session(w) as s:
        return list(s.exec(select(TokenUsage)).all())


def test_playground_without_a_ready_replica_shows_the_gateways_503(world: World) -> None:
    api_create(world, world.a.user_token, "chat", config={"cold_start_timeout_s": 1})
    client = signed_in(world, world.a.user_token)
    resp = play(client, "chat")
    assert resp.status_code == 503, resp.text
    shown = re.search(r'data-testid="playground-error">(.*?)</div>', resp.text, re.S)
    assert shown, resp.text
    assert "no_replica_ready" in shown.group(1) and "within 1 s" in shown.group(1)
    assert "Retry after" in shown.group(1)
    assert "the cat sat on the</textarea>" in resp.text  # the prompt is kept
    # The reservation was settled (nothing charged), as for any client the gateway refused.
    [row] = ledger(world)
    assert row.settled_at is not None and row.prompt_tokens + row.completion_tokens == 0


def test_playground_waits_at_most_its_bound(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    api_create(world, world.a.user_token, "chat")  # the gateway would wait 60 s
    monkeypatch.setattr(portal_endpoints, "PLAYGROUND_WAIT_S", 0.5)
    client = signed_in(world, world.a.user_token)
    resp = play(client, "chat")
    assert resp.status_code == 504, resp.text
    assert "playground_timeout" in resp.text and "no answer within 0.5 s" in resp.text
    assert all(r.settled_at is not None for r in ledger(world))


def test_playground_refusals_are_the_gateways(world: World) -> None:
    api_create(world, world.a.user_token, "chat")
    client = signed_in(world, world.a.user_token)
    bad = play(client, "chat", max_tokens="0")
    assert bad.status_code == 400 and "&#39;max_tokens&#39; must be a positive integer" in bad.text
    # A token without the inference scope: no form, and a post is the gateway's 403.
    token = ok(
        world.client.post(
            "/v1/tokens",
            headers=bearer(world.a.user_token),
            json={"name": "r", "scopes": ["read", "write"]},
        ),
        201,
    )["token"]
    reader = signed_in(world, token)
    assert 'name="prompt"' not in reader.get("/portal/endpoints/chat").text
    refused = play(reader, "chat")
    assert refused.status_code == 403 and "insufficient_scope" in refused.text
    assert ledger(world) == []


def test_usage_page_shows_tokens_beside_gpu_hours(world: World) -> None:
    """The tokens an endpoint served this period, and a budget's token cap, on /portal/usage;
    another member sees neither."""
    from datetime import UTC, datetime

    from controlplane import usage as usage_periods

    made = api_create(world, world.a.user_token, "chat")
    now = datetime.now(UTC)
    quarter = f"{now.year}-Q{(now.month - 1) // 3 + 1}"  # this quarter's budget, capped
    if quarter == world.a.budget["period"]:
        path = f"/v1/budgets/{world.a.budget['id']}"
        ok(world.client.patch(path, headers=world.root, json={"tokens": 5000}))
    else:
        body = {"member": "alpha", "period": quarter, "gpu_hours": 10, "tokens": 5000}
        ok(world.client.post("/v1/budgets", headers=world.root, json=body), 201)
    with engine_session(world) as s:
        s.add(
            TokenUsage(
                member_id=world.a.member["id"],
                endpoint_id=made["id"],
                period=usage_periods.period_of(now),
                created_at=now,
                settled_at=now,
                prompt_tokens=120,
                completion_tokens=30,
                outcome="stop",
            )
        )
        s.commit()
    page = signed_in(world, world.a.user_token).get("/portal/usage")
    assert page.status_code == 200, page.text
    table = re.search(r'data-testid="tokens">(.*?)</table>', page.text, re.S)
    assert table is not None, page.text
    assert "chat" in table.group(1) and ">120<" in table.group(1) and ">150<" in table.group(1)
    assert "150 / 5000" in page.text  # this quarter's budget's token cap counts them
    other = signed_in(world, world.b.user_token).get("/portal/usage").text
    assert 'data-testid="tokens"' not in other and "No tokens served this period." in other
