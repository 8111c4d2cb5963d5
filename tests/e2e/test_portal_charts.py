"""The charts of the cluster over time in a real browser (Debian's Chromium, driven by
Playwright) against a real `nuri api` server, with the pages' real CSP: the admins' overview
and the usage page draw their SVG charts with labelled axes, a point's hover title holds its
value, the numbers open under <details> without any script, nothing breaks the CSP, axe-core finds
no serious violation with the charts full of data, and the overview fits a phone's width.

The world is the shared one of ``portal_pages``; univ's job is then admitted and run for two
hours by the scheduler's own functions on the server's database, and univ gets a budget for
the current quarter."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e.portal_pages import (
    ADMIN,
    AXE_JS,
    POOL,
    World,
    launch,
    portal_world,
    require_chromium,
    signed_in,
    visit,
)
from tests.e2e.test_portal_a11y import serious_violations

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

PHONE = {"width": 390, "height": 844}


def run_job(db: Path, job_id: str, since: datetime) -> None:
    """Admit and start the job as the scheduler does (transitions, usage record); its usage
    counts from ``since``, two hours back, so that whole hours of the chart hold it."""
    from sqlmodel import Session, create_engine

    from controlplane.db.models import Job
    from controlplane.jobstate import JobStatus, transition
    from controlplane.usage import open_usage

    engine = create_engine(f"sqlite:///{db}")
    try:
        with Session(engine, expire_on_commit=False) as s:
            transition(
                s,
                job_id,
                expected=JobStatus.QUEUED,
                to=JobStatus.ADMITTED,
                now=datetime.now(UTC),
                pool=POOL["name"],
            )
            now = datetime.now(UTC)
            transition(s, job_id, expected=JobStatus.ADMITTED, to=JobStatus.RUNNING, now=now)
            job = s.get(Job, job_id)
            assert job is not None
            open_usage(s, job, since)
            s.commit()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    if not AXE_JS.exists():  # `make test` unpacks it; never a silent skip there
        pytest.fail(f"axe-core not found at {AXE_JS}: run `make axe` (a part of `make test`)")
    tmp = tmp_path_factory.mktemp("charts")
    with portal_world(tmp) as built:
        now = datetime.now(UTC)
        run_job(tmp / ".nuri" / "nuri.db", built.job, now - timedelta(hours=2))
        quarter = f"{now.year}-Q{(now.month - 1) // 3 + 1}"
        budget = {"member": "univ", "period": quarter, "gpu_hours": 100}
        made = httpx.post(
            f"{built.url}/v1/budgets",
            json=budget,
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=60,
        )
        assert made.status_code == 201, made.text
        yield built


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = launch(pw)
        try:
            yield launched
        finally:
            launched.close()


def csp_reports(page: Page) -> list[str]:
    """Console messages of the page (filled as it loads): a CSP refusal shows up here."""
    seen: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        seen.append(message.text)

    page.on("console", keep)
    return seen


def axis_labels(page: Page, chart: str) -> list[str]:
    return list(page.locator(f'svg[data-chart="{chart}"] text.axis-label').all_text_contents())


def point_titles(page: Page, chart: str) -> list[str]:
    titles = page.locator(f'svg[data-chart="{chart}"] circle.point > title')
    return list(titles.all_text_contents())


def test_overview_charts_in_a_browser_on_a_phone(browser: Browser, world: World) -> None:
    context = signed_in(
        browser, world, "platform_admin", viewport=PHONE, is_mobile=True, has_touch=True
    )
    try:
        page = context.new_page()
        console = csp_reports(page)
        response = page.goto(f"{world.url}/portal/overview", wait_until="load")
        assert response is not None and response.status == 200
        # Now: univ's 8 GPUs held of the pool's 32, chips' job waiting.
        assert page.get_by_test_id("in-use").first.inner_text() == "8"
        assert page.get_by_test_id("free").first.inner_text() == "24"
        assert page.get_by_test_id("waiting").first.inner_text() == "1"
        gpus = page.locator('svg[data-chart="gpus-by-pool"]')
        assert gpus.get_attribute("role") == "img"
        assert "GPUs in use per pool" in (gpus.get_attribute("aria-label") or "")
        assert axis_labels(page, "gpus-by-pool") == ["GPUs (average per hour)", "time (UTC)"]
        titles = point_titles(page, "gpus-by-pool")
        assert len(titles) == 24
        assert all(
            re.fullmatch(r"kr-seoul-h200 · \d{4}-\d\d-\d\d \d\d:00 UTC: [\d.]+ GPUs", t)
            for t in titles
        )
        assert titles[-2].endswith(": 8 GPUs")  # the last whole hour: univ's job throughout
        # The point under the pointer is the one whose title the browser shows.
        point = page.locator('svg[data-chart="gpus-by-pool"] circle.point').nth(22)
        point.hover()
        under = page.evaluate(
            """() => { const p = document.querySelectorAll(
                 'svg[data-chart="gpus-by-pool"] circle.point')[22].getBoundingClientRect();
               const e = document.elementFromPoint(p.x + p.width / 2, p.y + p.height / 2);
               const title = e && e.querySelector('title');
               return title ? title.textContent : null; }"""
        )
        assert under == titles[22]
        assert axis_labels(page, "queue-length") == ["jobs waiting", "time (UTC)"]
        most = [t for t in point_titles(page, "queue-length") if t.startswith("most waiting")]
        assert len(most) == 24 and most[-1].endswith(": 2 jobs")  # both jobs, this hour
        waits = point_titles(page, "admission-wait")  # univ's job, admitted seconds after
        assert len(waits) == 2 and re.fullmatch(r"mean wait · .* UTC: [\d.]+ minutes", waits[0])
        # The numbers, without a script: <details> opens on a tap.
        figure = page.get_by_test_id("chart-gpus-by-pool")
        table = figure.locator("details table")
        assert not table.is_visible()
        figure.locator("summary").click()
        assert table.is_visible() and "8" in table.locator("tbody tr").nth(22).inner_text()
        scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner, f"the overview is {scroll} px wide on a {inner} px phone"
        assert not serious_violations(page)
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        context.close()


def test_usage_page_charts_and_budget_burn(browser: Browser, world: World) -> None:
    context = signed_in(browser, world, "member_user")
    try:
        page = visit(context, world, "usage", "/portal/usage")
        console = csp_reports(page)
        page.reload(wait_until="load")
        titles = point_titles(page, "gpus-by-pool")
        assert titles[-2].endswith(": 8 GPUs")
        assert page.locator('svg[data-chart="gpus-by-member"]').count() == 0  # one member
        burn = page.locator('svg[data-chart^="burn-"]')
        assert burn.count() == 1
        assert "budget: 100 GPU-h" in (burn.locator("g.limit > title").text_content() or "")
        labels = burn.locator("text.axis-label").all_text_contents()
        assert labels == ["GPU-hours (cumulative)", "time (UTC)"]
        used = burn.locator('g[data-series="used"] circle.point > title').all_text_contents()
        assert used and re.fullmatch(r"used · .* UTC: 1[56](\.\d+)? GPU-h", used[-1]), used
        page.get_by_role("link", name="Last week").click()
        page.wait_for_url(re.compile(r"window=week"))
        assert axis_labels(page, "gpus-by-pool")[0] == "GPUs (average per 6 hours)"
        assert len(point_titles(page, "gpus-by-pool")) == 28
        assert not serious_violations(page)
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        context.close()
