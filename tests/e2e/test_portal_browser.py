"""The portal in a real browser (Debian's Chromium, driven by Playwright) against a real
`nuri api` server: a member user signs in with a token, submits a job through the form, sees
it queued with its reasons, cancels it (after a confirmation), and signs out; another
member's job is a 404 page."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import free_port, nuri_server

ADMIN = "nuri-e2e-portal-admin-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():  # `make test` installs it; never a silent skip there
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test` (it installs chromium)")
    port = free_port()
    env = {
        **os.environ,
        "NURI_HOME": str(tmp_path / ".nuri"),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
        "NURI_WARM_PLANNER": "false",
    }
    env.pop("NURI_DATABASE_URL", None)
    url = f"http://127.0.0.1:{port}"
    # One API process: the first submission of each process imports the capacity planner
    # (torch, transformers), which takes seconds on a fresh machine; the fixture's own
    # submission below pays it before the browser starts.
    args = ["api", "--workers", "1", "--port", str(port)]
    with nuri_server(args, port, env, tmp_path, tmp_path / "api.log"):
        root = {"Authorization": f"Bearer {ADMIN}"}
        world: dict[str, Any] = {"url": url}
        with httpx.Client(base_url=url, headers=root, timeout=30) as c:
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
            for name in ("univ", "chips"):
                created = c.post("/v1/members", json={"name": name, "display_name": name})
                assert created.status_code == 201
                user = c.post(
                    "/v1/users",
                    json={"email": f"researcher@{name}.example", "name": "R", "member": name},
                ).json()
                token = c.post("/v1/tokens", json={"name": "portal", "user_id": user["id"]})
                world[name] = token.json()["token"]
                quota = {"member": name, "pool": "kr-seoul-h200", "nominal_gpus": 16}
                assert c.post("/v1/quotas", json=quota).status_code == 201
                # The member's data, in its data directory, registered as a dataset.
                data = tmp_path / ".nuri" / "data" / name / "corpus.jsonl"
                data.parent.mkdir(parents=True, exist_ok=True)
                data.write_text('{"text": "법률 문서의 요약"}\n' * 20, encoding="utf-8")
                ds = httpx.post(
                    f"{url}/v1/datasets",
                    headers={"Authorization": f"Bearer {world[name]}"},
                    json={
                        "name": f"{name}-corpus",
                        "uri": data.as_uri(),
                        "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
                    },
                    timeout=30,
                )
                assert ds.status_code == 201, ds.text
        other = httpx.post(
            f"{url}/v1/jobs",
            headers={"Authorization": f"Bearer {world['chips']}"},
            json={
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "name": "chips-secret",
                "inputs": ["chips-corpus"],
            },
            timeout=180,
        )
        assert other.status_code == 201
        world["foreign_job"] = other.json()["id"]
        yield world


def test_member_user_submits_follows_and_cancels_a_job(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = server["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)  # a loaded 2-core machine, not a fast desktop
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{url}/portal/jobs")
            expect(page).to_have_url(f"{url}/portal/login?next=%2Fportal%2Fjobs")

            page.fill("#token", "nuri_wrong")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert")).to_contain_text("invalid or expired token")

            page.fill("#token", server["univ"])
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{url}/portal/jobs")
            expect(page.get_by_test_id("who")).to_have_text("researcher@univ.example")
            expect(page.get_by_test_id("no-jobs")).to_be_visible()

            page.get_by_role("link", name="Submit a job").click()
            page.select_option("#kind", "finetune")
            page.fill("#name", "ko-legal-finetune")
            page.fill("#gpus", "8")
            page.fill("#max_runtime_h", "3")
            page.get_by_label("kr-seoul-h200").check()
            page.get_by_label("univ-corpus").check()
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_test_id("status")).to_have_text("QUEUED")
            job_id = page.url.rsplit("/", 1)[1]
            expect(page.get_by_test_id("events")).to_contain_text("job submitted")

            page.get_by_role("link", name="Jobs").first.click()
            expect(page.locator(f"tr[data-job='{job_id}']")).to_contain_text("ko-legal-finetune")
            expect(page.get_by_test_id("jobs")).not_to_contain_text("chips-secret")

            page.goto(f"{url}/portal/jobs/{server['foreign_job']}")
            expect(page.get_by_test_id("error-code")).to_have_text("not_found")

            page.goto(f"{url}/portal/jobs/{job_id}")
            page.fill("input[name=reason]", "wrong dataset")
            page.get_by_role("button", name="Cancel job").click()
            # Asked first: nothing changes until the question is answered.
            expect(page.get_by_test_id("confirm")).to_contain_text("It will checkpoint and stop.")
            page.get_by_role("button", name="Yes, cancel the job").click()
            expect(page.get_by_test_id("status")).to_have_text("CANCELLED")
            expect(page.get_by_test_id("flash")).to_contain_text("The job was cancelled")
            expect(page.get_by_test_id("events")).to_contain_text("wrong dataset")

            page.get_by_role("link", name="Usage").click()
            expect(page.get_by_test_id("quotas")).to_contain_text("kr-seoul-h200")

            page.get_by_role("button", name="Sign out").click()
            expect(page).to_have_url(f"{url}/portal/login")
            page.goto(f"{url}/portal/jobs")
            expect(page).to_have_url(f"{url}/portal/login?next=%2Fportal%2Fjobs")
        finally:
            browser.close()

    # What the browser did is what the API sees.
    job = httpx.get(
        f"{url}/v1/jobs/{job_id}",
        headers={"Authorization": f"Bearer {server['univ']}"},
        timeout=60,
    ).json()
    assert job["status"] == "CANCELLED" and job["kind"] == "finetune"
    assert job["max_runtime_s"] == 3 * 3600 and job["allowed_pools"] == ["kr-seoul-h200"]
