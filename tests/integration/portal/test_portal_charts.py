"""The cluster over time (issue 16 item 3) on SQLite and PostgreSQL: GPUs in use per pool and
member from usage records written by the scheduler's own functions, queue length and
admission wait from the jobs' real transitions, a budget's burn that agrees with the budget's
own count, all scoped (a member's chart never holds another member's GPUs or jobs); and the
pages that draw them: usage, the admins' overview, the job's loss curve."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from controlplane.auth import Principal
from controlplane.db.models import Budget, Job, JobMetric, Role
from controlplane.jobstate import JobStatus, transition
from controlplane.portal import timeseries
from controlplane.portal.charts import Series
from controlplane.services.inventory import used_gpu_hours
from controlplane.usage import close_usage, open_usage
from tests.conftest import World
from tests.integration.portal.test_portal import engine_session, signed_in

POOL = "kr-test-h200"
DAY = timeseries.WINDOWS["day"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def caller(member_id: str | None, role: Role) -> Principal:
    return Principal("usr_test", member_id, role, "tok_test", frozenset({"read"}))


def auditor() -> Principal:
    return caller(None, Role.AUDITOR)


def member_user(w: World, tenant: str) -> Principal:
    return caller(getattr(w, tenant).member["id"], Role.MEMBER_USER)


def run(w: World, job_id: str, start: datetime, end: datetime | None, attempt: int = 1) -> None:
    """An attempt on GPUs as the scheduler records it (``open_usage`` / ``close_usage``)."""
    with engine_session(w) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.pool, job.attempt = POOL, attempt
        s.add(job)
        open_usage(s, job, start)
        if end is not None:
            close_usage(s, job_id, attempt, end)
        s.commit()


def admit(w: World, job_id: str, when: datetime) -> None:
    """The engine's admission: the guarded transition and its event."""
    with engine_session(w) as s:
        transition(s, job_id, expected=JobStatus.QUEUED, to=JobStatus.ADMITTED, now=when, pool=POOL)
        s.commit()


def created(w: World, job_id: str) -> datetime:
    with engine_session(w) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.created_at


def values(series: list[Series]) -> dict[str, list[float]]:
    return {s.name: [round(y, 6) for _, y in s.points] for s in series}


def test_gpus_in_use_per_pool_and_member_are_scoped(world: World) -> None:
    w = world
    # alpha: 8 GPUs 07:00-10:30; beta: 8 GPUs from 09:00, still running at 12:30.
    run(w, w.a.job["id"], at("2026-11-10T07:00:00"), at("2026-11-10T10:30:00"))
    run(w, w.b.job["id"], at("2026-11-10T09:00:00"), None)
    now = at("2026-11-10T12:30:00")
    with engine_session(w) as s:
        pools, members = timeseries.gpus_in_use(s, auditor(), DAY, now)
        mine_pools, mine_members = timeseries.gpus_in_use(s, member_user(w, "a"), DAY, now)
        theirs, _ = timeseries.gpus_in_use(s, member_user(w, "b"), DAY, now)
    # Hours 13:00 (yesterday) .. 12:00: 24 buckets, the last one half elapsed.
    assert [datetime.fromtimestamp(x, UTC).hour for x, _ in pools[0].points][-6:] == [
        7,
        8,
        9,
        10,
        11,
        12,
    ]
    assert values(pools)[POOL][-6:] == [8, 8, 16, 12, 8, 8]
    assert {k: v[-6:] for k, v in values(members).items()} == {
        "alpha": [8, 8, 8, 4, 0, 0],
        "beta": [0, 0, 8, 8, 8, 8],
    }
    # A member's chart holds its own GPUs only, in every series.
    assert values(mine_pools)[POOL][-6:] == [8, 8, 8, 4, 0, 0]
    assert list(values(mine_members)) == ["alpha"]
    assert values(theirs)[POOL][-6:] == [0, 0, 8, 8, 8, 8]
    assert sum(values(pools)[POOL][:-6]) == 0


def test_queue_length_and_admission_wait_come_from_transitions(world: World) -> None:
    w = world
    submitted = created(w, w.a.job["id"])
    # alpha: admitted after 30 min, sent back to the queue (an infrastructure failure) at
    # 60 min, admitted again at 100 min; beta: waiting all along.
    admit(w, w.a.job["id"], submitted + timedelta(minutes=30))
    with engine_session(w) as s:
        when = submitted + timedelta(minutes=60)
        transition(s, w.a.job["id"], expected=JobStatus.ADMITTED, to=JobStatus.QUEUED, now=when)
        s.commit()
    admit(w, w.a.job["id"], submitted + timedelta(minutes=100))
    now = submitted + timedelta(hours=3)
    start, end = DAY.bounds(now)
    with engine_session(w) as s:
        everyone = timeseries.queue_history(s, auditor(), start, end, now.timestamp())
        alpha = timeseries.queue_history(s, member_user(w, "a"), start, end, now.timestamp())
        beta = timeseries.queue_history(s, member_user(w, "b"), start, end, now.timestamp())
    assert len(everyone.waiting) == 3
    assert [round(waited) for _, waited in everyone.admissions] == [1800, 2400]
    assert alpha.admissions == everyone.admissions and len(alpha.waiting) == 2
    assert beta.admissions == [] and len(beta.waiting) == 1  # still waiting at ``now``
    assert beta.waiting[0].end == now.timestamp()
    length, waits, unit = timeseries.queue_series(everyone, DAY, now)
    peak = dict(length[0].points)
    first_bucket = next(x for x in peak if x <= submitted.timestamp() < x + DAY.seconds)
    assert peak[first_bucket] == 2 and max(peak.values()) == 2
    assert peak[max(peak)] == 1  # beta alone at the end
    assert unit == "minutes"
    assert sorted(round(y) for s in waits for _, y in s.points) in ([30, 30, 40, 40], [35, 40])
    # Waits stay scoped too: beta's people see no admission.
    _, beta_waits, _ = timeseries.queue_series(beta, DAY, now)
    assert all(not s.points for s in beta_waits)
    # Two days on, the day's window begins after every event: beta, waiting since before
    # it, waits through the whole window; alpha, admitted before it, is not in it.
    later = submitted + timedelta(days=2)
    start, end = DAY.bounds(later)
    with engine_session(w) as s:
        quiet = timeseries.queue_history(s, auditor(), start, end, later.timestamp())
    assert quiet.waiting == [timeseries.Interval(start, later.timestamp())]
    assert quiet.admissions == []


def test_a_budget_burn_agrees_with_the_budget(world: World) -> None:
    w = world
    run(w, w.a.job["id"], at("2026-11-10T07:00:00"), at("2026-11-10T10:30:00"))  # 28 GPU-h
    run(w, w.b.job["id"], at("2026-11-10T08:00:00"), None)  # beta's, never in alpha's burn
    now = at("2026-11-10T12:30:00")
    with engine_session(w) as s:
        budget = s.exec(select(Budget).where(Budget.member_id == w.a.member["id"])).one()
        burn = timeseries.budget_burn(s, budget, now)
        counted = used_gpu_hours(s, budget.member_id, budget.starts_at, budget.ends_at, now)
        chart = timeseries.burn_chart(s, budget, "alpha", now)
    assert burn.points[0] == (at("2026-10-01T00:00:00").timestamp(), 0.0)
    assert burn.points[-1][0] == now.timestamp()
    assert burn.points[-1][1] == pytest.approx(counted) and counted == pytest.approx(28.0)
    ys = [y for _, y in burn.points]
    assert ys == sorted(ys)  # cumulative
    svg = str(chart.svg)
    assert "budget: 1000 GPU-h" in svg and ">GPU-hours (cumulative)</text>" in svg
    assert "used · 2026-11-10 12:30 UTC: 28 GPU-h" in svg


def chart_html(page: str, key: str) -> str:
    found = re.search(
        rf'<figure class="chart-figure" data-testid="chart-{key}">(.*?)</figure>', page, re.S
    )
    assert found, f"no chart {key}"
    return found.group(1)


def test_usage_page_draws_the_callers_gpus_only(world: World) -> None:
    w = world
    now = datetime.now(UTC)
    run(w, w.a.job["id"], now - timedelta(hours=3), None)
    run(w, w.b.job["id"], now - timedelta(hours=3), None)
    alpha = signed_in(w, w.a.user_token)
    page = alpha.get("/portal/usage").text
    gpus = chart_html(page, "gpus-by-pool")
    assert 'role="img"' in gpus and ">time (UTC)</text>" in gpus
    assert ">GPUs (average per hour)</text>" in gpus
    titles = re.findall(r"<title>(kr-test-h200 · [^<]*)</title>", gpus)
    assert len(titles) == 24 and titles[-2].endswith(": 8 GPUs")  # alpha's 8, never 16
    assert "beta" not in page and "chart-gpus-by-member" not in page
    assert 'href="?window=week"' in page and 'aria-current="page">Last day<' in page
    everyone = signed_in(w, w.auditor_token).get("/portal/usage").text
    assert chart_html(everyone, "gpus-by-pool").count(": 16 GPUs</title>") >= 1
    members = chart_html(everyone, "gpus-by-member")
    assert 'data-series="alpha"' in members and 'data-series="beta"' in members
    week = alpha.get("/portal/usage?window=week").text
    assert "GPUs (average per 6 hours)" in week and len(re.findall(r"kr-test-h200 · ", week)) == 28
    bad = alpha.get("/portal/usage?window=year")
    assert (
        bad.status_code == 422 and "&#39;day&#39;, &#39;week&#39; or &#39;quarter&#39;" in bad.text
    )


def test_overview_is_for_platform_admins_and_auditors(world: World) -> None:
    w = world
    now = datetime.now(UTC)
    admit(w, w.a.job["id"], now)
    page = signed_in(w, w.auditor_token).get("/portal/overview")
    assert page.status_code == 200
    row = re.search(r"<td>kr-test-h200</td>(.*?)</tr>", page.text, re.S)
    assert row is not None
    cells = dict(re.findall(r'data-testid="([a-z-]+)">(\d+)<', row.group(1)))
    assert cells == {"in-use": "8", "free": "24", "waiting": "1"}  # 4 nodes x 8 GPUs
    assert "1 job waiting in the queue, asking for 8 GPUs" in page.text
    queue = chart_html(page.text, "queue-length")
    assert ">jobs waiting</text>" in queue and "most waiting · " in queue
    assert 'href="/portal/overview" aria-current="page"' in page.text
    user = signed_in(w, w.a.user_token)
    assert user.get("/portal/overview").status_code == 403
    assert "/portal/overview" not in user.get("/portal/usage").text


def test_job_page_loss_curve_has_axes_steps_and_hover_values(sqlite_world: World) -> None:
    world = sqlite_world
    job_id = world.a.job["id"]
    now = datetime.now(UTC)
    with engine_session(world) as s:
        for step, loss in enumerate([2.5, "n/a", 1.7, -3.0, 1.2], start=1):
            s.add(JobMetric(job_id=job_id, attempt=1, at=now, step=step, values={"loss": loss}))
        s.commit()
    page = signed_in(world, world.a.user_token).get(f"/portal/jobs/{job_id}").text
    curve = chart_html(page, "curve")
    assert ">step</text>" in curve and ">loss</text>" in curve
    assert re.findall(r"<title>(loss · [^<]*)</title>", curve) == [
        "loss · step 1: 2.5",
        "loss · step 3: 1.7",
        "loss · step 5: 1.2",
    ]
    assert "first 2.5" in curve and "last 1.2" in curve and "<details" in curve
