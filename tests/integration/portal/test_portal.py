"""The portal over the real app and database (SQLite and PostgreSQL): signing in with a token
into a hashed session, member scoping of every page, forms that need the session's CSRF
token, submissions through the same service as the API, errors as pages."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controlplane.db.models import AuditEvent, PortalSession
from controlplane.portal import sessions
from tests.conftest import World, bearer, ok


def browser(w: World) -> TestClient:
    """A separate cookie jar on the same app: one browser per person."""
    return TestClient(w.client.app, raise_server_exceptions=False, follow_redirects=False)


def login_form(client: TestClient, token: str, **extra: str) -> dict[str, str]:
    """The sign-in form as the browser sends it: the token typed, plus the form's own CSRF
    token, bound to the pre-session cookie that fetching the form sets."""
    page = client.get("/portal/login")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, page.text
    return {"token": token, "csrf": found.group(1), **extra}


def signed_in(w: World, token: str) -> TestClient:
    client = browser(w)
    resp = client.post("/portal/login", data=login_form(client, token))
    assert resp.status_code == 303, resp.text
    return client


def csrf(client: TestClient, path: str = "/portal/jobs") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, page.text
    return found.group(1)


def confirmed(client: TestClient, path: str, data: dict[str, str]) -> Any:
    """A dangerous form as the browser sends it: the first post only shows the confirmation
    page (nothing changes), whose button sends the confirmed post."""
    asked = client.post(path, data=data)
    assert asked.status_code == 200 and 'data-testid="confirm"' in asked.text, asked.text
    found = re.search(r'name="confirm" value="([0-9a-f]{64})"', asked.text)
    assert found, asked.text
    return client.post(path, data={**data, "confirm": found.group(1)})


# The submit form's page, at its own nonce (``GET /portal/jobs/new`` redirects to a new one).
SUBMIT_PAGE = "/portal/jobs/new?form=" + "0" * 32


def engine_session(w: World) -> Session:
    return Session(w.client.app.state.engine)  # type: ignore[attr-defined]


def audit_actions(w: World, stream: str) -> list[str]:
    with engine_session(w) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.stream == stream)).all()
        return [r.action for r in sorted(rows, key=lambda r: r.seq)]


def jobs_of(w: World, token: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(w.client.get("/v1/jobs", headers=bearer(token)))["items"]
    return items


def test_sign_in_opens_a_hashed_session(world: World) -> None:
    client = browser(world)
    data = login_form(client, world.a.user_token, next="/portal/usage")
    resp = client.post("/portal/login", data=data)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/portal/usage"
    cookie = next(
        c for c in resp.headers.get_list("set-cookie") if c.startswith(f"{sessions.COOKIE}=")
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/portal" in cookie
    secret = client.cookies[sessions.COOKIE]
    assert secret.startswith("nps_") and world.a.user_token not in cookie
    with engine_session(world) as s:
        rows = s.exec(select(PortalSession)).all()
    assert [r.secret_hash for r in rows] == [hashlib.sha256(secret.encode()).hexdigest()]
    assert rows[0].token_id == world.a.user_token_id and rows[0].ended_at is None
    assert "portal.sign_in" in audit_actions(world, world.a.member["id"])
    page = client.get("/portal/usage")
    assert page.status_code == 200 and "user@alpha.example" in page.text


def test_bad_token_is_refused_on_the_page(world: World) -> None:
    client = browser(world)
    for token in ("nuri_not-a-token", world.a.user_token + "x", ""):
        resp = client.post("/portal/login", data=login_form(client, token))
        assert resp.status_code == 401
        assert "invalid or expired token" in resp.text or "bearer" in resp.text.lower()
        assert sessions.COOKIE not in resp.headers.get("set-cookie", "")
    with engine_session(world) as s:
        assert s.exec(select(PortalSession)).all() == []


def test_pages_without_a_session_go_to_sign_in(world: World) -> None:
    client = browser(world)
    for path in ("/portal/jobs", "/portal/usage", f"/portal/jobs/{world.a.job['id']}"):
        resp = client.get(path)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/portal/login?next=%2Fportal%2F")
    client.cookies.set(sessions.COOKIE, "nps_forged", path="/portal")
    assert client.get("/portal/jobs").status_code == 303
    # Sign-in never sends the browser to another site.
    resp = client.post(
        "/portal/login", data=login_form(client, world.a.user_token, next="https://evil.example/")
    )
    assert resp.headers["location"] == "/portal/jobs"


def test_pages_are_scoped_to_the_member(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    page = alpha.get("/portal/jobs?show=all")
    assert world.a.job["id"] in page.text and world.b.job["id"] not in page.text
    foreign = alpha.get(f"/portal/jobs/{world.b.job['id']}")
    assert foreign.status_code == 404
    assert 'data-testid="error-code">not_found<' in foreign.text
    assert world.b.job["name"] not in foreign.text
    datasets = alpha.get("/portal/datasets").text
    assert "alpha-corpus" in datasets and "beta-corpus" not in datasets
    # An auditor reads every member, and may not submit.
    auditor = signed_in(world, world.auditor_token)
    everything = auditor.get("/portal/jobs?show=all").text
    assert world.a.job["id"] in everything and world.b.job["id"] in everything
    assert "does not submit jobs" in auditor.get("/portal/jobs/new").text


def test_submit_form_creates_one_job_per_form(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    before = {j["id"] for j in jobs_of(world, world.a.user_token)}
    form = {
        "csrf": csrf(alpha, SUBMIT_PAGE),
        "idempotency_key": "form-0001",
        "kind": "finetune",
        "model": "axk1-tiny",
        "name": "portal-finetune",
        "gpus": "8",
        "max_runtime_h": "2",
        "priority_class": "research",
        "preemptible": "default",
        "allowed_pools": "kr-test-h200",
        "inputs": "alpha-corpus",
    }
    resp = alpha.post("/portal/jobs/new", data=form)
    assert resp.status_code == 303, resp.text
    job_id = resp.headers["location"].rsplit("/", 1)[1]
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.a.user_token)))
    assert job["name"] == "portal-finetune" and job["kind"] == "finetune"
    assert job["max_runtime_s"] == 7200 and job["inputs"] == [world.a.dataset["id"]]
    assert job["submitter_id"] == world.a.user["id"] and job["status"] == "QUEUED"
    # The same form sent again (a double click, a reload) is the same job.
    again = alpha.post("/portal/jobs/new", data=form)
    assert again.headers["location"] == resp.headers["location"]
    after = {j["id"] for j in jobs_of(world, world.a.user_token)}
    assert after - before == {job_id}
    page = alpha.get(f"/portal/jobs/{job_id}")
    assert page.status_code == 200 and 'data-testid="status">QUEUED<' in page.text
    assert "job.submit" in audit_actions(world, world.a.member["id"])


def test_bad_submissions_are_shown_and_nothing_is_written(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    token = csrf(alpha, SUBMIT_PAGE)
    before = len(jobs_of(world, world.a.user_token))
    cases = [
        ({"gpus": "eight"}, 422, "gpus"),
        ({"gpus": "8", "allowed_pools": "nowhere"}, 422, "unknown pool"),
        ({"gpus": "4096"}, 422, "GPUs"),
        ({"gpus": "8", "inputs": "beta-corpus"}, 422, "unknown dataset"),
        ({"gpus": "8", "max_runtime_h": "soon"}, 422, "max_runtime_s"),
    ]
    for fields, status, words in cases:
        data = {
            "csrf": token,
            "kind": "lora",
            "model": "axk1-tiny",
            "inputs": "alpha-corpus",
            **fields,
        }
        resp = alpha.post("/portal/jobs/new", data=data)
        assert resp.status_code == status, (fields, resp.text)
        assert 'data-testid="form-errors"' in resp.text and words in resp.text, fields
        assert "Traceback" not in resp.text
        # What the user typed is still in the form.
        assert f'value="{fields["gpus"]}"' in resp.text
    assert len(jobs_of(world, world.a.user_token)) == before


def test_forms_need_the_sessions_csrf_token(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    job_id = world.a.job["id"]
    for data in ({}, {"csrf": "0" * 64}, {"csrf": sessions.csrf_token("nps_other")}):
        resp = alpha.post(f"/portal/jobs/{job_id}/cancel", data=data)
        assert resp.status_code == 403
        assert 'data-testid="error-code">csrf_failed<' in resp.text
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.a.user_token)))
    assert job["status"] == "QUEUED"
    resp = confirmed(
        alpha, f"/portal/jobs/{job_id}/cancel", {"csrf": csrf(alpha), "reason": "oops"}
    )
    assert resp.status_code == 303
    job = ok(world.client.get(f"/v1/jobs/{job_id}", headers=bearer(world.a.user_token)))
    assert job["status"] == "CANCELLED"
    # Cancelling again is the API's 409, as a page.
    resp = alpha.post(f"/portal/jobs/{job_id}/cancel", data={"csrf": csrf(alpha)})
    assert resp.status_code == 409 and "final" in resp.text


def test_another_members_job_cannot_be_cancelled(world: World) -> None:
    alpha = signed_in(world, world.a.admin_token)
    resp = alpha.post(f"/portal/jobs/{world.b.job['id']}/cancel", data={"csrf": csrf(alpha)})
    assert resp.status_code == 404
    job = ok(world.client.get(f"/v1/jobs/{world.b.job['id']}", headers=bearer(world.b.user_token)))
    assert job["status"] == "QUEUED"


def test_sign_out_and_revocation_end_the_session(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    secret = alpha.cookies[sessions.COOKIE]
    resp = alpha.post("/portal/logout", data={"csrf": csrf(alpha)})
    assert resp.status_code == 303 and resp.headers["location"] == "/portal/login"
    stale = browser(world)
    stale.cookies.set(sessions.COOKIE, secret, path="/portal")
    assert stale.get("/portal/jobs").status_code == 303  # the old cookie signs nobody in
    with engine_session(world) as s:
        row = s.exec(select(PortalSession)).one()
    assert row.ended_at is not None
    assert "portal.sign_out" in audit_actions(world, world.a.member["id"])
    # Revoking the token ends every session opened with it.
    beta = signed_in(world, world.b.user_token)
    assert beta.get("/portal/jobs").status_code == 200
    tokens = ok(world.client.get("/v1/tokens", headers=bearer(world.b.admin_token)))["items"]
    user_token = next(t for t in tokens if t["user_id"] == world.b.user["id"])
    ok(world.client.delete(f"/v1/tokens/{user_token['id']}", headers=bearer(world.b.admin_token)))
    assert beta.get("/portal/jobs").status_code == 303


def test_usage_page_shows_quota_and_budget(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    page = alpha.get("/portal/usage")
    assert page.status_code == 200
    quotas = page.text[page.text.index('data-testid="quotas"') :]
    assert "kr-test-h200" in quotas and ">16<" in quotas
    assert "2026-Q4" in page.text and "1000.0" in page.text


def test_job_names_are_escaped(world: World) -> None:
    ok(
        world.client.post(
            "/v1/jobs",
            headers=bearer(world.a.user_token),
            json={
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "inputs": ["alpha-corpus"],
                "name": "<script>x()</script>",
            },
        ),
        201,
    )
    page = signed_in(world, world.a.user_token).get("/portal/jobs").text
    assert "&lt;script&gt;x()&lt;/script&gt;" in page and "<script>x()" not in page


def test_auditor_verifies_the_chain_in_the_portal(world: World) -> None:
    auditor = signed_in(world, world.auditor_token)
    events = auditor.get("/portal/audit")
    assert events.status_code == 200 and "job.submit" in events.text
    report = auditor.post("/portal/audit/verify", data={"csrf": csrf(auditor, "/portal/audit")})
    assert report.status_code == 200
    assert 'data-testid="verify-result">intact<' in report.text
    # Member users do not read the audit log.
    user = signed_in(world, world.a.user_token)
    assert "/portal/audit" not in user.get("/portal/jobs").text
    assert user.get("/portal/audit").status_code == 403


def test_job_page_shows_logs_and_the_loss_curve(world: World) -> None:
    from datetime import UTC, datetime

    from controlplane.db.models import JobLog, JobMetric

    job_id = world.a.job["id"]
    now = datetime.now(UTC)
    with engine_session(world) as s:
        for step, loss in enumerate([2.5, 2.1, 1.7, 1.6, 1.2], start=1):
            s.add(JobMetric(job_id=job_id, attempt=1, at=now, step=step, values={"loss": loss}))
        s.add(JobLog(job_id=job_id, attempt=1, at=now, line="step 5 loss 1.2000 <ok>"))
        s.commit()
    page = signed_in(world, world.a.user_token).get(f"/portal/jobs/{job_id}").text
    points = re.search(r'<polyline[^>]* points="([^"]+)"', page)
    assert points is not None
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert len(xy) == 5
    assert [x for x, _ in xy] == sorted(x for x, _ in xy)  # steps left to right
    assert xy[0][1] < xy[-1][1]  # loss falls: the last point is lower on the chart (larger y)
    assert "first 2.5" in page and "last 1.2" in page
    assert "step 5 loss 1.2000 &lt;ok&gt;" in page


def test_session_cookie_is_secure_in_prod(world: World) -> None:
    """Behind a TLS-terminating ingress requests arrive as plain http: in prod the cookie is
    marked Secure all the same (in dev, on http://127.0.0.1, it cannot be)."""
    dev_browser = browser(world)
    dev = dev_browser.post("/portal/login", data=login_form(dev_browser, world.a.user_token))
    assert "secure" not in dev.headers["set-cookie"].lower()
    # The form is fetched first: over plain http a test client never sends a Secure cookie.
    prod_browser = browser(world)
    data = login_form(prod_browser, world.a.user_token)
    world.client.app.state.settings.env = "prod"  # type: ignore[attr-defined]
    prod = prod_browser.post("/portal/login", data=data)
    assert prod.status_code == 303 and "; secure" in prod.headers["set-cookie"].lower()


def test_pages_are_not_cached_framed_or_scripted(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    made = alpha.post(
        "/portal/tokens",
        data={"csrf": csrf(alpha, "/portal/tokens"), "name": "ci", "expires_in_days": "7"},
    )
    for resp in (alpha.get("/portal/jobs"), made, alpha.get("/portal/jobs/job_missing")):
        assert resp.headers["cache-control"] == "no-store"
        assert resp.headers["x-frame-options"] == "DENY"
        policy = resp.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self';" in policy
        assert "default-src 'none'" in policy and "unsafe" not in policy
    # The only script is the vendored htmx from this site: no inline script, no handler.
    scripts = re.findall(r"<script[^>]*>", made.text)
    assert scripts == ['<script src="/portal/static/vendor/htmx.min.js" defer>']
    assert "</script>" in made.text and not re.search(r"<script[^>]*>[^<]", made.text)
    assert not re.search(r"\son[a-z]+=", made.text) and "hx-on" not in made.text


def test_artifacts_are_listed_and_fetched_under_the_access_policy(world: World) -> None:
    alpha = signed_in(world, world.a.user_token)
    listing = alpha.get("/portal/artifacts").text
    assert world.a.artifact["id"] in listing and world.b.artifact["id"] not in listing
    job_page = alpha.get(f"/portal/jobs/{world.a.job['id']}").text
    assert 'data-testid="outputs"' in job_page and world.a.artifact["id"] in job_page
    token = csrf(alpha, "/portal/artifacts")
    fetched = alpha.post(
        f"/portal/artifacts/{world.a.artifact['id']}/download", data={"csrf": token}
    )
    assert fetched.status_code == 200
    link = re.search(r'data-testid="download-link" href="([^"]+)"', fetched.text)
    assert link, fetched.text
    href = link.group(1)
    assert href.startswith(f"/v1/artifacts/{world.a.artifact['id']}/content?ref=")
    assert world.a.artifact["uri"] not in fetched.text, "never the storage location"
    assert "artifact.download" in audit_actions(world, world.a.member["id"])
    # The link needs no session (a browser or curl follows it); this artifact is in the
    # member's own S3 store, so Nuri answers where it is instead of serving it.
    followed = browser(world).get(href)
    assert followed.status_code == 409 and followed.json()["code"] == "not_served"
    foreign = alpha.post(
        f"/portal/artifacts/{world.b.artifact['id']}/download", data={"csrf": token}
    )
    assert foreign.status_code == 404
    assert alpha.post(f"/portal/artifacts/{world.a.artifact['id']}/download").status_code == 403


def test_a_long_runs_loss_curve_is_thinned_evenly(world: World) -> None:
    from datetime import UTC, datetime
    from itertools import pairwise

    from sqlalchemy import insert

    from controlplane.db.models import JobMetric
    from controlplane.portal.routes import CURVE_POINTS, curve_samples

    job_id = world.a.job["id"]
    now = datetime.now(UTC)
    rows = [
        {"job_id": job_id, "attempt": 1, "at": now, "step": step, "values": {"loss": 10.0 / step}}
        for step in range(1, 5002)
    ]
    with engine_session(world) as s:
        s.execute(insert(JobMetric), rows)
        s.commit()
        samples = curve_samples(s, job_id)
    assert len(samples) <= CURVE_POINTS + 1
    steps = [step for step, _ in samples]
    assert steps[0] == 1 and steps[-1] == 5001 and steps == sorted(steps)
    gaps = {b - a for a, b in pairwise(steps[:-1])}
    assert gaps == {3}  # every third sample of 5,001 (the last one added at the end)
    assert samples[-1][1] == {"loss": 10.0 / 5001}
    page = signed_in(world, world.a.user_token).get(f"/portal/jobs/{job_id}").text
    assert f"{len(samples)} samples" in page and "first 10 " in page
