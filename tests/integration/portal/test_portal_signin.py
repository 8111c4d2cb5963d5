"""Signing in to the portal (SQLite and PostgreSQL): another site's page cannot sign a browser
in (login CSRF: the form's token bound to a pre-session cookie, and the Origin/Referer of the
post), the browser's own flow still works, behind an ingress too; and a disabled user's
portal sessions end for good, so enabling the user again revives none of them."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlmodel import col, select

from controlplane.db.models import AuditEvent, PortalSession, User
from controlplane.portal import sessions
from tests.conftest import World, bearer, ok
from tests.integration.portal.test_portal import (
    audit_actions,
    browser,
    confirmed,
    csrf,
    engine_session,
    login_form,
    signed_in,
)

SITE = "http://testserver"  # what TestClient's requests are sent to (its Host header)


def open_sessions(w: World) -> list[PortalSession]:
    with engine_session(w) as s:
        rows = s.exec(select(PortalSession)).all()
    return [r for r in rows if r.ended_at is None]


def set_cookies(resp: object) -> list[str]:
    return list(resp.headers.get_list("set-cookie"))  # type: ignore[attr-defined]


def cookie_named(resp: object, name: str) -> str:
    found = [c for c in set_cookies(resp) if c.startswith(f"{name}=")]
    assert len(found) == 1, set_cookies(resp)
    return found[0]


def refused(resp: object, code: str) -> None:
    """A refused sign-in: a 403 page naming the error code, and no session cookie."""
    assert resp.status_code == 403, resp.text  # type: ignore[attr-defined]
    assert resp.headers["content-type"].startswith("text/html")  # type: ignore[attr-defined]
    assert f'data-testid="error-code">{code}<' in resp.text  # type: ignore[attr-defined]
    assert not any(c.startswith(f"{sessions.COOKIE}=") for c in set_cookies(resp))


def test_cross_site_sign_in_is_refused_and_opens_no_session(world: World) -> None:
    client = browser(world)
    token = world.a.user_token
    # Another site's page posting a form: the browser names that site in Origin (or, with no
    # Origin, in Referer); an opaque origin ("null": a sandboxed frame, a data: URL) too.
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": f"{SITE}.evil.example"},
        {"Origin": "http://testserver:8080"},  # another port is another site
        {"Origin": "https://evil.example", "Referer": f"{SITE}/portal/login"},
        {"Referer": "https://evil.example/phish.html"},
        {"Referer": "http://evil.example/portal/login"},
    ):
        resp = client.post("/portal/login", data=login_form(client, token), headers=headers)
        refused(resp, "cross_site_request")
    # A malformed header is refused the same way, never a 500.
    for bad in ("http://[::1", "http://testserver:99999", "javascript:alert(1)", "testserver"):
        resp = client.post("/portal/login", data=login_form(client, token), headers={"Origin": bad})
        refused(resp, "cross_site_request")
    # Without the form's token, or with one not bound to this browser's pre-session cookie
    # (the attacker's own pair: a form fetched in another browser), even from this site.
    same = {"Origin": SITE}
    resp = client.post("/portal/login", data={"token": token}, headers=same)
    refused(resp, "csrf_failed")
    for forged in ("", "0" * 64, "not-hex"):
        data = {**login_form(client, token), "csrf": forged}
        refused(client.post("/portal/login", data=data, headers=same), "csrf_failed")
    attacker = browser(world)
    their_form = login_form(attacker, token)
    victim = browser(world)  # never fetched the form: no pre-session cookie (SameSite=Strict)
    refused(victim.post("/portal/login", data=their_form, headers=same), "csrf_failed")
    victim.get("/portal/login")  # its own cookie, but the attacker's token
    refused(victim.post("/portal/login", data=their_form, headers=same), "csrf_failed")
    # A planted cookie with a matching token still needs a same-site Origin.
    victim.cookies.set(
        sessions.LOGIN_COOKIE, attacker.cookies[sessions.LOGIN_COOKIE], path="/portal/login"
    )
    resp = victim.post("/portal/login", data=their_form, headers={"Origin": "https://x.example"})
    refused(resp, "cross_site_request")
    # Nothing was opened, nothing signed anyone in.
    with engine_session(world) as s:
        assert s.exec(select(PortalSession)).all() == []
    assert "portal.sign_in" not in audit_actions(world, world.a.member["id"])
    assert sessions.COOKIE not in client.cookies and sessions.COOKIE not in victim.cookies
    assert client.get("/portal/jobs").status_code == 303  # still signed out


def test_same_site_sign_in_works(world: World) -> None:
    cases: list[dict[str, str]] = [
        {},  # no Origin, no Referer: no browser's cross-site post; the token guards it
        {"Origin": SITE},
        {"Origin": f"{SITE}:80"},  # the default port, spelled out
        {"Referer": f"{SITE}/portal/login?next=%2Fportal%2Fjobs"},
        # Behind a TLS-terminating ingress: https at the browser, the Host passed through.
        {"Origin": "https://nuri.example", "Host": "nuri.example"},
        {"Origin": "https://nuri.example:8443", "Host": "NURI.example:8443"},
        # An ingress that rewrites Host to the service's name says the public one apart.
        {
            "Origin": "https://nuri.example",
            "Host": "nuri-api.nuri.svc:8000",
            "X-Forwarded-Host": "nuri.example",
        },
        {"Origin": "http://[::1]:8000", "Host": "[::1]:8000"},
    ]
    for headers in cases:
        client = browser(world)
        data = login_form(client, world.a.user_token)
        resp = client.post("/portal/login", data=data, headers=headers)
        assert resp.status_code == 303, (headers, resp.text)
        assert resp.headers["location"] == "/portal/jobs"
        assert sessions.COOKIE in client.cookies, headers
        assert client.get("/portal/jobs").status_code == 200
    assert len(open_sessions(world)) == len(cases)


def test_the_browser_flow_still_works(world: World) -> None:
    """What Chromium does (tests/e2e/test_portal_browser.py): a page that needs a session leads
    to the form, a wrong token is shown on the form again, the right one signs in, and
    sign-out (from this site) ends the session; every post names this site as Origin."""
    client = browser(world)
    resp = client.get("/portal/usage")
    assert resp.status_code == 303
    form = client.get(resp.headers["location"])
    assert form.status_code == 200
    cookie = cookie_named(form, sessions.LOGIN_COOKIE)
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered
    assert "path=/portal/login" in lowered
    assert "secure" not in lowered  # dev over plain http (see the prod test below)
    assert 'id="token"' in form.text and 'value="/portal/usage"' in form.text
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', form.text)
    assert token is not None
    post = {"Origin": SITE, "Referer": str(form.url)}
    wrong = client.post(
        "/portal/login",
        data={"token": "nuri_wrong", "csrf": token.group(1), "next": "/portal/usage"},
        headers=post,
    )
    assert wrong.status_code == 401 and "invalid or expired token" in wrong.text
    # The form shown again is ready for the next try (the same pre-session cookie).
    retry = re.search(r'name="csrf" value="([0-9a-f]{64})"', wrong.text)
    assert retry is not None and retry.group(1) == token.group(1)
    resp = client.post(
        "/portal/login",
        data={"token": world.a.user_token, "csrf": retry.group(1), "next": "/portal/usage"},
        headers=post,
    )
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/usage"
    # The pre-session cookie is spent: the next sign-in form gets a new one.
    gone = cookie_named(resp, sessions.LOGIN_COOKIE)
    assert "max-age=0" in gone.lower() or "expires=thu, 01 jan 1970" in gone.lower()
    assert sessions.LOGIN_COOKIE not in client.cookies
    replay = client.post(
        "/portal/login", data={"token": world.a.user_token, "csrf": token.group(1)}, headers=post
    )
    refused(replay, "csrf_failed")
    page = client.get("/portal/usage")
    assert page.status_code == 200 and "user@alpha.example" in page.text
    # Sign-out: another site's post is refused (and ends nothing); this site's ends it.
    secret = client.cookies[sessions.COOKIE]
    form_csrf = csrf(client)
    foreign = client.post(
        "/portal/logout", data={"csrf": form_csrf}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    assert 'data-testid="error-code">cross_site_request<' in foreign.text
    assert client.get("/portal/jobs").status_code == 200
    out = client.post("/portal/logout", data={"csrf": form_csrf}, headers=post)
    assert out.status_code == 303 and out.headers["location"] == "/portal/login"
    stale = browser(world)
    stale.cookies.set(sessions.COOKIE, secret, path="/portal")
    assert stale.get("/portal/jobs").status_code == 303
    assert open_sessions(world) == []


def test_pre_session_cookie_is_secure_in_prod(world: World) -> None:
    """Like the session cookie: behind a TLS-terminating ingress, prod marks it Secure."""
    world.client.app.state.settings.env = "prod"  # type: ignore[attr-defined]
    form = browser(world).get("/portal/login")
    cookie = cookie_named(form, sessions.LOGIN_COOKIE).lower()
    assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_a_malformed_pre_session_cookie_is_replaced(world: World) -> None:
    client = browser(world)
    client.cookies.set(sessions.LOGIN_COOKIE, "npl_short", path="/portal/login")
    refused(
        client.post(
            "/portal/login",
            data={"token": world.a.user_token, "csrf": sessions.login_token("npl_short")},
        ),
        "csrf_failed",
    )
    form = client.get("/portal/login")
    assert "npl_short" not in cookie_named(form, sessions.LOGIN_COOKIE)
    resp = client.post("/portal/login", data=login_form(client, world.a.user_token))
    assert resp.status_code == 303


def disable(w: World, admin: TestClient, user_id: str, action: str) -> None:
    path, data = f"/portal/users/{user_id}/{action}", {"csrf": csrf(admin, "/portal/users")}
    # Disabling asks first; enabling acts at once.
    resp = confirmed(admin, path, data) if action == "disable" else admin.post(path, data=data)
    assert resp.status_code == 303, resp.text


def test_enabling_a_disabled_user_revives_no_old_session(world: World) -> None:
    laptop = signed_in(world, world.a.user_token)
    kiosk = signed_in(world, world.a.user_token)  # a shared machine, say
    assert laptop.get("/portal/jobs").status_code == 200
    admin = signed_in(world, world.a.admin_token)
    disable(world, admin, world.a.user["id"], "disable")
    with engine_session(world) as s:
        ended = s.exec(select(PortalSession).where(PortalSession.user_id == world.a.user["id"]))
        assert [r.ended_at is not None for r in ended.all()] == [True, True]
    disable(world, admin, world.a.user["id"], "enable")
    # The old cookies get the sign-in page, for good.
    for old in (laptop, kiosk):
        resp = old.get("/portal/jobs")
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/portal/login?next=")
        assert old.get(resp.headers["location"]).status_code == 200  # the sign-in form
    # The admin's own session was not touched.
    assert admin.get("/portal/users").status_code == 200
    # API tokens were only suspended (as documented): the user's token works again, and
    # signs in to a new session.
    assert world.client.get("/v1/jobs", headers=bearer(world.a.user_token)).status_code == 200
    fresh = signed_in(world, world.a.user_token)
    assert fresh.get("/portal/jobs").status_code == 200
    with engine_session(world) as s:
        updates = s.exec(
            select(AuditEvent)
            .where(AuditEvent.stream == world.a.member["id"], AuditEvent.action == "user.update")
            .order_by(col(AuditEvent.seq))
        ).all()
    assert [e.details.get("portal_sessions_ended") for e in updates] == [2, 0]


def test_disabling_through_the_api_ends_sessions_too(world: World) -> None:
    user = signed_in(world, world.b.user_token)
    other = signed_in(world, world.a.user_token)
    admin_b = bearer(world.b.admin_token)
    path = f"/v1/users/{world.b.user['id']}"
    ok(world.client.patch(path, headers=admin_b, json={"disabled": True}))
    ok(world.client.patch(path, headers=admin_b, json={"disabled": False}))
    assert user.get("/portal/jobs").status_code == 303
    assert other.get("/portal/jobs").status_code == 200  # another user's session lives on
    # Changing something else of an active user, or enabling one who is not disabled,
    # leaves their sessions alone.
    again = signed_in(world, world.b.user_token)
    ok(world.client.patch(path, headers=admin_b, json={"name": "Renamed"}))
    ok(world.client.patch(path, headers=admin_b, json={"disabled": False}))
    assert again.get("/portal/jobs").status_code == 200


def test_enabling_ends_a_session_left_open_while_disabled(world: World) -> None:
    """A session still open on a disabled user (from before disabling ended sessions, or one
    that raced the disable) cannot come back either: enabling ends it."""
    user = signed_in(world, world.a.user_token)
    with engine_session(world) as s:
        row = s.get(User, world.a.user["id"])
        assert row is not None
        row.disabled = True  # as an older version left it: disabled, sessions open
        s.add(row)
        s.commit()
    assert user.get("/portal/jobs").status_code == 303
    assert len(open_sessions(world)) == 1
    ok(
        world.client.patch(
            f"/v1/users/{world.a.user['id']}",
            headers=bearer(world.a.admin_token),
            json={"disabled": False},
        )
    )
    assert open_sessions(world) == []
    assert user.get("/portal/jobs").status_code == 303


def test_a_disabled_user_cannot_sign_in(world: World) -> None:
    admin = signed_in(world, world.a.admin_token)
    disable(world, admin, world.a.user["id"], "disable")
    client = browser(world)
    resp = client.post("/portal/login", data=login_form(client, world.a.user_token))
    assert resp.status_code == 401 and "invalid or expired token" in resp.text
    assert [r.user_id for r in open_sessions(world)] == [world.a.admin["id"]]


@pytest.mark.parametrize(
    ("origin", "referer", "hosts", "same"),
    [
        (None, None, ["nuri.example"], True),
        ("https://nuri.example", None, ["nuri.example"], True),
        ("https://nuri.example", None, ["nuri.example:443"], True),
        ("https://nuri.example.", None, ["nuri.example"], True),
        ("http://127.0.0.1:8000", None, ["127.0.0.1:8000"], True),
        ("http://127.0.0.1:8000", None, ["127.0.0.1"], False),
        ("https://nuri.example", None, ["nuri-api:8000", "evil.example, nuri.example"], True),
        (None, "https://nuri.example/portal/login", ["nuri.example"], True),
        ("https://nuri.example", "https://evil.example/", ["nuri.example"], True),
        ("https://evil.example", "https://nuri.example/", ["nuri.example"], False),
        ("https://nuri.example.evil.example", None, ["nuri.example"], False),
        ("null", None, ["nuri.example"], False),
        ("", None, ["nuri.example"], False),
        ("ftp://nuri.example", None, ["nuri.example"], False),
        ("https://nuri.example", None, [], False),
        ("https://nuri.example", None, [""], False),
        ("https://[::1", None, ["[::1]"], False),
        ("https://nuri.example:0x1bb", None, ["nuri.example"], False),
    ],
)
def test_same_site_rule(
    origin: str | None, referer: str | None, hosts: list[str], same: bool
) -> None:
    assert sessions.same_site(origin, referer, hosts) is same
