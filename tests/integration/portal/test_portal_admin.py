"""The platform admin's cluster page (SQLite and PostgreSQL): adding a member, setting a
quota (create, then change) and a budget through the inventory services, with their checks
and audit events; auditors read the page without forms; members cannot reach it."""

from __future__ import annotations

from tests.conftest import ADMIN_TOKEN, World, bearer, ok
from tests.integration.portal.test_portal import audit_actions, csrf, signed_in


def test_platform_admin_adds_a_member_and_sets_its_quota_and_budget(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    page = admin.get("/portal/admin")
    assert page.status_code == 200 and "kr-test-h200" in page.text and "alpha" in page.text
    token = csrf(admin, "/portal/admin")
    added = admin.post(
        "/portal/admin/members",
        data={"csrf": token, "name": "gamma-lab", "display_name": "Gamma Lab", "kind": "startup"},
    )
    assert added.status_code == 303, added.text
    members = ok(world.client.get("/v1/members", headers=world.root))["items"]
    gamma = next(m for m in members if m["name"] == "gamma-lab")
    assert gamma["kind"] == "startup" and gamma["country"] == "KR"

    quota = {
        "csrf": token,
        "member": "gamma-lab",
        "pool": "kr-test-h200",
        "nominal_gpus": "0",
        "lending_unlimited": "on",
    }
    assert (
        admin.post("/portal/admin/quotas", data={**quota, "borrowing_limit": "8"}).status_code
        == 303
    )
    # The same form again changes the quota instead of failing on the existing one; no limit
    # is a box ticked, never a blank field.
    assert (
        admin.post("/portal/admin/quotas", data={**quota, "borrowing_unlimited": "on"}).status_code
        == 303
    )
    quotas = ok(world.client.get("/v1/quotas?member=gamma-lab", headers=world.root))["items"]
    assert len(quotas) == 1
    assert quotas[0]["nominal_gpus"] == 0 and quotas[0]["borrowing_limit"] is None

    budget = {"csrf": token, "member": "gamma-lab", "period": "2026-Q4", "tokens_unlimited": "on"}
    assert (
        admin.post("/portal/admin/budgets", data={**budget, "gpu_hours": "500"}).status_code == 303
    )
    assert (
        admin.post("/portal/admin/budgets", data={**budget, "gpu_hours": "750.5"}).status_code
        == 303
    )
    budgets = ok(world.client.get("/v1/budgets?member=gamma-lab", headers=world.root))["items"]
    assert [b["gpu_hours"] for b in budgets] == [750.5]
    actions = audit_actions(world, gamma["id"])
    assert actions.count("quota.create") == 1 and actions.count("quota.update") == 1
    assert "budget.create" in actions and "budget.update" in actions


def test_refused_changes_are_shown_and_nothing_changes(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    token = csrf(admin, "/portal/admin")
    before = ok(world.client.get("/v1/quotas", headers=world.root))["items"]
    no_limits = {"borrowing_unlimited": "on", "lending_unlimited": "on"}
    cases = [
        (
            "/portal/admin/members",
            {"name": "alpha", "display_name": "Again"},
            409,
            "already exists",
        ),
        ("/portal/admin/members", {"name": "Bad Name", "display_name": "X"}, 422, "name"),
        # The pool has 32 GPUs and alpha and beta hold 16 nominal each.
        (
            "/portal/admin/quotas",
            {"member": "alpha", "pool": "kr-test-h200", "nominal_gpus": "40", **no_limits},
            422,
            "nominal",
        ),
        (
            "/portal/admin/quotas",
            {"member": "nobody", "pool": "kr-test-h200", "nominal_gpus": "1", **no_limits},
            404,
            "nobody",
        ),
        (
            "/portal/admin/quotas",
            {"member": "alpha", "pool": "kr-test-h200", "nominal_gpus": "lots", **no_limits},
            422,
            "nominal_gpus",
        ),
        (
            "/portal/admin/budgets",
            {"member": "alpha", "period": "someday", "gpu_hours": "1", "tokens_unlimited": "on"},
            422,
            "period",
        ),
    ]
    for path, data, status, words in cases:
        resp = admin.post(path, data={"csrf": token, **data})
        assert resp.status_code == status, (data, resp.text)
        assert 'data-testid="form-errors"' in resp.text and words in resp.text, data
    assert ok(world.client.get("/v1/quotas", headers=world.root))["items"] == before


def test_only_platform_admins_change_the_cluster(world: World) -> None:
    auditor = signed_in(world, world.auditor_token)
    page = auditor.get("/portal/admin")
    assert page.status_code == 200 and "Add member" not in page.text
    refused = auditor.post(
        "/portal/admin/members",
        data={"csrf": csrf(auditor, "/portal/admin"), "name": "sneaky", "display_name": "S"},
    )
    assert refused.status_code == 403
    member_admin = signed_in(world, world.a.admin_token)
    assert member_admin.get("/portal/admin").status_code == 403
    assert "/portal/admin" not in member_admin.get("/portal/jobs").text
    refused = member_admin.post(
        "/portal/admin/quotas",
        data={
            "csrf": csrf(member_admin),
            "member": "alpha",
            "pool": "kr-test-h200",
            "nominal_gpus": "32",
            "borrowing_unlimited": "on",
            "lending_unlimited": "on",
        },
    )
    assert refused.status_code == 403
    quota = ok(world.client.get("/v1/quotas?member=alpha", headers=bearer(world.a.admin_token)))
    assert quota["items"][0]["nominal_gpus"] == 16
