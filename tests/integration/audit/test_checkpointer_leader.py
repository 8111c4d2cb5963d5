"""Audit checkpoints are signed by the scheduler leader in every deployment, by no one else."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.audit import log
from controlplane.audit.checkpointer import AuditCheckpointer
from controlplane.db.engine import migrate
from controlplane.db.models import AuditCheckpoint
from controlplane.db.types import utcnow
from tests.integration.audit.test_export_any_text import KEY

WAIT_S = 120.0


def wait_for(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def checkpoints(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.exec(select(func.count()).select_from(AuditCheckpoint)).one())


def test_only_the_leader_signs(engine: Engine) -> None:
    migrate(engine)
    with Session(engine) as s:
        log.record(s, None, "member.create", "member", "mem_1", stream="platform", now=utcnow())
        s.commit()
    leading = [False]
    standby = AuditCheckpointer(engine, KEY, 0.05, leading=lambda: leading[0])
    standby.start()
    try:
        wait_for(lambda: standby.rounds >= 3)
        assert checkpoints(engine) == 0, "a scheduler that does not lead signs nothing"
        leading[0] = True  # it takes the lease
        wait_for(lambda: checkpoints(engine) > 0)
    finally:
        standby.stop()
