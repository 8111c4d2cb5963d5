"""The portal's number and period fields (SQLite and PostgreSQL): Unicode digits, non-finite or
overflowing numbers and periods outside the calendar are the form again with the problem and a
422, nothing changes, and the same form with a plain value goes through; never a 500."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlmodel import select

from controlplane.db.models import ApiToken, Budget, Job, Quota
from controlplane.usage import period_of
from tests.conftest import ADMIN_TOKEN, World
from tests.integration.api.test_out_of_range_input import (
    ARABIC_INDIC,
    FULLWIDTH,
    PERIODS,
    UNICODE_DIGITS,
    written_in,
)
from tests.integration.api.test_usage_report import run
from tests.integration.portal.test_portal import csrf, engine_session, signed_in

TOKEN_FORM = ("/portal/tokens", {"name": "t", "scopes": "read", "expires_in_days": "30"})
SUBMIT_FORM = (
    "/portal/jobs/new",
    {
        "kind": "lora",
        "model": "axk1-tiny",
        "gpus": "1",
        "inputs": "alpha-corpus",
        "priority_class": "research",
        "max_runtime_h": "1",
    },
)
BUDGET_FORM = (
    "/portal/admin/budgets",
    {"member": "beta", "period": "2027-Q1", "gpu_hours": "5", "tokens_unlimited": "on"},
)
QUOTA_FORM = (
    "/portal/admin/quotas",
    {
        "member": "beta",
        "pool": "kr-test-h200",
        "nominal_gpus": "4",
        "borrowing_unlimited": "on",
        "lending_unlimited": "on",
    },
)


def stored(w: World) -> tuple[Any, ...]:
    """What the forms write: tokens, jobs, budgets and quotas."""
    with engine_session(w) as s:
        return (
            s.exec(select(func.count()).select_from(ApiToken)).one(),
            s.exec(select(func.count()).select_from(Job)).one(),
            sorted((b.period, b.gpu_hours) for b in s.exec(select(Budget)).all()),
            sorted((q.member_id, q.nominal_gpus) for q in s.exec(select(Quota)).all()),
        )


def refused(resp: Any) -> str:
    """A page for people with a 4xx, never a 500."""
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    return str(resp.text)


def test_number_fields_take_plain_numbers_only(world: World) -> None:
    user, admin = signed_in(world, world.a.user_token), signed_in(world, ADMIN_TOKEN)
    cases: list[tuple[TestClient, tuple[str, dict[str, str]], str, list[str]]] = [
        (user, TOKEN_FORM, "expires_in_days", ["\u00b2", written_in(ARABIC_INDIC, "12"), "inf"]),
        (user, SUBMIT_FORM, "gpus", ["\u00b2", written_in(ARABIC_INDIC, "1"), "1e400"]),
        (user, SUBMIT_FORM, "steps", ["\u00b2", written_in(FULLWIDTH, "12"), "nan"]),
        (
            user,
            SUBMIT_FORM,
            "max_runtime_h",
            ["inf", "-inf", "1e400", "nan", "1e306", written_in(ARABIC_INDIC, "1")],
        ),
        (admin, BUDGET_FORM, "gpu_hours", ["inf", "nan", "1e400", "1e300", "\u00b2"]),
        (admin, QUOTA_FORM, "nominal_gpus", ["\u00b2", written_in(FULLWIDTH, "4"), "1e400"]),
    ]
    for client, (path, base), name, values in cases:
        token = csrf(client, "/portal/tokens")
        for value in values:
            before = stored(world)
            resp = client.post(path, data={"csrf": token, **base, name: value})
            assert resp.status_code == 422, (path, name, value, resp.status_code)
            assert 'data-testid="form-errors"' in refused(resp), (path, name, value)
            assert stored(world) == before, (path, name, value)
        # The same form with a plain number goes through: the field was the problem.
        done = client.post(path, data={"csrf": token, **base})
        assert done.status_code in (200, 303), done.text
        assert stored(world) != before


def test_periods_outside_the_calendar_and_huge_numbers_in_addresses(world: World) -> None:
    admin = signed_in(world, ADMIN_TOKEN)
    token = csrf(admin, "/portal/admin")
    path, base = BUDGET_FORM
    for period in ["9999-Q4", "0000-01", written_in(ARABIC_INDIC, "2026") + "-Q4"]:
        before = stored(world)
        resp = admin.post(path, data={"csrf": token, **base, "period": period})
        assert resp.status_code == 422 and 'data-testid="form-errors"' in refused(resp)
        assert stored(world) == before
    for query, code in [
        ("/portal/usage.csv?period=9999-Q4", "period_out_of_range"),
        ("/portal/usage.csv?period=0000-Q1", "period_out_of_range"),
        (f"/portal/usage.csv?period=2026-{written_in(FULLWIDTH, '12')}", "invalid_request"),
        (f"/portal/audit?after={10**30}", "validation_error"),
        (f"/portal/audit?after={written_in(ARABIC_INDIC, '12')}", "validation_error"),
    ]:
        page = refused(admin.get(query))
        assert f'data-testid="error-code">{code}<' in page, (query, page)
    # The last quarter a date can hold is a budget like any other.
    made = admin.post(path, data={"csrf": token, **base, "period": "9999-Q3"})
    assert made.status_code == 303, made.text
    assert (
        "<td>9999-Q3</td><td>9999-07-01</td><td>9999-10-01</td>" in admin.get("/portal/usage").text
    )


def forecast_cell(page: str, period: str) -> str:
    found = re.search(rf'<td>{period}</td>.*?data-testid="forecast">(.*?)</td>', page, re.S)
    assert found, page
    return found.group(1)


def test_the_largest_budget_is_shown_lasting_the_period(world: World) -> None:
    """1e9 GPU-hours at 8 GPUs runs out in year ~16,000: the usage page (which showed a 500
    to the admin and the member) says it lasts the period."""
    now = datetime.now(UTC)
    run(world, world.a.job["id"], now - timedelta(hours=1), None)
    admin = signed_in(world, ADMIN_TOKEN)
    period = period_of(now)
    data = {
        "csrf": csrf(admin, "/portal/admin"),
        "member": "alpha",
        "period": period,
        "tokens_unlimited": "on",
    }
    assert admin.post("/portal/admin/budgets", data={**data, "gpu_hours": "9"}).status_code == 303
    page = admin.get("/portal/usage")
    assert "runs out" in forecast_cell(page.text, period)  # 9 GPU-h at 8 an hour: a real date
    largest = admin.post("/portal/admin/budgets", data={**data, "gpu_hours": "1000000000"})
    assert largest.status_code == 303, largest.text
    for client in (admin, signed_in(world, world.a.user_token)):
        page = client.get("/portal/usage")
        assert page.status_code == 200, page.text
        cell = forecast_cell(page.text, period)
        assert "8 GPUs running" in cell and "lasts the period" in cell


NUMBER_TEXTS = st.one_of(
    st.floats().map(repr),  # inf, -inf, nan, 1e+300
    st.integers(-(2**70), 2**70).map(str),
    st.from_regex(rf"\A[-+.e0-9{UNICODE_DIGITS}]{{1,8}}\Z"),
    st.text(st.characters(codec="utf-8"), max_size=8),
)


@dataclass(frozen=True)
class Browsers:
    world: World
    admin: TestClient
    user: TestClient
    admin_csrf: str
    user_csrf: str


@pytest.fixture
def browsers(world: World) -> Browsers:
    """The platform admin and alpha's user, signed in once for every example."""
    admin, user = signed_in(world, ADMIN_TOKEN), signed_in(world, world.a.user_token)
    return Browsers(world, admin, user, csrf(admin, "/portal/admin"), csrf(user))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(period=PERIODS, hours=NUMBER_TEXTS, number=NUMBER_TEXTS)
def test_any_text_in_a_number_or_period_field_is_answered(
    browsers: Browsers, period: str, hours: str, number: str
) -> None:
    b = browsers
    path, base = BUDGET_FORM
    data = {"csrf": b.admin_csrf, **base, "period": period, "gpu_hours": hours}
    budget = b.admin.post(path, data=data)
    assert budget.status_code == 303 or refused(budget)
    path, base = SUBMIT_FORM
    data = {"csrf": b.user_csrf, **base, "max_runtime_h": hours, "gpus": number}
    job = b.user.post(path, data=data)
    assert job.status_code == 303 or refused(job)
    path, base = TOKEN_FORM
    made = b.user.post(path, data={"csrf": b.user_csrf, **base, "expires_in_days": number})
    assert made.status_code == 200 or refused(made)
    csv = b.admin.get("/portal/usage.csv", params={"period": period})
    assert csv.status_code == 200 or refused(csv)
    assert b.admin.get("/portal/usage").status_code == 200
