"""Usage that tells the truth (SQLite and PostgreSQL).

GPUs a member holds in a pool where it has no quota row show on its usage page (with what
the pool lets members without a quota do); the budget "left this period" on the job page,
on the usage page and in the engine's ``budget_exhausted`` reason are one computation and
say what running jobs reserve; and admins choose, per pool, what members without a quota
row may do there -- on the API (4xx on bad values), in the CLI and in a prefilled portal form.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, select

import quotas
from controlplane.db.models import Job, Node
from controlplane.db.types import utcnow
from controlplane.scheduler import snapshot
from controlplane.services.inventory import period_bounds
from controlplane.usage import open_usage, period_of
from tests.conftest import ADMIN_TOKEN, World, bearer, ok
from tests.integration.portal.test_portal import csrf, engine_session, signed_in

EXTRA = "kr-test-extra"


def extra_pool(w: World, **settings: Any) -> dict[str, Any]:
    body = {
        "name": EXTRA,
        "gpu_model": "A100",
        "gpu_memory_gib": 80,
        "gpus_per_node": 8,
        "site": "Daejeon",
        "region": "kr-seoul",
        "jurisdiction": "KR",
        "node_count": 1,
        **settings,
    }
    created: dict[str, Any] = ok(w.client.post("/v1/pools", headers=w.root, json=body), 201)
    return created


def hold(w: World, job_id: str, pool: str, started: datetime) -> None:
    """The job runs on all of one node of ``pool`` since ``started``, as the scheduler
    records it (status, assignment, an open usage record)."""
    with engine_session(w) as s:
        job = s.get(Job, job_id)
        assert job is not None
        node = s.exec(select(Node).where(Node.name == f"{pool}-000")).one()
        job.status, job.pool = "RUNNING", pool
        job.assignment = [[node.name, job.gpus]]
        job.admitted_at = job.started_at = started
        s.add(job)
        open_usage(s, job, started)
        s.commit()


def current_budget(w: World) -> None:
    """Alpha's budget covers today: the world's 2026-Q4 one, or one made for this month."""
    start, end = period_bounds("2026-Q4")
    if not start <= utcnow() < end:
        body = {"member": "alpha", "period": period_of(utcnow()), "gpu_hours": 1000}
        ok(w.client.post("/v1/budgets", headers=w.root, json=body), 201)


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d", text)]


def cell(page: str, testid: str) -> str:
    found = re.search(rf'data-testid="{testid}"[^>]*>([^<]*)<', page)
    assert found, (testid, page)
    return found.group(1)


def test_gpus_without_a_quota_row_show_on_the_usage_page(sqlite_world: World) -> None:
    world = sqlite_world  # one backend: the pages, not the SQL, are under test
    extra_pool(world)
    hold(world, world.a.job["id"], EXTRA, utcnow() - timedelta(hours=1))
    alpha = signed_in(world, world.a.user_token).get("/portal/usage").text
    row = alpha[alpha.index('data-testid="no-quota-row"') :].split("</tr>")[0]
    assert EXTRA in row and '<td class="num">8</td>' in row, row
    assert "members without a quota may borrow idle GPUs without a limit" in row
    # The pool's quota row still reads 0 in use: the GPUs are where they run.
    assert (
        'data-testid="no-quota-row"'
        not in signed_in(world, world.b.user_token).get("/portal/usage").text
    )  # scoped: beta sees only its own
    admin = signed_in(world, ADMIN_TOKEN).get("/portal/usage").text
    assert "no-quota-row" in admin and ">alpha<" in admin.split('data-testid="quotas"')[1]
    ok(
        world.client.patch(
            f"/v1/pools/{EXTRA}", headers=world.root, json={"default_borrowing_limit": 2}
        )
    )
    again = signed_in(world, world.a.user_token).get("/portal/usage").text
    assert "members without a quota may borrow up to 2 GPUs" in again
    korean = signed_in(world, world.a.user_token).get("/portal/usage?lang=ko").text
    assert "할당량 없는 회원사는 GPU를 최대 2개까지 빌릴 수 있습니다" in korean


def test_left_this_period_agrees_on_both_pages_and_in_the_wait_reason(world: World) -> None:
    current_budget(world)
    extra_pool(world)
    hold(world, world.a.job["id"], EXTRA, utcnow() - timedelta(hours=2))
    alpha = signed_in(world, world.a.user_token)
    job_text = cell(alpha.get(f"/portal/jobs/{world.a.job['id']}").text, "budget-left")
    usage = alpha.get("/portal/usage").text
    reserved, left = float(cell(usage, "budget-reserved")), float(cell(usage, "budget-left"))
    # "L of 1000.0 GPU-h left this period (U used, R reserved by running jobs)"
    job_left, limit, used, job_reserved = numbers(job_text)
    assert "reserved by running jobs" in job_text and limit == 1000.0
    assert used >= 15.9 and reserved > 0  # 8 GPUs for 2 hours so far; the rest reserved
    assert abs(job_reserved - reserved) <= 0.1 and abs(job_left - left) <= 0.1
    assert abs(limit - used - reserved - left) <= 0.2
    # The same sentence in Korean, with the same numbers.
    korean = signed_in(world, world.a.user_token)
    ko_text = cell(korean.get(f"/portal/jobs/{world.a.job['id']}?lang=ko").text, "budget-left")
    assert ko_text.startswith("이번 기간 1000.0 GPU-h 중 ") and "GPU-h 남음" in ko_text, ko_text
    # The engine refuses a job on the same numbers, in the same words.
    big = ok(
        world.client.post(
            "/v1/jobs",
            headers=bearer(world.a.user_token),
            json={
                "kind": "lora",
                "model": "axk1-tiny",
                "gpus": 8,
                "inputs": [world.a.dataset["id"]],
                "max_runtime_s": 7 * 86400,
            },
        ),
        201,
    )
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    with Session(engine) as s:
        nodes = {n.name for n in s.exec(select(Node)).all()}
        snap = snapshot.build(s, nodes, now, quotas.EngineConfig())
        facts = snapshot.budgets_left(s, {world.a.member["id"]}, now)[world.a.member["id"]][1]
    waiting = {p.job_id: p for p in quotas.admit(snap, now.timestamp()).pending}[big["id"]]
    assert waiting.reasons[0].code == "budget_exhausted"
    assert facts.describe() in waiting.reasons[0].message
    assert "member alpha GPU-hour budget" in waiting.reasons[0].message  # a name, not an id


def test_admins_choose_what_members_without_quota_may_do(sqlite_world: World) -> None:
    world = sqlite_world  # one backend: the pages, not the SQL, are under test
    assert extra_pool(world)["default_borrowing_limit"] == "unlimited"  # today's behaviour
    for bad in (None, -1, "lots", 1.5):
        resp = world.client.patch(
            f"/v1/pools/{EXTRA}", headers=world.root, json={"default_borrowing_limit": bad}
        )
        assert 400 <= resp.status_code < 500, resp.text
        assert {"code", "message", "details"} <= set(resp.json())
    member_admin = bearer(world.a.admin_token)
    resp = world.client.patch(
        f"/v1/pools/{EXTRA}", headers=member_admin, json={"default_borrowing_limit": 0}
    )
    assert resp.status_code == 403, resp.text
    admin = signed_in(world, ADMIN_TOKEN)
    listing = admin.get("/portal/admin").text
    assert "borrow without a limit" in listing and 'data-testid="default-form"' not in listing
    form = admin.get(f"/portal/admin?defaults={EXTRA}").text
    assert re.search(r'value="unlimited" id="default-unlimited" checked', form), form
    token = csrf(admin, "/portal/admin")
    blank = admin.post(
        "/portal/admin/pools", data={"csrf": token, "pool": EXTRA, "choice": "limited", "gpus": ""}
    )
    assert blank.status_code == 422 and 'data-testid="field-error"' in blank.text
    assert (
        ok(world.client.get(f"/v1/pools/{EXTRA}", headers=world.root))["default_borrowing_limit"]
        == "unlimited"
    )  # nothing changed
    saved = admin.post(
        "/portal/admin/pools", data={"csrf": token, "pool": EXTRA, "choice": "limited", "gpus": "4"}
    )
    assert saved.status_code == 303, saved.text
    assert (
        ok(world.client.get(f"/v1/pools/{EXTRA}", headers=world.root))["default_borrowing_limit"]
        == 4
    )
    form = admin.get(f"/portal/admin?defaults={EXTRA}").text
    assert re.search(r'value="limited" id="default-limited" checked', form)
    assert re.search(r'id="default-gpus" name="gpus" inputmode="numeric" value="4"', form)
    assert "borrow up to 4 GPUs" in admin.get("/portal/admin").text
    none = admin.post("/portal/admin/pools", data={"csrf": token, "pool": EXTRA, "choice": "none"})
    assert none.status_code == 303
    assert (
        ok(world.client.get(f"/v1/pools/{EXTRA}", headers=world.root))["default_borrowing_limit"]
        == 0
    )
