"""GPU-hour budgets per member and period.

Admission charges a job its worst case in the period, ``GPUs x max_runtime`` cut at the end
of the period (usage is recorded per period, so what runs past the end is the next period's),
against the member's *headroom*: the period's limit minus what was used so far minus the
worst-case remainder of everything still running, cut the same way. A job that does not fit
the headroom waits with ``budget_exhausted``; running jobs are never stopped for budget
(nothing here can preempt). So the sum of admissions can never overrun the budget, whatever
the jobs then do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quotas.snapshot import Budget, RunningWorkload


def committed_gpu_hours(
    running: Iterable[RunningWorkload], now: float, until: float = float("inf")
) -> float:
    """Worst-case GPU-hours running jobs may still burn before ``until`` (the period's end),
    each up to its max runtime."""
    total = 0.0
    for job in running:
        remaining = min(job.started_at + job.max_runtime, until) - now
        if remaining > 0:
            total += job.gpus * remaining / 3600.0
    return total


def headroom_gpu_hours(budget: Budget, running: Iterable[RunningWorkload], now: float) -> float:
    """GPU-hours a member may still commit to new jobs in the current period."""
    return budget_left(budget, running, now).left_gpu_hours


@dataclass(frozen=True, slots=True)
class BudgetLeft:
    """What is left of a budget this period, and why: ``left = limit - used - reserved``.

    ``reserved_gpu_hours`` is what the member's running jobs may still burn before the
    period ends (each up to its max runtime): admission counts it as spent, so the job page's
    wait reason and the usage page say the same number. ``left`` may be negative when
    running jobs could overrun the budget (they are never stopped for it).
    """

    limit_gpu_hours: float
    used_gpu_hours: float
    reserved_gpu_hours: float
    left_gpu_hours: float

    def describe(self) -> str:
        """``12.0 of 100.0 GPU-h left this period (80.0 used, 8.0 reserved by running
        jobs)``: the one wording of the portal's pages and the engine's reasons."""
        return (
            f"{max(0.0, self.left_gpu_hours):.1f} of {self.limit_gpu_hours:.1f} GPU-h left this "
            f"period ({self.used_gpu_hours:.1f} used, {self.reserved_gpu_hours:.1f} reserved "
            "by running jobs)"
        )


def budget_left(budget: Budget, running: Iterable[RunningWorkload], now: float) -> BudgetLeft:
    """The budget's headroom at ``now`` with its parts (see :class:`BudgetLeft`);
    ``running`` are the member's running workloads."""
    reserved = committed_gpu_hours(running, now, budget.period_end)
    left = budget.limit_gpu_hours - budget.used_gpu_hours - reserved
    return BudgetLeft(budget.limit_gpu_hours, budget.used_gpu_hours, reserved, left)


def job_cost_gpu_hours(gpus: int, max_runtime: float, window: float = float("inf")) -> float:
    """Worst-case GPU-hours of a job within a period that has ``window`` seconds left."""
    return gpus * min(max_runtime, max(0.0, window)) / 3600.0


@dataclass(frozen=True, slots=True)
class BudgetForecast:
    """What an admin sees: remaining GPU-hours, burn rates and when the budget runs out."""

    remaining_gpu_hours: float
    average_burn_gpu_hours_per_hour: float
    current_burn_gpu_hours_per_hour: float
    exhausted_at: float | None
    lasts_the_period: bool


def forecast(budget: Budget, gpus_in_use: int, now: float) -> BudgetForecast:
    """Forecast budget exhaustion from the current burn rate (GPUs in use right now).

    The average burn since the period started is reported alongside for context.
    """
    remaining = budget.limit_gpu_hours - budget.used_gpu_hours
    elapsed_h = max(0.0, now - budget.period_start) / 3600.0
    average = budget.used_gpu_hours / elapsed_h if elapsed_h > 0 else 0.0
    current = float(gpus_in_use)
    if remaining <= 0:
        exhausted: float | None = now
    elif current > 0:
        exhausted = now + remaining / current * 3600.0
    else:
        exhausted = None
    lasts = exhausted is None or exhausted >= budget.period_end
    return BudgetForecast(remaining, average, current, exhausted, lasts)
