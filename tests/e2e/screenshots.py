"""`make screenshots`: PNGs of the main portal pages at 1440 px and 390 px, for review (never
committed). The e2e server with the small consortium of the browser tests
(tests/e2e/portal_pages.py), signed in as a member user and a platform admin, in Debian's
Chromium.

    python -m tests.e2e.screenshots [OUTPUT_DIR]    # default: screenshots/
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.e2e.portal_pages import launch, portal_world, signed_in, visit

WIDTHS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
MAIN_PAGES = {
    "member_user": ("jobs", "job", "submit", "usage", "datasets", "endpoint", "not-found"),
    "platform_admin": (
        "jobs",
        "artifacts",
        "tokens",
        "users",
        "cluster",
        "overview",
        "audit",
        "endpoints",
    ),
}


def capture(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        portal_world(Path(tmp)) as world,
        sync_playwright() as pw,
    ):
        browser = launch(pw)
        try:
            for label, viewport in WIDTHS.items():
                context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
                page = context.new_page()
                page.goto(f"{world.url}/portal/login")
                written.append(out / f"sign-in-{viewport['width']}.png")
                page.screenshot(path=written[-1], full_page=True)
                context.close()
                for role, names in MAIN_PAGES.items():
                    context = signed_in(browser, world, role, viewport=viewport)
                    paths = dict(world.pages(role))
                    for name in names:
                        page = visit(context, world, name, paths[name])
                        written.append(out / f"{role}-{name}-{viewport['width']}.png")
                        page.screenshot(path=written[-1], full_page=True)
                        page.close()
                    context.close()
                print(f"{label}: {viewport['width']} px done", flush=True)
        finally:
            browser.close()
    return written


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "screenshots")
    written = capture(out)
    print(f"{len(written)} screenshots in {out}/")


if __name__ == "__main__":
    main()
