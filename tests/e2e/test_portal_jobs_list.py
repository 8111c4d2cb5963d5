"""The jobs list in a real browser (Debian's Chromium, driven by Playwright) against a real
`nuri api` server: a ticked box survives the list's live refresh (htmx replaces the table
every two seconds), the filter form narrows the list through the URL, and bulk cancel goes
through its confirmation page to a message with the count."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session

from controlplane.db.models import Job
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_portal_live import server, sign_in

__all__ = ["server"]  # the fixture: a server with one queued job of a member user

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]


def test_a_ticked_job_survives_the_refresh_and_is_cancelled_after_confirming(
    server: dict[str, Any],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, job_id = server["url"], server["job"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            sign_in(page, url, server["token"], "/portal/jobs")

            # The filter form: its labelled search box narrows the list, in the URL.
            page.get_by_label("Search name or id").fill("live-demo")
            page.get_by_label("Sort by").select_option("name")
            page.get_by_role("button", name="Apply").click()
            page.wait_for_url("**/portal/jobs?*q=live-demo*sort=name*")
            box = page.locator(f"#pick-{job_id}")
            expect(box).to_be_visible()

            # Ticked, then the table is replaced by a poll or two: still ticked.
            box.check()
            for _ in range(2):
                with page.expect_response(lambda r: "/portal/live/jobs?" in r.url):
                    pass
            expect(page.locator(f"#pick-{job_id}")).to_be_checked()

            page.get_by_role("button", name="Cancel selected…").click()
            expect(page.get_by_test_id("confirm-jobs")).to_contain_text("live-demo")
            page.get_by_role("button", name="Yes, cancel 1 job").click()
            page.wait_for_url("**/portal/jobs?*q=live-demo*")
            expect(page.get_by_test_id("flash")).to_have_text(
                "1 job was cancelled; it checkpoints and stops."
            )
            with Session(server["db"]) as s:
                job = s.get(Job, job_id)
                assert job is not None and job.status == "CANCELLED"
        finally:
            browser.close()
