"""GPU-hour budgets per member and period.

Admission charges a job its worst case, ``GPUs x max_runtime``, against the member's
*headroom*: the period's limit minus what was used so far minus the worst-case remainder of
everything still running. A job that does not fit the headroom waits with
``budget_exhausted``; running jobs are never stopped for budget (nothing here can preempt).
So the sum of admissions can never overrun the budget, whatever the jobs then do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from quotas.snapshot import Budget, RunningWorkload


def committed_gpu_hours(running: Iterable[RunningWorkload], now: float) -> float:
    """Worst-case GPU-hours still to be burnt by running jobs (up to their max runtime)."""
    total = 0.0
    for job in running:
        remaining = job.started_at + job.max_runtime - now
        if remaining > 0:
            total += job.gpus * remaining / 3600.0
    return total


def headroom_gpu_hours(budget: Budget, running: Iterable[RunningWorkload], now: float) -> float:
    """GPU-hours a member may still commit to new jobs in the current period."""
    return budget.limit_gpu_hours - budget.used_gpu_hours - committed_gpu_hours(running, now)


def job_cost_gpu_hours(gpus: int, max_runtime: float) -> float:
    """Worst-case GPU-hours of a job."""
    return gpus * max_runtime / 3600.0


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
