"""GPU-seconds per member, pool, job attempt and month, exact through preemption and restarts.

A record opens when an attempt starts running and closes once when it ends; the unique key
(job, attempt, period) makes a re-run of either step after a crash a no-op. An attempt that
crosses a month boundary is split so every period's total is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session, col, select

from controlplane.db.models import Job, Pool, UsageRecord


def period_of(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


def _next_month(at: datetime) -> datetime:
    return datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)


def open_usage(session: Session, job: Job, started_at: datetime) -> None:
    """Start counting the job's current attempt (idempotent)."""
    exists = session.exec(
        select(UsageRecord).where(UsageRecord.job_id == job.id, UsageRecord.attempt == job.attempt)
    ).first()
    if exists is not None:
        return
    pool = session.exec(select(Pool).where(Pool.name == job.pool)).first()
    if pool is None:
        raise ValueError(f"job {job.id} runs in unknown pool {job.pool}")
    session.add(
        UsageRecord(
            member_id=job.member_id,
            pool_id=pool.id,
            job_id=job.id,
            attempt=job.attempt,
            period=period_of(started_at),
            started_at=started_at,
            gpus=job.gpus,
        )
    )


def close_usage(session: Session, job_id: str, attempt: int, ended_at: datetime) -> float:
    """Stop counting an attempt; returns the GPU-seconds added (0 when already closed)."""
    rec = session.exec(
        select(UsageRecord).where(
            UsageRecord.job_id == job_id,
            UsageRecord.attempt == attempt,
            col(UsageRecord.ended_at).is_(None),
        )
    ).first()
    if rec is None:
        return 0.0
    added = 0.0
    start = rec.started_at
    ended_at = max(ended_at, start)
    while True:
        boundary = _next_month(start)
        end = min(ended_at, boundary)
        seconds = (end - start).total_seconds() * rec.gpus
        rec.ended_at, rec.gpu_seconds = end, seconds
        session.add(rec)
        added += seconds
        if ended_at <= boundary:
            return added
        start = boundary
        rec = UsageRecord(
            member_id=rec.member_id,
            pool_id=rec.pool_id,
            job_id=job_id,
            attempt=attempt,
            period=period_of(start),
            started_at=start,
            gpus=rec.gpus,
        )


def running_gpu_seconds(rec: UsageRecord, now: datetime) -> float:
    """What an open record has consumed so far (closed records: their total)."""
    if rec.ended_at is not None:
        return rec.gpu_seconds
    return max(0.0, (now - rec.started_at).total_seconds()) * rec.gpus
