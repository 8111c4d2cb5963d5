"""Portal pages for tokens and users (SQLite and PostgreSQL): a token made in the portal is
shown once, stored hashed and works on the API until revoked there; member admins manage
their own member's users only, within the roles they may grant."""

from __future__ import annotations

import hashlib
import re

from sqlmodel import select

from controlplane.db.models import ApiToken, User
from tests.conftest import World, bearer, ok
from tests.integration.portal.test_portal import confirmed, csrf, engine_session, signed_in


def test_token_made_in_the_portal_is_shown_once_and_works_until_revoked(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    made = alpha.post(
        "/portal/tokens",
        data={
            "csrf": csrf(alpha, "/portal/tokens"),
            "name": "nightly-pipeline",
            "expires_in_days": "30",
            "scopes": "read",
        },
    )
    assert made.status_code == 200, made.text
    found = re.search(r'data-testid="new-token">(nuri_[0-9A-Za-z]+)<', made.text)
    assert found, made.text
    secret = found.group(1)
    with engine_session(world) as s:
        row = s.exec(select(ApiToken).where(ApiToken.name == "nightly-pipeline")).one()
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert row.user_id == world.a.user["id"] and row.scopes == ["read"]
        token_id = row.id
    # It reads (its only scope) and cannot write.
    assert world.client.get("/v1/jobs", headers=bearer(secret)).status_code == 200
    write = world.client.post(
        "/v1/jobs", headers=bearer(secret), json={"kind": "lora", "model": "axk1-tiny", "gpus": 8}
    )
    assert write.status_code == 403
    listing = alpha.get("/portal/tokens").text
    assert "nightly-pipeline" in listing and secret not in listing
    revoked = confirmed(alpha, f"/portal/tokens/{token_id}/revoke", {"csrf": csrf(alpha)})
    assert revoked.status_code == 303
    assert world.client.get("/v1/jobs", headers=bearer(secret)).status_code == 401


def test_member_users_make_tokens_only_for_themselves(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    token = csrf(alpha, "/portal/tokens")
    with engine_session(world) as s:
        before = len(s.exec(select(ApiToken)).all())
    cases = [
        ({"user_id": world.a.admin["id"]}, 404),  # another user: not visible to a member user
        ({"user_id": world.b.user["id"]}, 404),  # another member's user does not exist
        ({"scopes": "admin"}, 422),  # beyond the role
        ({"name": ""}, 422),
    ]
    for extra, status in cases:
        data = {"csrf": token, "name": "x", "expires_in_days": "30", **extra}
        resp = alpha.post("/portal/tokens", data=data)
        assert resp.status_code == status, (extra, resp.text)
        assert 'data-testid="form-errors"' in resp.text
    with engine_session(world) as s:
        assert len(s.exec(select(ApiToken)).all()) == before
    # A member user does not manage users.
    assert alpha.get("/portal/users").status_code == 403
    assert "/portal/users" not in alpha.get("/portal/jobs").text


def test_member_admin_manages_its_members_users(world: World) -> None:
    admin = signed_in(world, world.a.admin_token)
    page = admin.get("/portal/users")
    assert page.status_code == 200
    assert "user@alpha.example" in page.text and "user@beta.example" not in page.text
    assert 'value="auditor"' not in page.text  # not a role a member admin grants
    token = csrf(admin, "/portal/users")
    added = admin.post(
        "/portal/users",
        data={"csrf": token, "email": "New@Alpha.example", "name": "New", "role": "member_user"},
    )
    assert added.status_code == 303
    users = ok(world.client.get("/v1/users", headers=bearer(world.a.admin_token)))["items"]
    new = next(u for u in users if u["email"] == "new@alpha.example")
    assert new["member_id"] == world.a.member["id"]
    refused = [
        ({"email": "new@alpha.example", "name": "Again", "role": "member_user"}, 409),
        ({"email": "not-an-email", "name": "X", "role": "member_user"}, 422),
        ({"email": "aud@alpha.example", "name": "X", "role": "auditor"}, 403),
        ({"email": "x@alpha.example", "name": "X", "role": "member_user", "member": "beta"}, 404),
    ]
    for data, status in refused:
        resp = admin.post("/portal/users", data={"csrf": token, **data})
        assert resp.status_code == status, (data, resp.text)
        assert 'data-testid="form-errors"' in resp.text
        assert f'value="{data["email"]}"' in resp.text  # the form keeps what was typed
    with engine_session(world) as s:
        emails = {u.email for u in s.exec(select(User)).all()}
    assert "aud@alpha.example" not in emails and "x@alpha.example" not in emails


def test_disabling_a_user_signs_them_out_everywhere(world: World) -> None:
    user = signed_in(world, world.a.user_token)
    assert user.get("/portal/jobs").status_code == 200
    admin = signed_in(world, world.a.admin_token)
    resp = confirmed(
        admin, f"/portal/users/{world.a.user['id']}/disable", {"csrf": csrf(admin, "/portal/users")}
    )
    assert resp.status_code == 303
    assert user.get("/portal/jobs").status_code == 303  # back to sign-in
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 401
    # Another member's user is out of reach.
    foreign = admin.post(
        f"/portal/users/{world.b.user['id']}/disable", data={"csrf": csrf(admin, "/portal/users")}
    )
    assert foreign.status_code == 404
    assert world.client.get("/v1/jobs", headers=bearer(world.b.user_token)).status_code == 200
    enabled = admin.post(
        f"/portal/users/{world.a.user['id']}/enable", data={"csrf": csrf(admin, "/portal/users")}
    )
    assert enabled.status_code == 303
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 200
