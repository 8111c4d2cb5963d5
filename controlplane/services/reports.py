"""Usage reports: GPU-hours per member and pool for a period, from the usage records, and
the serving gateway's tokens per member, endpoint and month beside them (``token_lines``).

Exact through preemptions and restarts (a record per job attempt, split at month ends, see
``controlplane.usage``); running attempts count up to ``now``. Scoped like every listing: a
member sees its own lines, platform admins and auditors every member's.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controlplane.auth import Principal
from controlplane.db.models import Endpoint, Member, Pool, TokenUsage, UsageRecord
from controlplane.services import lookup
from controlplane.services.inventory import period_bounds
from controlplane.serving.metering import months_between
from controlplane.usage import running_gpu_seconds

CSV_COLUMNS = ("member", "pool", "jobs", "attempts", "gpu_hours", "running_attempts")
# Appended when the period has token usage: those rows leave the GPU columns empty.
TOKEN_CSV_COLUMNS = ("endpoint", "month", "requests", "prompt_tokens", "completion_tokens")


@dataclass(frozen=True, slots=True)
class UsageLine:
    member: str
    pool: str
    jobs: int
    attempts: int
    gpu_hours: float
    running_attempts: int


@dataclass(frozen=True, slots=True)
class TokenLine:
    """Settled gateway requests of one endpoint in one month (open ones count once settled)."""

    member: str
    endpoint: str
    month: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageReport:
    period: str
    starts_at: datetime
    ends_at: datetime
    generated_at: datetime
    lines: list[UsageLine]
    token_lines: list[TokenLine] = field(default_factory=list)

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
            "total_tokens": sum(t.total_tokens for t in self.token_lines),
            "token_lines": [
                {**asdict(t), "total_tokens": t.total_tokens} for t in self.token_lines
            ],
        }

    @property
    def filename(self) -> str:
        return f"nuri-usage-{self.period}.csv"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        tokens = bool(self.token_lines)
        writer.writerow(CSV_COLUMNS + (TOKEN_CSV_COLUMNS if tokens else ()))
        for line in self.lines:
            gpu = [getattr(line, c) for c in CSV_COLUMNS]
            writer.writerow(gpu + ([""] * len(TOKEN_CSV_COLUMNS) if tokens else []))
        for t in self.token_lines:
            head = [t.member] + [""] * (len(CSV_COLUMNS) - 1)
            writer.writerow(head + [getattr(t, c) for c in TOKEN_CSV_COLUMNS])
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
    member_id = lookup.member(session, member, caller).id if member else None
    tokens = _token_lines(session, caller, member_id, months_between(start, end), members)
    return UsageReport(period, start, end, now, lines, tokens)


def _token_lines(
    session: Session,
    caller: Principal,
    member_id: str | None,
    months: tuple[str, ...],
    members: dict[str, str],
) -> list[TokenLine]:
    """Settled requests per member, endpoint and month of the period."""
    t = TokenUsage
    stmt = sa_select(
        col(t.member_id),
        col(t.endpoint_id),
        col(t.period),
        func.count(),
        func.coalesce(func.sum(t.prompt_tokens), 0),
        func.coalesce(func.sum(t.completion_tokens), 0),
    ).where(col(t.period).in_(months), col(t.settled_at).is_not(None))
    if not caller.reads_all_members:  # as lookup.scoped does for the GPU lines
        stmt = stmt.where(col(t.member_id) == (caller.member_id or ""))
    if member_id is not None:
        stmt = stmt.where(col(t.member_id) == member_id)
    stmt = stmt.group_by(col(t.member_id), col(t.endpoint_id), col(t.period))
    rows = session.execute(stmt).all()
    names = dict(
        session.exec(
            select(Endpoint.id, Endpoint.name).where(col(Endpoint.id).in_({r[1] for r in rows}))
        ).all()
    )
    lines = [
        TokenLine(members.get(m, m), names.get(e, e), month, int(n), int(prompt), int(completion))
        for m, e, month, n, prompt, completion in rows
    ]
    return sorted(lines, key=lambda x: (x.member, x.endpoint, x.month))
