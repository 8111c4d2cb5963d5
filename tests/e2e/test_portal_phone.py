"""The portal on a phone and on a desktop, in a real browser (Debian's Chromium, driven by
Playwright) against a real `nuri api` server: at 390 px no page (confirmation pages and
prefilled admin forms included) scrolls sideways for any role (a wide table scrolls inside
its own region), and at 1440 px the audit table fits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.e2e.portal_pages import (
    ROLES,
    World,
    launch,
    portal_world,
    reach,
    require_chromium,
    signed_in,
    visit,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
# What sticks out past the viewport's right edge, for the failure message.
WIDE = """() => [...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className ? "." + e.className : ""))"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_chromium()
    with portal_world(tmp_path_factory.mktemp("phone")) as built:
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


def page_overflow(page: Page) -> str | None:
    """None when the page fits the viewport's width, else what sticks out."""
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return None if scroll <= inner else f"{scroll} px > {inner} px: {page.evaluate(WIDE)}"


@pytest.mark.parametrize("role", ROLES)
def test_no_page_scrolls_sideways_on_a_phone(browser: Browser, world: World, role: str) -> None:
    context = signed_in(browser, world, role, viewport=PHONE, is_mobile=True, has_touch=True)
    wide: dict[str, str] = {}
    try:
        for name, path, form in world.every_page(role):
            page = reach(context, world, name, path, form)
            if overflow := page_overflow(page):
                wide[f"{name} ({path})"] = overflow
            page.close()
    finally:
        context.close()
    assert not wide, f"pages wider than a phone, as {role}: {wide}"


def test_sign_in_page_fits_a_phone(browser: Browser, world: World) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(f"{world.url}/portal/login")
        assert page_overflow(page) is None
        box = page.locator("#token").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    finally:
        context.close()


def test_audit_table_fits_a_desktop(browser: Browser, world: World) -> None:
    context = signed_in(browser, world, "platform_admin", viewport=DESKTOP)
    try:
        page = visit(context, world, "audit", "/portal/audit")
        region = page.locator(".scroll", has=page.get_by_test_id("audit-events"))
        sizes = region.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert sizes[0] <= sizes[1], f"the audit table is {sizes[0]} px in a {sizes[1]} px region"
        assert page_overflow(page) is None
    finally:
        context.close()
