"""The Endpoints page in a real browser (Debian's Chromium, driven by Playwright) against a
real `nuri api` server (no scheduler runs there, so a replica stays wanted and never starts):
a member user sees an inline error for a bad form with nothing created, creates an endpoint
from the form, sees it listed waiting for its replica, gets the playground's short refusal
while no replica is ready, cannot open another member's endpoint, and deletes it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import free_port, nuri_server
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS

ADMIN = "nuri-e2e-endpoints-admin-token-0123456789abcdef"

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
    # One API process: the first endpoint of each process imports the capacity planner
    # (torch, transformers), which takes seconds on a fresh machine; the fixture's own
    # endpoint below pays it before the browser starts.
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
        # Another member's endpoint, which univ's user must never see.
        other = httpx.post(
            f"{url}/v1/endpoints",
            headers={"Authorization": f"Bearer {world['chips']}"},
            json={"name": "chips-secret", "model": "axk1-tiny"},
            timeout=180,
        )
        assert other.status_code == 201, other.text
        yield world


def endpoint_names(url: str, token: str) -> list[str]:
    listed = httpx.get(
        f"{url}/v1/endpoints", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    assert listed.status_code == 200, listed.text
    return [e["name"] for e in listed.json()["items"]]


def test_member_user_creates_follows_and_deletes_an_endpoint(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = server["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)  # a loaded 2-core machine, not a fast desktop
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{url}/portal/endpoints")
            expect(page).to_have_url(f"{url}/portal/login?next=%2Fportal%2Fendpoints")
            page.fill("#token", server["univ"])
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{url}/portal/endpoints")
            expect(page.get_by_test_id("no-endpoints")).to_be_visible()

            # A bad form: the API's message inline, the form as typed, nothing created.
            page.get_by_role("link", name="Create an endpoint").click()
            page.fill("#name", "ko-chat")
            page.fill("#min_replicas", "3")
            page.fill("#max_replicas", "2")
            page.get_by_label("kr-seoul-h200").check()
            page.get_by_role("button", name="Create").click()
            expect(page.get_by_role("alert")).to_contain_text("The endpoint was not created.")
            expect(page.get_by_role("alert")).to_contain_text(
                "min_replicas (3) exceeds max_replicas (2)"
            )
            expect(page.locator("#name")).to_have_value("ko-chat")
            assert endpoint_names(url, server["univ"]) == []

            page.fill("#min_replicas", "1")
            page.fill("#max_tokens_default", "32")
            page.get_by_role("button", name="Create").click()
            expect(page).to_have_url(f"{url}/portal/endpoints/ko-chat")
            expect(page.get_by_test_id("state")).to_have_text("active")
            expect(page.get_by_test_id("replica-counts")).to_contain_text("0 ready of 1 desired")
            expect(page.get_by_test_id("no-replicas")).to_contain_text("waiting for the scheduler")

            # The playground gives up within its bound while no replica is ready.
            page.fill("#pg-prompt", "서울의 날씨는")
            page.fill("#pg-max-tokens", "8")
            page.get_by_role("button", name="Send").click()
            expect(page.get_by_test_id("playground-error")).to_contain_text("playground_timeout")
            expect(page.locator("#pg-prompt")).to_have_value("서울의 날씨는")

            page.get_by_role("link", name="Endpoints").first.click()
            row = page.locator("tr[data-endpoint='ko-chat']")
            expect(row).to_contain_text("axk1-tiny")
            expect(row).to_contain_text("waiting for a replica")
            expect(page.get_by_test_id("endpoints")).not_to_contain_text("chips-secret")

            page.goto(f"{url}/portal/endpoints/chips-secret")
            expect(page.get_by_test_id("error-code")).to_have_text("not_found")

            page.goto(f"{url}/portal/endpoints/ko-chat")
            page.get_by_role("button", name="Delete endpoint").click()
            expect(page.get_by_test_id("confirm")).to_contain_text("Delete endpoint ko-chat?")
            page.get_by_role("button", name="Yes, delete the endpoint").click()
            expect(page).to_have_url(f"{url}/portal/endpoints")
            expect(page.get_by_test_id("flash")).to_contain_text("The endpoint was deleted")
            expect(page.get_by_test_id("no-endpoints")).to_be_visible()
        finally:
            browser.close()

    # What the browser did is what the API sees; the other member's endpoint is untouched.
    assert endpoint_names(url, server["univ"]) == []
    assert endpoint_names(url, server["chips"]) == ["chips-secret"]
