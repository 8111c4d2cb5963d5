"""The scheduler loop (placeholder until the admission engine is connected).

Today it only observes: each tick it counts the queue so operators see that the loop runs.
Admission, placement and preemption arrive with the scheduler service (issue 4); jobs stay
QUEUED with the reason ``awaiting_scheduler`` until then.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.db.models import Job
from controlplane.jobstate import JobStatus

log = logging.getLogger("nuri.scheduler")


class SchedulerLoop:
    def __init__(self, engine: Engine, interval_s: float = 5.0) -> None:
        self._engine = engine
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_queue_depth = 0

    def tick(self) -> int:
        with Session(self._engine) as s:
            depth = s.exec(
                select(func.count(col(Job.id))).where(Job.status == JobStatus.QUEUED.value)
            ).one()
        self.last_queue_depth = int(depth)
        return self.last_queue_depth

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                depth = self.tick()
                log.debug("queue depth %d (admission engine not connected yet)", depth)
            except Exception:
                log.exception("scheduler tick failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nuri-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
