"""A job's page follows the job in a real browser (Debian's Chromium, driven by Playwright)
against a real `nuri api` server: QUEUED → RUNNING (step progress, a new log line) →
SUCCEEDED without a reload, under the portal's CSP with no violation, polling stops once the
job is final; the jobs list follows too; with JavaScript off the same page shows the same
content after a plain reload; the skip link is the first thing Tab reaches.

`nuri api` runs no scheduler, so the test moves the job itself, in the server's database,
the way the scheduler would (status, events, metrics, log lines)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.db.engine import make_engine
from controlplane.db.models import Job, JobEvent, JobLog, JobMetric
from tests.e2e.server import free_port, nuri_server
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS

ADMIN = "nuri-e2e-portal-live-admin-token-0123456789ab"

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():  # `make test` installs it; never a silent skip there
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test` (it installs chromium)")
    port = free_port()
    home = tmp_path / ".nuri"
    env = {
        **os.environ,
        "NURI_HOME": str(home),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
        "NURI_WARM_PLANNER": "false",
    }
    env.pop("NURI_DATABASE_URL", None)
    url = f"http://127.0.0.1:{port}"
    args = ["api", "--workers", "1", "--port", str(port)]
    with nuri_server(args, port, env, tmp_path, tmp_path / "api.log"):
        root = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=root, timeout=60) as c:
            pool = {
                "name": "kr-seoul-h200",
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": 8,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "node_count": 4,
            }
            assert c.post("/v1/pools", json=pool).status_code == 201
            created = c.post("/v1/members", json={"name": "univ", "display_name": "Univ"})
            assert created.status_code == 201
            user = c.post(
                "/v1/users",
                json={"email": "researcher@univ.example", "name": "R", "member": "univ"},
            ).json()
            token = c.post("/v1/tokens", json={"name": "portal", "user_id": user["id"]}).json()
            quota = {"member": "univ", "pool": "kr-seoul-h200", "nominal_gpus": 16}
            assert c.post("/v1/quotas", json=quota).status_code == 201
        # The synthetic payload (a dev server allows it): 40 steps, no model to plan.
        job = httpx.post(
            f"{url}/v1/jobs",
            headers={"Authorization": f"Bearer {token['token']}"},
            json={
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "name": "live-demo",
                "config": {"payload": "synthetic", "steps": 40},
            },
            timeout=180,
        )
        assert job.status_code == 201, job.text
        engine = make_engine(f"sqlite:///{home / 'nuri.db'}")
        try:
            yield {"url": url, "token": token["token"], "job": job.json()["id"], "db": engine}
        finally:
            engine.dispose()


def move(engine: Engine, job_id: str, to: str, step: int | None, line: str) -> None:
    """What the scheduler writes when a job moves on: its status, an event, a metric sample
    and a log line."""
    now = datetime.now(UTC)
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        before, job.status, job.updated_at = job.status, to, now
        if to == "RUNNING":
            job.pool, job.started_at = "kr-seoul-h200", now
        if to == "SUCCEEDED":
            job.finished_at = now
        s.add(job)
        s.add(
            JobEvent(
                job_id=job_id,
                at=now,
                type="status",
                from_status=before,
                to_status=to,
                message=f"moved to {to.lower()} by the test",
            )
        )
        if step is not None:
            s.add(JobMetric(job_id=job_id, attempt=1, at=now, step=step, values={"loss": 2.0}))
        s.add(JobLog(job_id=job_id, attempt=1, at=now, line=line))
        s.commit()


# Recorded in the page before any of its own scripts run (Playwright's init scripts are
# not subject to the page's CSP): every CSP violation, with what was blocked.
WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def console_error(msg: Any) -> str:
    """A console error worth failing for ('' for other messages). Chromium asks for
    /favicon.ico by itself (the portal has none): that 404 is not the page's doing."""
    if msg.type != "error" or str(msg.location.get("url", "")).endswith("/favicon.ico"):
        return ""
    return f"console: {msg.text} ({msg.location.get('url')})"


def sign_in(page: Any, url: str, token: str, target: str) -> None:
    page.goto(f"{url}/portal/login?next={target}")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}{target}")


def test_job_page_follows_the_job_without_a_reload(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, job_id, db = server["url"], server["job"], server["db"]
    job_path = f"/portal/jobs/{job_id}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)  # a loaded 2-core machine, not a fast desktop
        try:
            context = browser.new_context()
            context.add_init_script(WATCH)
            page = context.new_page()
            page.set_default_timeout(60_000)
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(console_error(msg)))
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            navigations: list[str] = []
            polls: list[str] = []
            page.on("request", lambda r: polls.append(r.url) if "/portal/live/" in r.url else None)

            sign_in(page, url, server["token"], job_path)
            page.on(
                "framenavigated",
                lambda f: navigations.append(f.url) if f == page.main_frame else None,
            )
            expect(page.get_by_test_id("status")).to_have_text("QUEUED")
            assert page.evaluate("typeof htmx") == "object"  # the vendored script ran
            page.evaluate("window.__marker = 'same document'")

            # The first focusable element is the skip link, to the main content.
            page.keyboard.press("Tab")
            focused = page.evaluate(
                "[document.activeElement.textContent, document.activeElement.getAttribute('href')]"
            )
            assert focused == ["Skip to main content", "#main"]

            # The jobs list, in a second tab, follows as well.
            listing = context.new_page()
            listing.goto(f"{url}/portal/jobs")
            row = listing.locator(f"tr[data-job='{job_id}']")
            expect(row).to_contain_text("QUEUED")

            move(db, job_id, "RUNNING", 12, "[rank 0] step 12 loss 2.0000")
            expect(page.get_by_test_id("status")).to_have_text("RUNNING")
            expect(page.get_by_test_id("progress")).to_contain_text("Step 12 of 40, 30%")
            expect(page.get_by_test_id("log")).to_contain_text("step 12 loss 2.0000")
            expect(page.get_by_test_id("events")).to_contain_text("moved to running by the test")
            expect(row).to_contain_text("RUNNING")

            # Without JavaScript: everything is in the page itself, and a reload updates it.
            still = browser.new_context(java_script_enabled=False)
            plain = still.new_page()
            plain.set_default_timeout(60_000)
            sign_in(plain, url, server["token"], job_path)
            expect(plain.get_by_test_id("status")).to_have_text("RUNNING")
            expect(plain.get_by_test_id("progress")).to_contain_text("Step 12 of 40, 30%")
            expect(plain.get_by_test_id("log")).to_contain_text("step 12 loss 2.0000")

            move(db, job_id, "SUCCEEDED", 40, "[rank 0] finished after 40 steps")
            expect(page.get_by_test_id("status")).to_have_text("SUCCEEDED")
            expect(page.get_by_test_id("progress")).to_contain_text("Step 40 of 40, 100%")
            expect(page.get_by_test_id("log")).to_contain_text("finished after 40 steps")
            expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)

            expect(plain.get_by_test_id("status")).to_have_text("RUNNING")  # no live update
            plain.reload()
            expect(plain.get_by_test_id("status")).to_have_text("SUCCEEDED")
            expect(plain.get_by_test_id("log")).to_contain_text("finished after 40 steps")
            still.close()

            # No navigation happened: the same document, updated in place.
            assert page.evaluate("window.__marker") == "same document"
            assert navigations == [] and page.url == f"{url}{job_path}"
            # A final job's page stops asking.
            asked = len([u for u in polls if f"/portal/live/jobs/{job_id}" in u])
            page.wait_for_timeout(5_000)  # two and a half poll intervals
            assert len([u for u in polls if f"/portal/live/jobs/{job_id}" in u]) == asked
            assert asked >= 2
            # Under the CSP (scripts from this site only, no eval), nothing was refused.
            assert page.evaluate("window.__violations") == []
            assert listing.evaluate("window.__violations") == []
            assert [p for p in problems if p] == []
        finally:
            browser.close()
