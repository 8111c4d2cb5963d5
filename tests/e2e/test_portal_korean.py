"""The portal for a Korean browser (Chromium through Playwright, ``locale="ko-KR"``, a real
`nuri api`): Korean navigation and ``<html lang="ko">`` from the browser's own
Accept-Language, times in KST with UTC on hover, the jobs list's filters in Korean, and the
footer's switch to English kept across pages."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port, nuri_server
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_portal_resubmit import sign_in

ADMIN = "nuri-e2e-korean-admin-token-0123456789abcdef"

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def korean_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A `nuri api` with one member and its user's token: enough for pages with times (no
    job, so no planner import: the server answers in seconds)."""
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
    with nuri_server(
        ["api", "--workers", "1", "--port", str(port)], port, env, tmp_path, tmp_path / "api.log"
    ):
        root = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=root, timeout=60) as c:
            made = c.post("/v1/members", json={"name": "univ", "display_name": "서울대학교"})
            assert made.status_code == 201, made.text
            user = c.post(
                "/v1/users",
                json={"email": "researcher@univ.example", "name": "연구자", "member": "univ"},
            ).json()
            token = c.post("/v1/tokens", json={"name": "portal", "user_id": user["id"]})
            assert token.status_code == 201, token.text
        yield {"url": url, "token": token.json()["token"]}


def test_a_korean_browser_gets_korean_pages_and_kst(korean_server: dict[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = korean_server["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        expect.set_options(timeout=30_000)  # a loaded 2-core machine
        try:
            context = browser.new_context(locale="ko-KR", timezone_id="Asia/Seoul")
            page = context.new_page()
            page.set_default_timeout(60_000)

            # The sign-in page, before any session: Korean from the browser's language.
            page.goto(f"{url}/portal/login")
            expect(page.locator("html")).to_have_attribute("lang", "ko")
            expect(page.get_by_role("heading", name="로그인")).to_be_visible()
            sign_in(page, url, korean_server["token"])

            # The tokens page: Korean navigation, and the token's times in KST.
            page.get_by_role("link", name="토큰", exact=True).click()
            expect(page).to_have_url(f"{url}/portal/tokens")
            expect(page.locator("html")).to_have_attribute("lang", "ko")
            nav = page.locator("header nav")
            for name in ("작업", "제출", "엔드포인트", "사용량", "데이터셋", "토큰"):
                expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
            expect(page.get_by_role("button", name="로그아웃")).to_be_visible()
            made = page.locator("[data-testid=tokens] tbody tr td time").first
            utc = datetime.strptime(str(made.get_attribute("datetime")), "%Y-%m-%dT%H:%M:%SZ")
            utc = utc.replace(tzinfo=UTC)
            kst = (utc + timedelta(hours=9)).strftime("%Y-%m-%d %H:%M:%S KST")
            expect(made).to_have_text(kst)
            expect(made).to_have_attribute("title", utc.strftime("%Y-%m-%d %H:%M:%S UTC"))

            # The jobs list: its filters, sort and empty list in Korean (no job: no planner).
            nav.get_by_role("link", name="작업", exact=True).click()
            expect(page.get_by_role("heading", name="작업", exact=True)).to_be_visible()
            filters = page.get_by_test_id("job-filters")
            expect(filters.get_by_label("이름 또는 ID 검색")).to_be_visible()
            expect(filters.get_by_label("정렬 기준")).to_have_value("submitted")
            expect(page.get_by_test_id("no-jobs")).to_have_text("진행 중인 작업이 없습니다.")
            page.get_by_role("link", name="토큰", exact=True).click()
            expect(page).to_have_url(f"{url}/portal/tokens")

            # The footer switch: English for this and later pages, the browser still Korean.
            page.get_by_test_id("lang-switch").get_by_role("link", name="English").click()
            expect(page.locator("html")).to_have_attribute("lang", "en")
            page.get_by_role("link", name="Datasets", exact=True).click()
            expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
            expect(page.locator("html")).to_have_attribute("lang", "en")
            page.get_by_test_id("lang-switch").get_by_role("link", name="한국어").click()
            expect(page.get_by_role("heading", name="데이터셋")).to_be_visible()
            expect(page).to_have_url(re.compile(r".*/portal/datasets\?lang=ko$"))
        finally:
            browser.close()
