"""The portal's safe forms in a real browser (Chromium through Playwright, a real `nuri api`):
going back to the submit form and sending it again is the same job, not a second one; the
cluster page's quota form comes prefilled with the member's current values."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.e2e.test_portal_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, server

__all__ = ["server"]  # the fixture: a `nuri api` with two members, a pool and datasets

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]


def sign_in(page: Any, url: str, token: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{url}/portal/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/portal/jobs")


def test_back_and_resubmit_is_the_same_job(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = server["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            sign_in(page, url, server["univ"])
            page.get_by_role("link", name="Submit a job").click()
            page.fill("#name", "sent-twice")
            page.fill("#gpus", "2")
            page.get_by_label("univ-corpus").check()
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_test_id("status")).to_have_text("QUEUED")
            expect(page.get_by_test_id("flash")).to_have_text("The job was submitted.")
            first = page.url
            page.go_back()
            expect(page).to_have_url(re.compile(r".*/portal/jobs/new\?form=[0-9a-f]{32}$"))
            page.get_by_role("button", name="Submit").click()
            # The same job's page, saying the form was sent before.
            expect(page.get_by_test_id("flash")).to_contain_text("not a new one")
            assert page.url == first
            expect(page.get_by_test_id("status")).to_have_text("QUEUED")
        finally:
            browser.close()
    listed = httpx.get(
        f"{url}/v1/jobs", headers={"Authorization": f"Bearer {server['univ']}"}, timeout=60
    ).json()["items"]
    assert [j["name"] for j in listed].count("sent-twice") == 1


def test_the_quota_form_opens_prefilled_and_no_limit_is_ticked(server: dict[str, Any]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = server["url"]
    root = {"Authorization": f"Bearer {ADMIN}"}
    quota = httpx.get(f"{url}/v1/quotas?member=univ", headers=root, timeout=60).json()["items"][0]
    changed = httpx.patch(
        f"{url}/v1/quotas/{quota['id']}", headers=root, json={"borrowing_limit": 4}, timeout=60
    )
    assert changed.status_code == 200, changed.text
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            sign_in(page, url, ADMIN)
            page.get_by_role("link", name="Cluster").click()
            # Choosing the member and the pool (no JavaScript needed) opens its form.
            page.select_option("#quota-choose-member", "univ")
            page.select_option("#quota-choose-pool", "kr-seoul-h200")
            page.get_by_role("button", name="Show its quota").click()
            expect(page).to_have_url(f"{url}/portal/admin?member=univ&pool=kr-seoul-h200#quota")
            expect(page.locator("#quota-nominal_gpus")).to_have_value("16")
            expect(page.locator("#quota-borrowing_limit")).to_have_value("4")
            expect(page.locator("#quota-borrowing_unlimited")).not_to_be_checked()
            expect(page.locator("#quota-lending_limit")).to_have_value("")
            expect(page.locator("#quota-lending_unlimited")).to_be_checked()
            # Clearing a number without ticking "no limit" is an error beside the field.
            page.fill("#quota-borrowing_limit", "")
            page.get_by_role("button", name="Save quota").click()
            expect(page.locator("#quota-borrowing_limit-error")).to_contain_text("no limit")
            expect(page.locator("#quota-borrowing_limit")).to_have_attribute("aria-invalid", "true")
            page.fill("#quota-borrowing_limit", "6")
            page.get_by_role("button", name="Save quota").click()
            expect(page.get_by_test_id("flash")).to_have_text("The quota was saved.")
            expect(page.locator("#quota-borrowing_limit")).to_have_value("6")
            page.reload()
            expect(page.get_by_test_id("flash")).to_have_count(0)
        finally:
            browser.close()
    after = httpx.get(f"{url}/v1/quotas/{quota['id']}", headers=root, timeout=60).json()
    assert after["borrowing_limit"] == 6 and after["lending_limit"] is None
    assert after["nominal_gpus"] == 16
