"""Input past what a date, a float or an ASCII number can hold is a 4xx with a coded body or a
correct 2xx, never a 500, on SQLite and PostgreSQL: periods before year 1 or ending after
9999, non-finite floats, Unicode digits, and budgets so large that their forecast runs past the
calendar (which must still read, lasting the period)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.api.schemas import MAX_GPU_HOURS
from controlplane.usage import period_of
from tests.conftest import World, bearer, ok
from tests.integration.api.test_unstorable_input import assert_4xx
from tests.integration.api.test_usage_report import run

JSON = {"Content-Type": "application/json"}
# Digits that are not ASCII: str.isdigit() says yes to all, int() to some, the API to none.
ARABIC_INDIC = "".join(chr(0x660 + i) for i in range(10))
FULLWIDTH = "".join(chr(0xFF10 + i) for i in range(10))
UNICODE_DIGITS = ARABIC_INDIC + FULLWIDTH + "\u00b2\u00b3\u00b9"  # and superscripts 2, 3, 1


def written_in(digits: str, text: str) -> str:
    """``text`` with its ASCII digits written in another script's ``digits``."""
    return text.translate(str.maketrans("0123456789", digits))


NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e400", "-1e400"]


def post_budget(w: World, member: str, period: str, gpu_hours: str = "1") -> Any:
    body = f'{{"member": {json.dumps(member)}, "period": {json.dumps(period)}, '
    body += f'"gpu_hours": {gpu_hours}}}'
    return w.client.post("/v1/budgets", headers={**w.root, **JSON}, content=body.encode())


def test_periods_outside_the_calendar_are_refused(world: World) -> None:
    outside = ["9999-Q4", "9999-H2", "9999-12", "0000-01", "0000-Q1"]
    for period in outside:
        for resp in (
            world.client.get("/v1/usage", params={"period": period}, headers=world.root),
            world.client.get(
                "/v1/usage", params={"period": period, "format": "csv"}, headers=world.root
            ),
            post_budget(world, "beta", period),
        ):
            assert resp.status_code == 422
            body = assert_4xx(resp)
            assert body["code"] == "period_out_of_range"
            assert body["details"] == {"period": period, "first": "0001-01", "last": "9999-11"}
    budgets = ok(world.client.get("/v1/budgets", headers=world.root))["items"]
    assert not {b["period"] for b in budgets} & set(outside)


def test_the_calendars_first_and_last_periods_work(world: World) -> None:
    for period, starts_at, ends_at in [
        ("9999-Q3", "9999-07-01T00:00:00Z", "9999-10-01T00:00:00Z"),
        ("9999-11", "9999-11-01T00:00:00Z", "9999-12-01T00:00:00Z"),
        ("9999-H1", "9999-01-01T00:00:00Z", "9999-07-01T00:00:00Z"),
        ("0001-01", "0001-01-01T00:00:00Z", "0001-02-01T00:00:00Z"),
    ]:
        made = ok(post_budget(world, "beta", period, "5"), 201)
        assert (made["starts_at"], made["ends_at"], made["forecast"]) == (starts_at, ends_at, None)
        again = ok(world.client.get(f"/v1/budgets/{made['id']}", headers=world.root))
        assert (again["period"], again["starts_at"], again["ends_at"]) == (
            period,
            starts_at,
            ends_at,
        )
        report = ok(world.client.get("/v1/usage", params={"period": period}, headers=world.root))
        assert (report["starts_at"], report["ends_at"], report["lines"]) == (
            starts_at,
            ends_at,
            [],
        )


def test_periods_in_other_digits_are_refused(world: World) -> None:
    """``\\d`` matches Arabic-Indic and fullwidth digits: such a period was stored as it was
    typed and broke the CSV's file name; ASCII digits only."""
    for period in [
        written_in(ARABIC_INDIC, "2026-Q4"),
        written_in(FULLWIDTH, "2026-Q4"),
        "2026-" + written_in(FULLWIDTH, "12"),
        "2026-Q\u00b2",
        "2026-Q4\n",
    ]:
        for fmt in ("json", "csv"):
            usage = world.client.get(
                "/v1/usage", params={"period": period, "format": fmt}, headers=world.root
            )
            assert assert_4xx(usage)["code"] == "invalid_request"
        assert assert_4xx(post_budget(world, "beta", period))["code"] == "validation_error"


def test_non_finite_floats_in_bodies_are_refused(world: World) -> None:
    budget = world.a.budget
    for number in NON_FINITE:
        for resp in (
            post_budget(world, "alpha", "2027-Q1", number),
            world.client.patch(
                f"/v1/budgets/{budget['id']}",
                headers={**world.root, **JSON},
                content=f'{{"gpu_hours": {number}}}'.encode(),
            ),
        ):
            body = assert_4xx(resp)
            assert body["code"] == "validation_error"
            assert body["details"]["errors"][0]["type"] == "finite_number"  # type: ignore[index]
    for number, (kind, knob) in itertools.product(
        NON_FINITE, [("lora", "lr"), ("lora", "lora_dropout"), ("distill", "temperature")]
    ):
        job = (
            f'{{"kind": "{kind}", "model": "axk1-tiny", "gpus": 1, "inputs": ["alpha-corpus"], '
            f'"config": {{"{knob}": {number}}}}}'
        )
        resp = world.client.post(
            "/v1/jobs", headers={**bearer(world.a.user_token), **JSON}, content=job.encode()
        )
        assert assert_4xx(resp)["code"] == "invalid_config"
    kept = ok(world.client.get(f"/v1/budgets/{budget['id']}", headers=world.root))
    assert kept["gpu_hours"] == budget["gpu_hours"]


@pytest.fixture
def burning(world: World) -> tuple[World, str]:
    """Alpha's 8 GPUs running for the last hour, and a budget for the month under way: its
    forecast is computed on every read."""
    now = datetime.now(UTC)
    run(world, world.a.job["id"], now - timedelta(hours=1), None)
    return world, ok(post_budget(world, "alpha", period_of(now), "9"), 201)["id"]


def test_the_largest_budget_lasts_the_period_and_every_read_answers(
    burning: tuple[World, str],
) -> None:
    """At 8 GPUs an hour the largest budget runs out in year ~16,000, past the last date a
    datetime holds: the forecast says it lasts the period, and no read of the member's
    budgets fails on it (each did, with a 500)."""
    world, budget_id = burning
    small = ok(world.client.get(f"/v1/budgets/{budget_id}", headers=world.root))["forecast"]
    assert small["gpus_in_use"] == 8 and small["lasts_the_period"] is False  # a real date
    assert datetime.fromisoformat(small["exhausted_at"]) > datetime.now(UTC)
    path = f"/v1/budgets/{budget_id}"
    ok(world.client.patch(path, headers=world.root, json={"gpu_hours": MAX_GPU_HOURS}))
    for who in (world.root, bearer(world.a.admin_token)):
        seen = ok(world.client.get(path, headers=who))["forecast"]
        assert seen["gpus_in_use"] == 8 and seen["current_burn_gpu_hours_per_hour"] == 8.0
        assert seen["lasts_the_period"] is True and seen["exhausted_at"] is None
        assert seen["remaining_gpu_hours"] > MAX_GPU_HOURS - 100
        listed = ok(world.client.get("/v1/budgets?member=alpha", headers=who))["items"]
        assert budget_id in {b["id"] for b in listed}
    # The bound is the schema's, documented in the OpenAPI; past it is refused.
    over = world.client.patch(path, headers=world.root, json={"gpu_hours": MAX_GPU_HOURS * 2})
    assert assert_4xx(over)["code"] == "validation_error"
    spec = world.client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("BudgetCreate", "BudgetUpdate"):
        field = spec[name]["properties"]["gpu_hours"]
        # BudgetUpdate's is optional (a PATCH may change only the token cap): number or null.
        numbers = [f for f in field.get("anyOf", [field]) if f.get("type") == "number"]
        assert [f["maximum"] for f in numbers] == [MAX_GPU_HOURS], field


def test_unicode_digits_are_not_numbers(world: World) -> None:
    user = bearer(world.a.user_token)
    job = {"kind": "lora", "model": "axk1-tiny", "gpus": 1, "inputs": ["alpha-corpus"]}
    for text in [written_in(ARABIC_INDIC, "12"), written_in(FULLWIDTH, "12"), "\u00b2", "1\u00b2"]:
        for path, params, who in [
            ("/v1/jobs", {"limit": text}, user),
            ("/v1/audit/events", {"after": text}, world.root),
        ]:
            resp = world.client.get(path, params=params, headers=who)
            assert assert_4xx(resp)["code"] == "validation_error"
        gpus = world.client.post("/v1/jobs", headers=user, json={**job, "gpus": text})
        assert assert_4xx(gpus)["code"] == "validation_error"
        steps = world.client.post("/v1/jobs", headers=user, json={**job, "config": {"steps": text}})
        assert assert_4xx(steps)["code"] == "invalid_config"


def answered(resp: Any) -> int:
    """Never a 5xx; a 4xx is the API's error body, exactly."""
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert set(resp.json()) == {"code", "message", "details"}, resp.text
    return int(resp.status_code)


PERIODS = st.one_of(
    st.builds(
        "{:04d}-{}".format,
        st.integers(0, 9999),
        st.sampled_from(["Q1", "Q3", "Q4", "Q5", "H1", "H2", "01", "11", "12", "13", "00"]),
    ),
    st.from_regex(rf"\A[0-9{UNICODE_DIGITS}]{{4}}-(Q|H)?[0-9{UNICODE_DIGITS}]{{1,2}}\Z"),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
NUMBER_TEXTS = st.one_of(
    st.floats().map(lambda x: json.dumps(x)),  # NaN, Infinity, -Infinity as JSON texts
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(["1e400", "-1e400", "1e300", "5e-324", "-0.0", repr(MAX_GPU_HOURS)]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(period=PERIODS, gpu_hours=NUMBER_TEXTS, text=st.from_regex(rf"\A[-0-9{UNICODE_DIGITS}]+\Z"))
def test_any_period_or_number_is_answered_and_budgets_stay_readable(
    burning: tuple[World, str], period: str, gpu_hours: str, text: str
) -> None:
    """Whatever is sent, the answer is a coded 4xx or a 2xx, and the budgets (one of them
    forecast at a real burn) still read afterwards."""
    world, budget_id = burning
    answered(world.client.get("/v1/usage", params={"period": period}, headers=world.root))
    made = post_budget(world, "beta", period, gpu_hours)
    if answered(made) == 201:
        budget = ok(world.client.get(f"/v1/budgets/{made.json()['id']}", headers=world.root))
        assert budget["starts_at"] < budget["ends_at"]
    changed = world.client.patch(
        f"/v1/budgets/{budget_id}",
        headers={**world.root, **JSON},
        content=f'{{"gpu_hours": {gpu_hours}}}'.encode(),
    )
    if answered(changed) == 200:
        assert changed.json()["forecast"]["gpus_in_use"] == 8
    ok(world.client.get("/v1/budgets?member=alpha", headers=world.root))
    answered(world.client.get("/v1/jobs", params={"limit": text}, headers=world.root))
