"""Readable errors in the portal (SQLite and PostgreSQL): error pages keep the navigation and
sign-out, a residency refusal is a list of pools and rules (never a dict or JSON), and a field
of the wrong form says what is expected (never the regex)."""

from __future__ import annotations

import re
from pathlib import Path

from controlplane.portal import views
from tests.conftest import ADMIN_TOKEN, World, bearer, ok
from tests.integration.portal.test_portal import SUBMIT_PAGE, browser, csrf, signed_in

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
SIGN_OUT = 'action="/portal/logout"'
NAV = '<a href="/portal/endpoints"'


def assert_readable(text: str) -> None:
    for raw in ("{'", '"policy_ids":', "'policy_ids'", "^[", "String should match pattern"):
        assert raw not in text, (raw, text)


def test_error_pages_keep_the_navigation_and_sign_out(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    pages = [
        (alpha.get(f"/portal/jobs/{world.b.job['id']}"), 404),  # another member's job
        (alpha.get("/portal/users"), 403),  # a member user manages no users
    ]
    for resp, status in pages:
        assert resp.status_code == status, resp.text
        assert 'data-testid="error-code"' in resp.text
        assert NAV in resp.text and SIGN_OUT in resp.text, resp.text
        assert 'data-testid="who"' in resp.text and "user@alpha.example" in resp.text
    # Without a session there is nothing to navigate: the error page has no sign-out.
    resp = browser(world).get("/portal/no-such-page")
    assert resp.status_code == 404 and SIGN_OUT not in resp.text


def test_a_residency_refusal_is_a_list_of_pools_and_rules(world: World) -> None:
    ok(world.client.post("/v1/pools", headers=world.root, json=US_POOL), 201)
    ds = ok(
        world.client.post(
            "/v1/datasets",
            headers=bearer(world.a.user_token),
            json={
                "name": "seoul-only",
                "uri": "s3://alpha/seoul-only",
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            },
        ),
        201,
    )
    alpha = signed_in(world, world.a.user_token)
    form = {
        "csrf": csrf(alpha, SUBMIT_PAGE),
        "idempotency_key": "1" * 32,
        "kind": "lora",
        "model": "axk1-tiny",
        "gpus": "8",
        "allowed_pools": "us-test-h100",
        "inputs": ds["id"],
        "priority_class": "research",
        "max_runtime_h": "1",
    }
    resp = alpha.post("/portal/jobs/new", data=form)
    assert resp.status_code == 422, resp.text
    assert 'data-testid="refusal"' in resp.text, resp.text
    pools = resp.text.split('data-testid="refusal-pool"')[1:]
    assert len(pools) == 1 and "us-test-h100" in pools[0] and "not allowed" in pools[0], pools
    assert "<code>residency.schedule.region</code>" in pools[0]
    assert "residency.schedule.region" in pools[0].split("<ul>", 1)[1]  # its message
    assert "policy_set_hash" not in resp.text
    assert_readable(resp.text)
    assert NAV in resp.text and SIGN_OUT in resp.text


def test_an_endpoint_refusal_is_the_same_list(world: World) -> None:
    ok(world.client.post("/v1/pools", headers=world.root, json=US_POOL), 201)
    alpha = signed_in(world, world.a.user_token)
    form = {
        "csrf": csrf(alpha, "/portal/endpoints/new"),
        "name": "chat",
        "model": world.a.artifact["id"],  # trained on alpha's Korean data: stays in kr-seoul
        "min_replicas": "1",
        "max_replicas": "1",
        "gpus_per_replica": "1",
        "priority_class": "production-inference",
        "allowed_pools": "us-test-h100",
    }
    resp = alpha.post("/portal/endpoints/new", data=form)
    assert resp.status_code == 422, resp.text
    pools = resp.text.split('data-testid="refusal-pool"')[1:]
    assert len(pools) == 1 and "us-test-h100" in pools[0] and "not allowed" in pools[0], resp.text
    assert "<code>residency." in pools[0]
    assert_readable(resp.text)


def test_refusal_lines_are_built_from_the_api_details() -> None:
    details = {
        "pools": {
            "b-pool": {"allowed": True, "policy_ids": ["p.permit"], "reasons": ["ok"]},
            "a-pool": {
                "allowed": False,
                "policy_ids": ["r.region"],
                "reasons": ["r.region: data may not leave kr-seoul"],
                "errors": [],
            },
        },
        "policy_set_hash": "abc",
    }
    facts = views.error_facts("residency_denied", "no allowed pool", details)
    assert facts.lines == [] and facts.refused is not None
    assert [(p.pool, p.allowed, p.rules) for p in facts.refused] == [
        ("a-pool", False, ["r.region"]),
        ("b-pool", True, ["p.permit"]),
    ]
    # Other details are lines of text, never a dict.
    other = views.error_facts("x", "m", {"unknown": ["p1", "p2"], "requested": {"gpus": 8}})
    assert other.lines == ["requested: gpus: 8", "unknown: p1, p2"]


def test_a_field_of_the_wrong_form_says_what_is_expected(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    token = csrf(admin, "/portal/admin")
    budget = {"member": "alpha", "period": "someday", "gpu_hours": "1", "tokens_unlimited": "on"}
    resp = admin.post("/portal/admin/budgets", data={"csrf": token, **budget})
    assert resp.status_code == 422, resp.text
    assert "period: should be a period such as 2026-Q4, 2026-H1 or 2026-11" in resp.text
    assert_readable(resp.text)
    member = {"name": "Bad Name", "display_name": "X"}
    resp = admin.post("/portal/admin/members", data={"csrf": token, **member})
    assert resp.status_code == 422, resp.text
    assert "name: should be a name: lowercase letters, digits and dashes, up to 63" in resp.text
    assert_readable(resp.text)


def test_an_api_validation_error_page_is_in_words() -> None:
    msg = "String should match pattern '^[0-9]{4}-(Q[1-4]|H[12]|[0-9]{2})$'"
    error = {"loc": ["query", "period"], "msg": msg, "type": "string_pattern_mismatch"}
    facts = views.error_facts("validation_error", "query.period: " + msg, {"errors": [error]})
    assert facts.message == "query.period: should be a period such as 2026-Q4, 2026-H1 or 2026-11"
    unknown = {**error, "msg": "String should match pattern '^x$'"}
    assert views.problem_of(unknown) == "query.period: is not in the expected form"


def test_every_pattern_of_the_api_is_put_in_words() -> None:
    source = Path(views.__file__).resolve().parents[1].joinpath("api", "schemas.py").read_text()
    patterns = set(re.findall(r'pattern=r"([^"]+)"', source))
    assert patterns and patterns <= set(views.PATTERN_WORDS), patterns - set(views.PATTERN_WORDS)
