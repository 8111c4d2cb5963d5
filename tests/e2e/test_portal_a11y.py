"""axe-core (npm's package, unpacked by `make axe`) on every portal page in a real browser
(Debian's Chromium, driven by Playwright) against a real `nuri api` server, as a member user,
a member admin, a platform admin and an auditor, in English and in Korean, with the
confirmation pages of the dangerous actions and the admin forms opened prefilled, and on the
sign-in page: no serious or critical violation.

axe is evaluated through the DevTools protocol, which the pages' CSP (`script-src 'self'`)
does not govern, so the pages are checked with their real CSP in force: a script tag would
be refused, and no `bypass_csp` is needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.portal_pages import (
    AXE_JS,
    ROLES,
    World,
    launch,
    portal_world,
    reach,
    require_chromium,
    signed_in,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations
    .filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    if not AXE_JS.exists():  # `make test` unpacks it; never a silent skip there
        pytest.fail(f"axe-core not found at {AXE_JS}: run `make axe` (a part of `make test`)")
    with portal_world(tmp_path_factory.mktemp("a11y")) as built:
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


def serious_violations(page: Page) -> list[dict[str, Any]]:
    page.evaluate(AXE_JS.read_text(encoding="utf-8"))
    return list(page.evaluate(RUN_AXE))


# Every role's pages in English; in Korean, the member user's and the platform admin's, which
# between them are every page the other two roles see (the same templates, in Korean).
RUNS = [(role, "en-US") for role in ROLES] + [
    ("member_user", "ko-KR"),
    ("platform_admin", "ko-KR"),
]


@pytest.mark.parametrize(("role", "locale"), RUNS)
def test_every_page_has_no_serious_axe_violation(
    browser: Browser, world: World, role: str, locale: str
) -> None:
    """Every page and every confirmation page ``role`` can reach, in English and in Korean
    (the browser's own language picks it)."""
    lang = locale.split("-")[0]
    context = signed_in(browser, world, role, locale=locale)
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, path, form in world.every_page(role):
            page = reach(context, world, name, path, form)
            assert page.locator("html").get_attribute("lang") == lang, f"{name}: not in {lang}"
            if violations := serious_violations(page):
                found[f"{name} ({page.url})"] = violations
            page.close()
    finally:
        context.close()
    assert not found, f"axe, as {role} in {locale}: {found}"


def test_sign_in_page_has_no_serious_axe_violation(browser: Browser, world: World) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{world.url}/portal/login")
        assert serious_violations(page) == []
        # A failed sign-in shows its error (role=alert) on the same form.
        page.fill("#token", "nuri_wrong")
        page.click("button[type=submit]")
        page.get_by_role("alert").wait_for()
        assert serious_violations(page) == []
    finally:
        context.close()
