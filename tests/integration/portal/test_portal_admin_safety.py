"""Safe admin actions in the portal (SQLite and PostgreSQL): quota and budget forms prefilled
with the current values, where a blank number is an error and "no limit" is ticked on purpose;
cancel, revoke and disable ask first (a direct post only shows the question); every change
says so once, in words nobody can craft; platform admins cancel any job; and the submit form
sent again (after going back) is the same job."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Response
from fastapi.testclient import TestClient

from controlplane.portal import notices
from tests.conftest import ADMIN_TOKEN, World, bearer, ok
from tests.integration.portal.test_portal import (
    audit_actions,
    confirmed,
    csrf,
    jobs_of,
    signed_in,
)
from tests.integration.portal.test_portal_endpoints import api_create

POOL = "kr-test-h200"
NO_LIMITS = {"borrowing_unlimited": "on", "lending_unlimited": "on"}


def value_of(page: str, element_id: str) -> str:
    found = re.search(rf'<input id="{element_id}"[^>]*value="([^"]*)"', page)
    assert found, (element_id, page)
    return found.group(1)


def ticked(page: str, element_id: str) -> bool:
    found = re.search(rf'<input type="checkbox"[^>]*id="{element_id}"([^>]*)>', page)
    assert found, (element_id, page)
    return "checked" in found.group(1)


def quota_of(w: World, member: str) -> dict[str, Any]:
    items = ok(w.client.get(f"/v1/quotas?member={member}&pool={POOL}", headers=w.root))["items"]
    assert len(items) == 1
    return dict(items[0])


def budget_of(w: World, member: str, period: str) -> dict[str, Any]:
    items = ok(w.client.get(f"/v1/budgets?member={member}", headers=w.root))["items"]
    return next(b for b in items if b["period"] == period)


def flash_of(client: TestClient, path: str) -> str | None:
    found = re.search(r'data-testid="flash">([^<]*)<', client.get(path).text)
    return found.group(1) if found else None


# -- prefilled forms -------------------------------------------------------------------------


def test_quota_and_budget_forms_show_the_current_values(world: World) -> None:
    ok(
        world.client.patch(
            f"/v1/quotas/{world.a.quota['id']}", headers=world.root, json={"borrowing_limit": 4}
        )
    )
    ok(
        world.client.patch(
            f"/v1/budgets/{world.a.budget['id']}", headers=world.root, json={"tokens": 50000}
        )
    )
    admin = signed_in(world, ADMIN_TOKEN)
    listing = admin.get("/portal/admin").text
    # Without a choice there is no quota form to send blindly, only the chooser and links.
    assert 'data-testid="quota-form"' not in listing and 'data-testid="quota-choose"' in listing
    assert f'href="/portal/admin?member=alpha&amp;pool={POOL}#quota"' in listing
    page = admin.get(f"/portal/admin?member=alpha&pool={POOL}&period=2026-Q4").text
    assert value_of(page, "quota-nominal_gpus") == "16"
    assert value_of(page, "quota-borrowing_limit") == "4"
    assert not ticked(page, "quota-borrowing_unlimited")
    assert value_of(page, "quota-lending_limit") == "" and ticked(page, "quota-lending_unlimited")
    assert (
        value_of(page, "budget-gpu_hours") == "1000" and value_of(page, "budget-tokens") == "50000"
    )
    assert not ticked(page, "budget-tokens_unlimited")
    assert 'name="member" value="alpha"' in page and 'name="period" value="2026-Q4"' in page
    # Beta's budget has no token cap: its box is ticked, the number blank.
    page = admin.get("/portal/admin?member=beta&period=2026-Q4").text
    assert value_of(page, "budget-tokens") == "" and ticked(page, "budget-tokens_unlimited")
    # A member with no quota there yet: an empty form that says it makes one, nothing ticked.
    ok(
        world.client.post(
            "/v1/members", headers=world.root, json={"name": "gamma", "display_name": "G"}
        ),
        201,
    )
    page = admin.get(f"/portal/admin?member=gamma&pool={POOL}").text
    assert "has no quota in" in page and value_of(page, "quota-nominal_gpus") == ""
    assert not ticked(page, "quota-borrowing_unlimited") and not ticked(
        page, "quota-lending_unlimited"
    )
    # An unknown member or pool opens no form (and a chosen name is never markup).
    page = admin.get("/portal/admin?member=<b>x</b>&pool=<i>y</i>").text
    assert 'data-testid="quota-form"' not in page and "<b>x</b>" not in page


def test_blank_numbers_are_errors_and_no_limit_is_a_choice(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    token = csrf(admin, "/portal/admin")
    quota = {"csrf": token, "member": "alpha", "pool": POOL, "nominal_gpus": "16"}
    before = quota_of(world, "alpha")
    for fields, field_id in [
        ({"borrowing_limit": "", "lending_unlimited": "on"}, "quota-borrowing_limit"),
        ({"borrowing_unlimited": "on"}, "quota-lending_limit"),  # lending left out
        ({"nominal_gpus": "", **NO_LIMITS}, "quota-nominal_gpus"),
        ({"borrowing_limit": "3", **NO_LIMITS}, "quota-borrowing_limit"),  # both: which?
    ]:
        resp = admin.post("/portal/admin/quotas", data={**quota, **fields})
        assert resp.status_code == 422, (fields, resp.text)
        assert 'data-testid="form-errors"' in resp.text and "Nothing was changed" in resp.text
        assert f'aria-describedby="{field_id}-error"' in resp.text, fields
        assert f'<p class="field-error" id="{field_id}-error"' in resp.text, fields
        assert quota_of(world, "alpha") == before
    # What was typed and ticked is still there.
    resp = admin.post(
        "/portal/admin/quotas", data={**quota, "borrowing_limit": "", "lending_limit": "5"}
    )
    assert value_of(resp.text, "quota-lending_limit") == "5"
    # Numbers where numbers are asked, and "no limit" ticked on purpose.
    resp = admin.post(
        "/portal/admin/quotas",
        data={**quota, "borrowing_limit": "6", "lending_unlimited": "on"},
    )
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == f"/portal/admin?member=alpha&pool={POOL}#quota"
    got = quota_of(world, "alpha")
    assert got["borrowing_limit"] == 6 and got["lending_limit"] is None
    resp = admin.post("/portal/admin/quotas", data={**quota, **NO_LIMITS})
    assert resp.status_code == 303
    assert quota_of(world, "alpha")["borrowing_limit"] is None

    budget = {"csrf": token, "member": "alpha", "period": "2026-Q4", "gpu_hours": "800"}
    for fields, field_id in [
        ({}, "budget-tokens"),
        ({"tokens": ""}, "budget-tokens"),
        ({"tokens": "10", "tokens_unlimited": "on"}, "budget-tokens"),
        ({"gpu_hours": "", "tokens_unlimited": "on"}, "budget-gpu_hours"),
    ]:
        resp = admin.post("/portal/admin/budgets", data={**budget, **fields})
        assert resp.status_code == 422, (fields, resp.text)
        assert f'<p class="field-error" id="{field_id}-error"' in resp.text, fields
        assert budget_of(world, "alpha", "2026-Q4")["gpu_hours"] == 1000
    assert (
        admin.post("/portal/admin/budgets", data={**budget, "tokens": "70000"}).status_code == 303
    )
    got = budget_of(world, "alpha", "2026-Q4")
    assert got["gpu_hours"] == 800 and got["tokens"] == 70000
    # Ticking "no token cap" removes the cap (the API's ``tokens: null``).
    resp = admin.post("/portal/admin/budgets", data={**budget, "tokens_unlimited": "on"})
    assert resp.status_code == 303
    assert budget_of(world, "alpha", "2026-Q4")["tokens"] is None
    # A new budget with a cap from the start.
    new = {**budget, "period": "2027-01", "gpu_hours": "12.5", "tokens": "9000"}
    assert admin.post("/portal/admin/budgets", data=new).status_code == 303
    got = budget_of(world, "alpha", "2027-01")
    assert got["gpu_hours"] == 12.5 and got["tokens"] == 9000
    page = admin.get("/portal/admin?member=alpha&period=2027-01").text
    assert (
        value_of(page, "budget-gpu_hours") == "12.5" and value_of(page, "budget-tokens") == "9000"
    )


# -- confirmations ---------------------------------------------------------------------------


def confirmation_asked(resp: Any) -> str:
    assert resp.status_code == 200, resp.text
    assert 'data-testid="confirm"' in resp.text and 'name="confirm"' in resp.text
    assert 'data-testid="confirm-back"' in resp.text
    return str(resp.text)


def test_cancel_revoke_and_disable_ask_first(world: World) -> None:
    user = signed_in(world, world.a.user_token)
    job_id, job_name = world.a.job["id"], world.a.job["name"]
    cancel = f"/portal/jobs/{job_id}/cancel"
    page = confirmation_asked(user.post(cancel, data={"csrf": csrf(user), "reason": "typo"}))
    assert f"Cancel job {job_id} ({job_name})? It will checkpoint and stop." in " ".join(
        re.sub(r"<[^>]+>", " ", page).split()
    )
    assert 'name="reason" value="typo"' in page and f'href="/portal/jobs/{job_id}"' in page
    # A confirmation value of another action, another target or another session does nothing.
    other_session = signed_in(world, world.a.user_token)
    forged = [
        "",
        "0" * 64,
        notices.confirm_token("nps_other", "cancel", job_id),
        notices.confirm_token(user.cookies["nuri_portal"], "revoke", job_id),
        notices.confirm_token(user.cookies["nuri_portal"], "cancel", world.b.job["id"]),
        notices.confirm_token(other_session.cookies["nuri_portal"], "cancel", job_id),
    ]
    for value in forged:
        confirmation_asked(user.post(cancel, data={"csrf": csrf(user), "confirm": value}))
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.a.user_token)))
    assert job["status"] == "QUEUED"
    assert "job.cancel" not in audit_actions(world, world.a.member["id"])
    # The confirmed post needs the CSRF token too.
    found = re.search(r'name="confirm" value="([0-9a-f]{64})"', page)
    assert found
    refused = user.post(cancel, data={"confirm": found.group(1)})
    assert refused.status_code == 403
    done = confirmed(user, cancel, {"csrf": csrf(user), "reason": "typo"})
    assert done.status_code == 303 and done.headers["location"] == f"/portal/jobs/{job_id}"
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.a.user_token)))
    assert job["status"] == "CANCELLED"
    # Another member's job is a 404 before any question.
    assert (
        user.post(f"/portal/jobs/{world.b.job['id']}/cancel", data={"csrf": csrf(user)}).status_code
        == 404
    )

    token_id = world.a.user_token_id
    revoke = f"/portal/tokens/{token_id}/revoke"
    admin = signed_in(world, world.a.admin_token)
    page = confirmation_asked(admin.post(revoke, data={"csrf": csrf(admin)}))
    assert "Revoke token" in page and "user@alpha.example" in page
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 200

    disable = f"/portal/users/{world.a.user['id']}/disable"
    page = confirmation_asked(admin.post(disable, data={"csrf": csrf(admin)}))
    assert "Disable user user@alpha.example" in page
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 200
    assert user.get("/portal/jobs").status_code == 200  # still signed in
    assert (
        admin.post(
            f"/portal/users/{world.b.user['id']}/disable", data={"csrf": csrf(admin)}
        ).status_code
        == 404
    )

    assert confirmed(admin, revoke, {"csrf": csrf(admin)}).status_code == 303
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 401


# -- messages after a change -----------------------------------------------------------------


def test_every_change_says_so_once(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    member_admin = signed_in(world, world.a.admin_token)
    user = signed_in(world, world.a.user_token)
    submit = {
        "idempotency_key": "1" * 32,
        "kind": "lora",
        "model": "axk1-tiny",
        "gpus": "1",
        "max_runtime_h": "1",
        "priority_class": "research",
        "inputs": "alpha-corpus",
    }
    a_user, a_token = world.a.user["id"], world.a.user_token_id
    quota = {"member": "delta", "pool": POOL, "nominal_gpus": "0", **NO_LIMITS}
    budget = {"member": "delta", "period": "2026-Q4", "gpu_hours": "5", "tokens_unlimited": "on"}
    # (who, form, fields, what the next page says); the dangerous ones are confirmed.
    changes: list[tuple[TestClient, str, dict[str, str], str]] = [
        (admin, "/portal/admin/members", {"name": "delta", "display_name": "D"}, "member_added"),
        (admin, "/portal/admin/quotas", quota, "quota_saved"),
        (admin, "/portal/admin/budgets", budget, "budget_saved"),
        (admin, "/portal/admin/pools", {"pool": POOL, "choice": "unlimited"}, "pool_saved"),
        (user, "/portal/jobs/new", submit, "job_submitted"),
        (user, "/portal/jobs/new", submit, "job_resent"),
        (user, f"/portal/jobs/{world.a.job['id']}/cancel", {}, "job_cancelled"),
        (user, "/portal/endpoints/chat/delete", {}, "endpoint_deleted"),
        (member_admin, "/portal/users", {"email": "n@alpha.example", "name": "N"}, "user_added"),
        (member_admin, f"/portal/users/{a_user}/disable", {}, "user_disabled"),
        (member_admin, f"/portal/users/{a_user}/enable", {}, "user_enabled"),
        (member_admin, f"/portal/tokens/{a_token}/revoke", {}, "token_revoked"),
    ]
    assert {key for *_, key in changes} == set(notices.MESSAGES)  # every message, every change
    api_create(world, world.a.user_token, "chat")
    before = len(jobs_of(world, world.a.admin_token))
    for client, path, fields, key in changes:
        data = {"csrf": csrf(client), **fields}
        asks_first = path.endswith(("/cancel", "/disable", "/revoke", "/delete"))
        resp = confirmed(client, path, data) if asks_first else client.post(path, data=data)
        assert resp.status_code == 303, (key, resp.text)
        assert flash_of(client, resp.headers["location"].split("#")[0]) == notices.MESSAGES[key]
        # Once: the next page is quiet.
        assert flash_of(client, "/portal/tokens") is None, key
    assert len(jobs_of(world, world.a.admin_token)) == before + 1  # one job for two sends


def test_crafted_messages_are_never_shown(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    secret = admin.cookies["nuri_portal"]
    other = signed_in(world, world.a.admin_token)
    resp = other.post(
        f"/portal/users/{world.a.user['id']}/enable", data={"csrf": csrf(other, "/portal/users")}
    )
    genuine_elsewhere = resp.cookies.get(notices.FLASH_COOKIE)
    assert genuine_elsewhere and genuine_elsewhere.startswith("user_enabled.")
    mac = genuine_elsewhere.split(".")[1]
    crafted = [
        "job_cancelled",  # no signature
        "job_cancelled.",
        f"job_cancelled.{mac}",  # another key's signature
        genuine_elsewhere,  # another session's message
        "<script>alert(1)</script>." + "0" * 32,
        "Your account is suspended, call +82-10-0000." + "0" * 32,
        "user_enabled." + "0" * 32,
        "user_enabled.x.y",
    ]
    for value in crafted:
        admin.cookies.set(notices.FLASH_COOKIE, value, path="/portal")
        page = admin.get("/portal/jobs").text
        assert 'data-testid="flash"' not in page, value
        assert "<script>alert" not in page and "suspended" not in page
    # The query string is never a message.
    for query in ("?flash=user_enabled", "?message=Pwned", "?done=job_cancelled"):
        assert 'data-testid="flash"' not in admin.get(f"/portal/jobs{query}").text
    # Only a value signed for this very session is shown.
    admin.cookies.set(
        notices.FLASH_COOKIE, f"quota_saved.{sign(secret, 'quota_saved')}", path="/portal"
    )
    assert flash_of(admin, "/portal/jobs") == notices.MESSAGES["quota_saved"]


def sign(secret: str, key: str) -> str:
    response = Response()
    notices.flash(response, secret, key)
    found = re.search(rf"{notices.FLASH_COOKIE}=([^;]+)", response.headers["set-cookie"])
    assert found
    return found.group(1).split(".")[1]


# -- cancel for platform admins ----------------------------------------------------------------


def test_platform_admins_cancel_any_job_from_its_page(world: World) -> None:
    job_id = world.b.job["id"]
    button = f'action="/portal/jobs/{job_id}/cancel"'
    assert button in signed_in(world, ADMIN_TOKEN).get(f"/portal/jobs/{job_id}").text
    assert button in signed_in(world, world.b.admin_token).get(f"/portal/jobs/{job_id}").text
    assert button in signed_in(world, world.b.user_token).get(f"/portal/jobs/{job_id}").text
    # Readers without the right see no button: the auditor, a read-only token.
    assert button not in signed_in(world, world.auditor_token).get(f"/portal/jobs/{job_id}").text
    made = ok(
        world.client.post(
            "/v1/tokens",
            headers=world.root,
            json={"name": "ro", "scopes": ["read"], "user_id": world.b.admin["id"]},
        ),
        201,
    )
    assert button not in signed_in(world, made["token"]).get(f"/portal/jobs/{job_id}").text
    admin = signed_in(world, ADMIN_TOKEN)
    resp = confirmed(
        admin, f"/portal/jobs/{job_id}/cancel", {"csrf": csrf(admin), "reason": "maintenance"}
    )
    assert resp.status_code == 303
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.b.user_token)))
    assert job["status"] == "CANCELLED"
    page = admin.get(f"/portal/jobs/{job_id}").text
    assert button not in page  # final: nothing left to cancel


# -- the submit form sent again --------------------------------------------------------------


def test_the_submit_form_sent_again_after_going_back_is_the_same_job(world: World) -> None:
    user = signed_in(world, world.a.user_token)
    opened = user.get("/portal/jobs/new")
    assert opened.status_code == 303
    here = opened.headers["location"]
    assert re.fullmatch(r"/portal/jobs/new\?form=[0-9a-f]{32}", here)
    # Going back re-reads the page at the same address: the same key.
    keys = {
        re.search(r'name="idempotency_key" value="([^"]+)"', user.get(here).text).group(1)  # type: ignore[union-attr]
        for _ in range(2)
    }
    assert len(keys) == 1
    # A new visit to the form is a new key; a malformed nonce is replaced.
    assert user.get("/portal/jobs/new").headers["location"] != here
    assert user.get("/portal/jobs/new?form=../../x").status_code == 303
    form = {
        "csrf": csrf(user, here),
        "idempotency_key": keys.pop(),
        "kind": "lora",
        "model": "axk1-tiny",
        "name": "twice",
        "gpus": "1",
        "inputs": "alpha-corpus",
    }
    first = user.post("/portal/jobs/new", data=form)
    again = user.post("/portal/jobs/new", data=form)
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    assert [j["name"] for j in jobs_of(world, world.a.user_token)].count("twice") == 1
    # Changed after going back: not silently a second job, and not the old one either.
    changed = user.post("/portal/jobs/new", data={**form, "gpus": "2"})
    assert changed.status_code == 409 and "already sent, as job" in changed.text
    assert [j["name"] for j in jobs_of(world, world.a.user_token)].count("twice") == 1
    fresh = re.search(r'name="idempotency_key" value="([^"]+)"', changed.text)
    assert fresh and fresh.group(1) != form["idempotency_key"]
    assert 'id="gpus" name="gpus" value="2"' in changed.text  # what was typed stays
    second = user.post(
        "/portal/jobs/new", data={**form, "gpus": "2", "idempotency_key": fresh.group(1)}
    )
    assert second.status_code == 303
    assert [j["name"] for j in jobs_of(world, world.a.user_token)].count("twice") == 2
    # The same nonce in another session (a link someone chose) is another key: its own job.
    admin = signed_in(world, world.a.admin_token)
    theirs = admin.post("/portal/jobs/new", data={**form, "csrf": csrf(admin)})
    assert theirs.status_code == 303 and theirs.headers["location"] != first.headers["location"]
