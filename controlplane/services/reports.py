"""Usage reports: GPU-hours per member and pool for a period, from the usage records.

Exact through preemptions and restarts (a record per job attempt, split at month ends, see
``controlplane.usage``); running attempts count up to ``now``. Scoped like every listing: a
member sees its own lines, platform admins and auditors every member's.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from controlplane.auth import Principal
from controlplane.db.models import Member, Pool, UsageRecord
from controlplane.services import lookup
from controlplane.services.inventory import period_bounds
from controlplane.usage import running_gpu_seconds

CSV_COLUMNS = ("member", "pool", "jobs", "attempts", "gpu_hours", "running_attempts")


@dataclass(frozen=True, slots=True)
class UsageLine:
    member: str
    pool: str
    jobs: int
    attempts: int
    gpu_hours: float
    running_attempts: int


@dataclass(frozen=True, slots=True)
class UsageReport:
    period: str
    starts_at: datetime
    ends_at: datetime
    generated_at: datetime
    lines: list[UsageLine]

    @property
    def total_gpu_hours(self) -> float:
        return round(sum(line.gpu_hours for line in self.lines), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "generated_at": self.generated_at,
            "total_gpu_hours": self.total_gpu_hours,
            "lines": [asdict(line) for line in self.lines],
        }

    @property
    def filename(self) -> str:
        return f"nuri-usage-{self.period}.csv"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for line in self.lines:
            writer.writerow([getattr(line, c) for c in CSV_COLUMNS])
        return out.getvalue()


def usage_report(
    session: Session, caller: Principal, period: str, now: datetime, member: str | None = None
) -> UsageReport:
    """The report for ``period`` (``2026-Q4``, ``2026-H1`` or ``2026-11``); 422 on a bad one."""
    start, end = period_bounds(period)
    stmt = lookup.scoped(select(UsageRecord), UsageRecord.member_id, caller).where(
        col(UsageRecord.started_at) >= start, col(UsageRecord.started_at) < end
    )
    if member:
        stmt = stmt.where(UsageRecord.member_id == lookup.member(session, member, caller).id)
    members = dict(session.exec(select(Member.id, Member.name)).all())
    pools = dict(session.exec(select(Pool.id, Pool.name)).all())
    seconds: dict[tuple[str, str], float] = {}
    jobs: dict[tuple[str, str], set[str]] = {}
    attempts: dict[tuple[str, str], set[tuple[str, int]]] = {}
    running: dict[tuple[str, str], int] = {}
    for rec in session.exec(stmt).all():
        key = (members.get(rec.member_id, rec.member_id), pools.get(rec.pool_id, rec.pool_id))
        seconds[key] = seconds.get(key, 0.0) + running_gpu_seconds(rec, now)
        jobs.setdefault(key, set()).add(rec.job_id)
        attempts.setdefault(key, set()).add((rec.job_id, rec.attempt))
        running[key] = running.get(key, 0) + (rec.ended_at is None)
    lines = [
        UsageLine(
            m, p, len(jobs[(m, p)]), len(attempts[(m, p)]), round(s / 3600.0, 3), running[(m, p)]
        )
        for (m, p), s in sorted(seconds.items())
    ]
    return UsageReport(period, start, end, now, lines)
