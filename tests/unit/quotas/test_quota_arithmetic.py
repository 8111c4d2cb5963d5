"""Quota tree, fair share and budget arithmetic, table-driven."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotas.budgets import forecast, headroom_gpu_hours, job_cost_gpu_hours
from quotas.fair_share import FairShare, decay_usage, entitlement_weights
from quotas.quota_tree import QuotaTree
from quotas.snapshot import Budget, Cohort, Member, Quota, RunningWorkload


def tree(*members: Member, cohorts: tuple[Cohort, ...] = (Cohort("root"),)) -> QuotaTree:
    return QuotaTree(cohorts, members, ["p"])


@pytest.mark.parametrize(
    ("usage", "member", "available"),
    [
        # Shared: a 8 + b 8 + c's lendable 4 = 20; a may hold at most 8 + 8.
        pytest.param({}, "a", 16, id="idle cohort: borrowing limit caps a"),
        pytest.param({"b": 8}, "a", 12, id="b's usage leaves 12 of the shared 20"),
        pytest.param({"c": 4}, "a", 16, id="c's use of its guaranteed 4 costs nobody"),
        pytest.param({"a": 16}, "a", 0, id="a's borrowing limit of 8 caps it at 16"),
        pytest.param({"b": 20}, "c", 4, id="c keeps its guaranteed 4 whatever b borrows"),
    ],
)
def test_available(usage: dict[str, int], member: str, available: int) -> None:
    quotas = tree(
        Member("a", "root", {"p": Quota(8, borrowing_limit=8)}),
        Member("b", "root", {"p": Quota(8)}),
        Member("c", "root", {"p": Quota(8, lending_limit=4)}),
    )
    for who, gpus in usage.items():
        quotas.add_usage(who, "p", gpus)
    assert quotas.available(member, "p") == available


def test_sub_cohort_lending_limit_protects_its_members() -> None:
    quotas = tree(
        Member("u1", "unis", {"p": Quota(8)}),
        Member("u2", "unis", {"p": Quota(8)}),
        Member("t", "root", {"p": Quota(0)}),
        cohorts=(Cohort("root"), Cohort("unis", "root", {"p": Quota(0, lending_limit=4)})),
    )
    assert quotas.available("t", "p") == 4  # the universities lend at most 4 of their 16
    assert quotas.available("u1", "p") == 16
    quotas.add_usage("t", "p", 4)
    assert quotas.available("u2", "p") == 12
    quotas.add_usage("t", "p", -4)
    assert quotas.available("t", "p") == 4


def test_decay_usage_halves_every_half_life_and_integrates_use() -> None:
    assert decay_usage(100.0, 3600.0, 0, 3600.0) == pytest.approx(50.0)
    steady = 8 * 3600.0 / math.log(2)  # the fixed point of 8 GPUs forever
    assert decay_usage(0.0, 1e9, 8, 3600.0) == pytest.approx(steady)
    split = decay_usage(decay_usage(0.0, 1800.0, 4, 3600.0), 1800.0, 4, 3600.0)
    assert split == pytest.approx(decay_usage(0.0, 3600.0, 4, 3600.0))


def test_entitlement_weights_and_scores() -> None:
    members = [
        Member("big", "root", {"p": Quota(30)}),
        Member("small", "root", {"p": Quota(10)}),
        Member("explicit", "root", {"p": Quota(0)}, weight=0.5),
    ]
    weights = entitlement_weights(members)
    assert weights == pytest.approx({"big": 0.75, "small": 0.25, "explicit": 0.5})
    share = FairShare(members, {"p": 40}, history_weight=0.0, half_life=3600.0)
    share.add("big", "p", 30)
    share.add("small", "p", 10)
    assert share.score("big") == pytest.approx(share.score("small"))  # both at entitlement


def test_budget_headroom_and_forecast() -> None:
    budget = Budget(0.0, 100 * 3600.0, limit_gpu_hours=100.0, used_gpu_hours=40.0)
    running = [RunningWorkload("r", "m", "p", "t", (("n", 4),), started_at=0.0, max_runtime=7200.0)]
    assert headroom_gpu_hours(budget, running, now=3600.0) == pytest.approx(56.0)
    assert job_cost_gpu_hours(8, 1800.0) == 4.0
    # Only what falls inside the period is charged to it (usage is recorded per period).
    assert job_cost_gpu_hours(8, 7200.0, window=1800.0) == 4.0
    late = [RunningWorkload("r", "m", "p", "t", (("n", 4),), started_at=0.0, max_runtime=1e9)]
    assert headroom_gpu_hours(budget, late, now=99 * 3600.0) == pytest.approx(56.0)
    seen = forecast(budget, gpus_in_use=6, now=10 * 3600.0)
    assert seen.remaining_gpu_hours == 60.0
    assert seen.average_burn_gpu_hours_per_hour == pytest.approx(4.0)
    assert seen.exhausted_at == pytest.approx(20 * 3600.0)
    assert not seen.lasts_the_period
    assert forecast(budget, 0, 10 * 3600.0).lasts_the_period


@given(
    start=st.floats(0, 1e6),
    length=st.floats(1, 1e7),
    limit=st.floats(0, 1e6),
    used=st.floats(0, 2e6),
    gpus=st.integers(0, 10_000),
    into=st.floats(0, 1),
)
def test_forecast_invariants(
    start: float, length: float, limit: float, used: float, gpus: int, into: float
) -> None:
    """What the budget forecast promises an admin, for any budget and burn: the remaining
    hours are exact; an exhaustion time is never in the past and is exactly when the
    current burn uses up what is left; "lasts the period" means it comes after the end."""
    budget = Budget(start, start + length, limit, used)
    now = start + into * length
    seen = forecast(budget, gpus, now)
    assert seen.remaining_gpu_hours == limit - used
    assert seen.current_burn_gpu_hours_per_hour == gpus
    assert seen.average_burn_gpu_hours_per_hour >= 0
    if seen.exhausted_at is None:
        assert gpus == 0 and limit > used and seen.lasts_the_period
    else:
        assert seen.exhausted_at >= now
        if limit > used:
            burnt = gpus * (seen.exhausted_at - now) / 3600.0
            assert math.isclose(burnt, limit - used, rel_tol=1e-9, abs_tol=1e-6)
        else:
            assert seen.exhausted_at == now  # already exhausted
        assert seen.lasts_the_period == (seen.exhausted_at >= budget.period_end)
