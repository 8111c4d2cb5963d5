"""Usage reports (GET /v1/usage, the portal's CSV, `nuri admin usage`) from real usage
records written by the scheduler's own functions, on SQLite and PostgreSQL: exact per period
(an attempt crossing a month end counts in both months), scoped to the caller's member."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from controlplane.db.models import Job
from controlplane.usage import close_usage, open_usage
from tests.conftest import World, bearer, ok
from tests.integration.portal.test_portal import signed_in


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def run(w: World, job_id: str, start: datetime, end: datetime | None, attempt: int = 1) -> None:
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        assert job is not None
        job.pool, job.attempt = "kr-test-h200", attempt
        s.add(job)
        open_usage(s, job, start)
        if end is not None:
            close_usage(s, job_id, attempt, end)
        s.commit()


def lines(report: dict) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    return {(line["member"], line["pool"]): line for line in report["lines"]}


def seeded(world: World) -> World:
    # alpha: 8 GPUs from Oct 31 23:00 to Nov 1 01:00 (1 h in each month), then a second
    # attempt of 30 min in November; beta: 8 GPUs for 3 h in November.
    run(world, world.a.job["id"], at("2026-10-31T23:00:00"), at("2026-11-01T01:00:00"))
    run(world, world.a.job["id"], at("2026-11-02T00:00:00"), at("2026-11-02T00:30:00"), 2)
    run(world, world.b.job["id"], at("2026-11-10T10:00:00"), at("2026-11-10T13:00:00"))
    return world


def test_report_per_period_is_exact(world: World) -> None:
    w = seeded(world)
    nov = ok(w.client.get("/v1/usage?period=2026-11", headers=w.root))
    got = lines(nov)
    assert got[("alpha", "kr-test-h200")]["gpu_hours"] == 12.0  # 1 h + 0.5 h, x 8
    assert got[("alpha", "kr-test-h200")]["jobs"] == 1
    assert got[("alpha", "kr-test-h200")]["attempts"] == 2
    assert got[("beta", "kr-test-h200")]["gpu_hours"] == 24.0
    assert nov["total_gpu_hours"] == 36.0
    oct_ = ok(w.client.get("/v1/usage?period=2026-10", headers=w.root))
    assert [(x["member"], x["gpu_hours"]) for x in oct_["lines"]] == [("alpha", 8.0)]
    q4 = ok(w.client.get("/v1/usage?period=2026-Q4", headers=w.root))
    assert {k: v["gpu_hours"] for k, v in lines(q4).items()} == {
        ("alpha", "kr-test-h200"): 20.0,
        ("beta", "kr-test-h200"): 24.0,
    }
    assert ok(w.client.get("/v1/usage?period=2026-Q3", headers=w.root))["lines"] == []


def test_running_attempts_count_up_to_now(world: World) -> None:
    started = datetime.now(UTC) - timedelta(hours=2)
    run(world, world.a.job["id"], started, None)
    period = f"{started.year:04d}-{started.month:02d}"
    line = ok(world.client.get(f"/v1/usage?period={period}", headers=world.root))["lines"][0]
    assert line["running_attempts"] == 1
    assert 15.9 <= line["gpu_hours"] <= 16.5  # 8 GPUs x ~2 h, while the test runs


def test_report_is_scoped_to_the_member(world: World) -> None:
    w = seeded(world)
    mine = ok(w.client.get("/v1/usage?period=2026-Q4", headers=bearer(w.a.user_token)))
    assert {x["member"] for x in mine["lines"]} == {"alpha"}
    foreign = w.client.get("/v1/usage?period=2026-Q4&member=beta", headers=bearer(w.a.user_token))
    assert foreign.status_code == 404
    auditor = ok(w.client.get("/v1/usage?period=2026-Q4", headers=bearer(w.auditor_token)))
    assert {x["member"] for x in auditor["lines"]} == {"alpha", "beta"}
    only_beta = ok(w.client.get("/v1/usage?period=2026-Q4&member=beta", headers=w.root))
    assert {x["member"] for x in only_beta["lines"]} == {"beta"}


def test_csv_export_matches_the_json(world: World) -> None:
    w = seeded(world)
    report = ok(w.client.get("/v1/usage?period=2026-Q4", headers=w.root))
    resp = w.client.get("/v1/usage?period=2026-Q4&format=csv", headers=w.root)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert 'filename="nuri-usage-2026-Q4.csv"' in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(r["member"], r["pool"], float(r["gpu_hours"])) for r in rows] == [
        (x["member"], x["pool"], x["gpu_hours"]) for x in report["lines"]
    ]
    # The portal's download is the same report, scoped to the signed-in member.
    portal = signed_in(w, w.a.user_token).get("/portal/usage.csv?period=2026-Q4")
    assert portal.status_code == 200
    assert [r["member"] for r in csv.DictReader(io.StringIO(portal.text))] == ["alpha"]


def test_bad_periods_are_4xx_with_a_body(world: World) -> None:
    for period in ("2026-13", "someday", "2026-Q5"):
        resp = world.client.get(f"/v1/usage?period={period}", headers=world.root)
        assert resp.status_code == 422, period
        assert set(resp.json()) == {"code", "message", "details"}
    resp = world.client.get("/v1/usage", headers=world.root)
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error"
    assert world.client.get("/v1/usage?period=2026-11").status_code == 401


def test_budgets_forecast_when_they_run_out(world: World) -> None:
    """The world's budgets are 1,000 GPU-hours for 2026-Q4, the quarter under way."""
    now = datetime.now(UTC)
    assert at("2026-10-01T00:00:00") <= now < at("2027-01-01T00:00:00")
    run(world, world.a.job["id"], now - timedelta(hours=10), None)  # 8 GPUs for 10 h so far
    budgets = ok(world.client.get("/v1/budgets", headers=world.root))["items"]
    alpha = next(b for b in budgets if b["member_id"] == world.a.member["id"])
    beta = next(b for b in budgets if b["member_id"] == world.b.member["id"])
    seen = alpha["forecast"]
    assert seen["gpus_in_use"] == 8 and seen["current_burn_gpu_hours_per_hour"] == 8.0
    assert 79.5 <= alpha["used_gpu_hours"] <= 81.0
    assert 919.0 <= seen["remaining_gpu_hours"] <= 920.5
    runs_out = datetime.fromisoformat(seen["exhausted_at"])
    assert abs((runs_out - now).total_seconds() / 3600 - 115.0) < 0.5  # 920 GPU-h at 8 an hour
    assert seen["lasts_the_period"] is False
    assert beta["forecast"] == {
        "remaining_gpu_hours": 1000.0,
        "gpus_in_use": 0,
        "current_burn_gpu_hours_per_hour": 0.0,
        "average_burn_gpu_hours_per_hour": 0.0,
        "exhausted_at": None,
        "lasts_the_period": True,
    }
    # The portal shows it to the member.
    page = signed_in(world, world.a.user_token).get("/portal/usage").text
    assert "runs out" in page and "8 GPUs running" in page
    # A period that is not under way has nothing to forecast.
    past = ok(
        world.client.post(
            "/v1/budgets",
            headers=world.root,
            json={"member": "alpha", "period": "2026-Q3", "gpu_hours": 10},
        ),
        201,
    )
    assert past["forecast"] is None
