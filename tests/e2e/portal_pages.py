"""Every portal page, as each role sees it, against a real `nuri api` server with a small
consortium built through the API: shared by the accessibility test, the phone-width test and
`make screenshots` (tests/e2e/screenshots.py).

The world: a pool; members univ and chips, each with a member admin, a member user, a quota
and a dataset; an auditor; jobs of both members; an endpoint of univ; and an artifact of
univ's job, recorded in the server's database the way the scheduler records a finished job's
output (no API creates artifacts)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

import httpx

from tests.e2e.server import free_port, nuri_server
from tests.e2e.test_portal_browser import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

ADMIN = "nuri-e2e-pages-admin-token-0123456789abcdef"
# `make axe` (a prerequisite of `make test`) unpacks npm's axe-core into the venv.
AXE_JS = Path(sys.prefix) / "axe" / "axe.min.js"
ROLES = ("member_user", "member_admin", "platform_admin", "auditor")
POOL = {
    "name": "kr-seoul-h200",
    "gpu_model": "H200",
    "gpu_memory_gib": 141,
    "gpus_per_node": 8,
    "site": "Seoul",
    "region": "kr-seoul",
    "jurisdiction": "KR",
    "node_count": 4,
}


@dataclass
class World:
    url: str
    tokens: dict[str, str] = field(default_factory=dict)  # role -> token
    job: str = ""  # univ's job
    foreign_job: str = ""  # chips' job: a 404 page for univ's people
    endpoint: str = "ko-legal-chat"

    def pages(self, role: str) -> list[tuple[str, str]]:
        """(name, path) of every page ``role`` can open, an error page included."""
        common = [
            ("jobs", "/portal/jobs"),
            ("usage", "/portal/usage"),
            ("datasets", "/portal/datasets"),
            ("artifacts", "/portal/artifacts"),
            ("tokens", "/portal/tokens"),
            ("endpoints", "/portal/endpoints"),
            ("job", f"/portal/jobs/{self.job}"),
            ("endpoint", f"/portal/endpoints/{self.endpoint}"),
            ("not-found", "/portal/jobs/job-does-not-exist"),
        ]
        member = [("submit", "/portal/jobs/new"), ("endpoint-new", "/portal/endpoints/new")]
        pool = str(POOL["name"])
        # The admin page with each form opened on a current row, prefilled.
        prefilled = [
            ("quota-form", "/portal/admin?" + urlencode({"member": "univ", "pool": pool})),
            ("budget-form", "/portal/admin?" + urlencode({"member": "univ", "period": quarter()})),
            ("defaults-form", "/portal/admin?" + urlencode({"defaults": pool})),
        ]
        by_role = {
            "member_user": [*common, *member, ("foreign-job", f"/portal/jobs/{self.foreign_job}")],
            "member_admin": [*common, *member, ("users", "/portal/users")],
            "platform_admin": [
                *common,
                ("users", "/portal/users"),
                ("cluster", "/portal/admin"),
                ("overview", "/portal/overview"),
                ("audit", "/portal/audit"),
                *prefilled,
            ],
            "auditor": [
                *common,
                ("cluster", "/portal/admin"),
                ("overview", "/portal/overview"),
                ("audit", "/portal/audit"),
            ],
        }
        return by_role[role]

    def confirmations(self, role: str) -> list[tuple[str, str, str]]:
        """(name, path, form) of each dangerous action ``role`` can start: the form's button
        on the page at ``path`` opens its confirmation page (nothing changes until it is
        confirmed). Forms by their action, so that any language finds them."""
        cancel = ("confirm-cancel", f"/portal/jobs/{self.job}", "form[action$='/cancel']")
        bulk = ("confirm-bulk-cancel", "/portal/jobs", BULK_FORM)
        revoke = ("confirm-revoke", "/portal/tokens", "form[action$='/revoke']")
        disable = ("confirm-disable", "/portal/users", "form[action$='/disable']")
        delete = (
            "confirm-delete-endpoint",
            f"/portal/endpoints/{self.endpoint}",
            "form[action$='/delete']",
        )
        by_role = {
            "member_user": [cancel, bulk, revoke, delete],
            "member_admin": [cancel, bulk, revoke, disable, delete],
            "platform_admin": [cancel, bulk, revoke, disable],
            "auditor": [],
        }
        return by_role[role]

    def every_page(self, role: str) -> list[tuple[str, str, str | None]]:
        """The pages and then the confirmation pages of ``role``: (name, path, form or None),
        for ``reach``."""
        plain: list[tuple[str, str, str | None]] = [(n, p, None) for n, p in self.pages(role)]
        return plain + list(self.confirmations(role))


BULK_FORM = "form[action='/portal/jobs/bulk-cancel']"


def quarter() -> str:
    """The current budget period, ``2026-Q4``."""
    now = datetime.now(UTC)
    return f"{now.year}-Q{(now.month - 1) // 3 + 1}"


def require_chromium() -> None:
    import pytest

    if not Path(CHROMIUM).exists():  # `make test` installs it; never a silent skip there
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test` (it installs chromium)")


@contextmanager
def portal_world(tmp: Path) -> Iterator[World]:
    """Start `nuri api` in ``tmp`` and build the world through its API."""
    port = free_port()
    env = {
        **os.environ,
        "NURI_HOME": str(tmp / ".nuri"),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
        "NURI_WARM_PLANNER": "false",
    }
    env.pop("NURI_DATABASE_URL", None)
    url = f"http://127.0.0.1:{port}"
    args = ["api", "--workers", "1", "--port", str(port)]
    with nuri_server(args, port, env, tmp, tmp / "api.log"):
        world = World(url=url, tokens={"platform_admin": ADMIN})
        build(world, tmp)
        yield world


def build(world: World, tmp: Path) -> None:
    root = {"Authorization": f"Bearer {ADMIN}"}
    member_tokens: dict[str, str] = {}
    with httpx.Client(base_url=world.url, headers=root, timeout=180) as c:

        def ok(resp: httpx.Response) -> dict[str, object]:
            assert resp.status_code in (200, 201), resp.text
            return dict(resp.json())

        def token_for(user: dict[str, object]) -> str:
            made = ok(c.post("/v1/tokens", json={"name": "portal", "user_id": user["id"]}))
            return str(made["token"])

        ok(c.post("/v1/pools", json=POOL))
        for name in ("univ", "chips"):
            ok(c.post("/v1/members", json={"name": name, "display_name": f"{name} lab"}))
            for local, role in (("admin", "member_admin"), ("researcher", "member_user")):
                user = ok(
                    c.post(
                        "/v1/users",
                        json={
                            "email": f"{local}@{name}.example",
                            "name": f"{local} of {name}",
                            "role": role,
                            "member": name,
                        },
                    )
                )
                member_tokens[f"{name}:{role}"] = token_for(user)
            quota = {"member": name, "pool": POOL["name"], "nominal_gpus": 16}
            ok(c.post("/v1/quotas", json=quota))
        auditor = ok(
            c.post(
                "/v1/users",
                json={"email": "auditor@nuri.example", "name": "Auditor", "role": "auditor"},
            )
        )
        world.tokens["auditor"] = token_for(auditor)

        # Each member's data, in its data directory, registered as a dataset; then a job.
        for name in ("univ", "chips"):
            as_member = {"Authorization": f"Bearer {member_tokens[f'{name}:member_user']}"}
            data = tmp / ".nuri" / "data" / name / "corpus.jsonl"
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text('{"text": "법률 문서의 요약"}\n' * 20, encoding="utf-8")
            ds = {
                "name": f"{name}-legal-corpus-2026-with-a-long-descriptive-name",
                "uri": data.as_uri(),
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            }
            ok(c.post("/v1/datasets", json=ds, headers=as_member))
            job = {
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "name": f"{name}-ko-legal-lora-summarisation-experiment",
                "inputs": [ds["name"]],
            }
            made = ok(c.post("/v1/jobs", json=job, headers=as_member))
            if name == "univ":
                world.job = str(made["id"])
                endpoint = {"name": world.endpoint, "model": "axk1-tiny"}
                ok(c.post("/v1/endpoints", json=endpoint, headers=as_member))
            else:
                world.foreign_job = str(made["id"])
    world.tokens["member_user"] = member_tokens["univ:member_user"]
    world.tokens["member_admin"] = member_tokens["univ:member_admin"]
    register_artifact(tmp / ".nuri" / "nuri.db", world.job)


def register_artifact(db: Path, job_id: str) -> None:
    """What the scheduler records when a job succeeds (the job need not have run)."""
    from sqlmodel import Session, create_engine

    from controlplane.db.models import Job
    from controlplane.services.artifacts import register_output

    engine = create_engine(f"sqlite:///{db}")
    try:
        with Session(engine, expire_on_commit=False) as s:
            job = s.get(Job, job_id)
            assert job is not None
            uri = f"s3://nuri-artifacts/univ/{job_id}/adapter-with-a-long-path/model.safetensors"
            register_output(s, job, datetime.now(UTC), uri, "ab" * 32, 123_456_789)
            s.commit()
    finally:
        engine.dispose()


def launch(pw: object) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # type: ignore[attr-defined, no-any-return]


def signed_in(browser: Browser, world: World, role: str, **options: object) -> BrowserContext:
    """A browser context (its own cookies) signed in to the portal as ``role``."""
    context = browser.new_context(**options)  # type: ignore[arg-type]
    context.set_default_timeout(60_000)  # a loaded 2-core machine, not a fast desktop
    page = context.new_page()
    page.goto(f"{world.url}/portal/login")
    page.fill("#token", world.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_url(f"{world.url}/portal/jobs")
    page.close()
    return context


def visit(context: BrowserContext, world: World, name: str, path: str) -> Page:
    """Open ``path`` and check it is the page asked for: not a redirect to the sign-in form,
    and the 404 page exactly where one is expected."""
    page = context.new_page()
    response = page.goto(f"{world.url}{path}", wait_until="load")
    assert response is not None
    expected = 404 if name in NOT_FOUND else 200
    assert response.status == expected, f"{path}: HTTP {response.status}"
    # The same path (a form may add a query, e.g. the submit form's one-time form id), with
    # the query asked for.
    asked, got = urlsplit(path), urlsplit(page.url)
    assert got.path == asked.path and asked.query in got.query, f"{path} went to {page.url}"
    return page


def confirmation(context: BrowserContext, world: World, name: str, path: str, form: str) -> Page:
    """Open ``path``, press ``form``'s button (after ticking univ's job for the bulk cancel)
    and wait for the confirmation page it shows; nothing is confirmed."""
    page = visit(context, world, name, path)
    if form == BULK_FORM:
        page.locator(f"#pick-{world.job}").check()
    page.locator(form).first.locator("button[type=submit]").click()
    page.get_by_test_id("confirm").wait_for()
    return page


def reach(context: BrowserContext, world: World, name: str, path: str, form: str | None) -> Page:
    """A page of ``World.every_page``: opened, or its confirmation page."""
    if form is None:
        return visit(context, world, name, path)
    return confirmation(context, world, name, path, form)


NOT_FOUND = ("not-found", "foreign-job")
