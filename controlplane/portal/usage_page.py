"""What the portal's usage page and job page say about GPUs in use and budget left.

Two promises, each with one source:

* every GPU a member holds shows, in its pool, whether or not the member has a quota row
  there (a row without one says what the pool lets members without a quota do);
* "left this period" is :func:`controlplane.scheduler.snapshot.budgets_left`, the numbers the
  admission engine refuses a job on (used so far, and reserved by running jobs up to their
  max runtime), worded by :meth:`quotas.budgets.BudgetLeft.describe` on both pages.

Everything read is scoped like the REST API: a member sees its own rows, an admin or
auditor every member's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from controlplane.auth import Principal
from controlplane.db.models import Job, Pool
from controlplane.scheduler.snapshot import HOLDING, budgets_left
from controlplane.services import inventory
from quotas.budgets import BudgetLeft


@dataclass(frozen=True, slots=True)
class QuotaLine:
    """A member's GPUs in a pool, against its quota there (``has_quota`` False: none, and
    ``default_limit`` is what the pool lets such members borrow: ``None`` without a limit)."""

    member_id: str
    pool: str
    in_use: int
    has_quota: bool
    nominal_gpus: int = 0
    borrowing_limit: int | None = None
    lending_limit: int | None = None
    default_limit: int | None = None


def quota_lines(session: Session, caller: Principal) -> list[QuotaLine]:
    """Every quota row the caller may see with the GPUs in use under it, and a line for each
    pool where a member holds GPUs without a quota row (sorted by member, then pool)."""
    quotas, _ = inventory.list_quotas(session, caller, 1000, None, None, None)
    pools = {p.id: p for p in session.exec(select(Pool)).all()}
    by_name = {p.name: p for p in pools.values()}
    held = (
        select(Job.member_id, Job.pool, func.sum(Job.gpus))
        .where(col(Job.status).in_(HOLDING), col(Job.pool).is_not(None))
        .group_by(col(Job.member_id), col(Job.pool))
    )
    if not caller.reads_all_members:
        held = held.where(Job.member_id == (caller.member_id or ""))
    in_use: dict[tuple[str, str], int] = {}
    for member_id, pool_name, gpus in session.exec(held).all():
        in_use[(member_id, str(pool_name))] = int(gpus or 0)
    lines: list[QuotaLine] = []
    for q in quotas:
        row = pools.get(q.pool_id)
        name = row.name if row is not None else q.pool_id
        lines.append(
            QuotaLine(
                q.member_id,
                name,
                in_use.pop((q.member_id, name), 0),
                True,
                q.nominal_gpus,
                q.borrowing_limit,
                q.lending_limit,
            )
        )
    for (member_id, name), gpus in in_use.items():
        if gpus <= 0:
            continue
        found = by_name.get(name)
        limit = found.default_borrowing_limit if found is not None else None
        lines.append(QuotaLine(member_id, name, gpus, False, default_limit=limit))
    return sorted(lines, key=lambda line: (line.member_id, line.pool))


def left_this_period(
    session: Session, caller: Principal, member_ids: set[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """What is left of each member's budget this period (:func:`budget_facts`), for the
    members the caller may see among ``member_ids`` (members without a budget under way are
    left out)."""
    if not caller.reads_all_members:
        member_ids = member_ids & {caller.member_id or ""}
    if not member_ids:
        return {}
    return {
        m: budget_facts(row.id, left)
        for m, (row, left) in budgets_left(session, member_ids, now).items()
    }


def budget_facts(budget_id: str, left: BudgetLeft) -> dict[str, Any]:
    """A "left this period" as a template shows it."""
    return {
        "budget_id": budget_id,
        "left": max(0.0, left.left_gpu_hours),
        "reserved": left.reserved_gpu_hours,
        "used": left.used_gpu_hours,
        "limit": left.limit_gpu_hours,
    }
