"""The scheduler's snapshot reads only the usage records a cycle needs, and gets the same
budget usage and fair-share history as if it had read them all (to 2^-20)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

import quotas
from controlplane.db.models import UsageRecord
from controlplane.scheduler.snapshot import HISTORY_HALF_LIVES, build
from tests.conftest import World

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


@pytest.mark.parametrize("half_lives", [HISTORY_HALF_LIVES - 1, HISTORY_HALF_LIVES + 1])
def test_history_window_and_budget_usage(engine: Engine, world: World, half_lives: int) -> None:
    config = quotas.EngineConfig()
    half_life = config.fair_share_half_life
    member, job, pool = world.a.member["id"], world.a.job["id"], world.pool["id"]

    def record(attempt: int, start: datetime, end: datetime | None, seconds: float) -> None:
        session.add(
            UsageRecord(
                member_id=member,
                pool_id=pool,
                job_id=job,
                attempt=attempt,
                period=start.strftime("%Y-%m"),
                started_at=start,
                ended_at=end,
                gpus=8,
                gpu_seconds=seconds,
            )
        )

    old_end = NOW - timedelta(seconds=half_life * half_lives)
    with Session(engine) as session:
        record(1, NOW - timedelta(hours=1), None, 0.0)  # open: 8 GPUs x 1 h so far
        record(2, NOW - timedelta(days=2, hours=1), NOW - timedelta(days=2), 3600.0)
        record(3, old_end - timedelta(hours=1), old_end, 1e12)  # long before the budget
        session.commit()
        snapshot = build(session, set(), NOW, config)
    a = next(m for m in snapshot.members if m.name == member)
    recent = 8 * 3600.0 + 3600.0 * 0.5 ** (2 * 86400 / half_life)
    old = 1e12 * 0.5**half_lives
    if half_lives < HISTORY_HALF_LIVES:
        assert a.decayed_usage_gpu_seconds == pytest.approx(recent + old, rel=1e-9)
    else:  # not read: it would weigh less than 2^-20 of its GPU-seconds
        assert a.decayed_usage_gpu_seconds == pytest.approx(recent, rel=1e-9)
        assert old < 1e12 * 2.0**-HISTORY_HALF_LIVES
    assert a.budget is not None
    assert a.budget.used_gpu_hours == pytest.approx(9.0)  # this quarter's two records
