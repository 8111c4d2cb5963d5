"""How a job's attempt ends, as the scheduler decides it: finished, requeued, released.

A mixin of :class:`controlplane.scheduler.service.SchedulerService` (its observe and launch
phases call these): each transition is one guarded, fenced transaction with its audit event,
the Ray side is torn down outside any transaction, and the usage record is closed exactly
once when the GPUs are released.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.audit import log as audit_log
from controlplane.db.models import Job, JobEvent
from controlplane.jobstate import JobStatus, transition
from controlplane.scheduler import spans
from controlplane.scheduler.executor import RayExecutor
from controlplane.services import artifacts
from controlplane.serving.names import SERVE_KIND
from controlplane.usage import close_usage, open_usage

if TYPE_CHECKING:
    from controlplane.scheduler.service import CycleReport, SchedulerConfig

S = JobStatus


class JobTransitions:
    """The end of an attempt (see the module docstring)."""

    db: Engine
    ray: RayExecutor
    config: SchedulerConfig
    clock: Callable[[], datetime]
    _wake: threading.Event

    def _fence(self, s: Session, now: datetime) -> None:
        raise NotImplementedError  # the service's leadership fence

    def _release(self, job: Job, ended_at: datetime, report: CycleReport) -> None:
        """The Ray side is gone: close usage and clear the assignment, once."""
        started = time.time_ns()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, self.clock())
            gpu_seconds = close_usage(s, job.id, job.attempt, ended_at)
            s.execute(
                update(Job)
                .where(col(Job.id) == job.id, col(Job.attempt) == job.attempt)
                .values(assignment=[])
            )
            s.commit()
        spans.accounted(job, started, gpu_seconds, job.status)
        self._wake.set()

    def _finish(
        self,
        job: Job,
        to: JobStatus,
        message: str,
        report: CycleReport,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        now = self.clock()
        output = self._output_of(job) if to is S.SUCCEEDED else None
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            transition(
                s,
                job.id,
                expected=S(job.status),
                to=to,
                now=now,
                message=message,
                reasons=[{"code": code or to.value.lower(), "message": message}],
            )
            audit_log.record(
                s,
                None,
                f"job.{to.value.lower()}",
                "job",
                job.id,
                stream=job.member_id,
                now=now,
                outcome="success" if to is S.SUCCEEDED else "failure",
                details={"message": message, "attempt": job.attempt, **(details or {})},
            )
            if output is not None:
                # The artifact and its effective label are written with the SUCCEEDED status.
                artifacts.register_output(
                    s,
                    job,
                    now,
                    output.uri,
                    output.sha256,
                    output.size_bytes,
                    output.read,
                    output.config,
                )
            s.commit()
        self.ray.teardown(job.id, job.attempt, serve=job.kind == SERVE_KIND)
        job.status = to.value
        self._release(job, now, report)
        report.finished[job.id] = to.value

    def _output_of(self, job: Job) -> artifacts.Output | None:
        """What the job wrote, fingerprinted, and what it read (before any transaction)."""
        with Session(self.db, expire_on_commit=False) as s:
            staged = s.exec(
                select(JobEvent).where(
                    JobEvent.job_id == job.id,
                    JobEvent.attempt == job.attempt,
                    JobEvent.type == "staged",
                )
            ).all()
        read = [r for ev in staged for r in ev.details.get("records", [])]
        return artifacts.output_of(job, read)

    def _infrastructure_failure(self, job: Job, why: str, report: CycleReport) -> None:
        if job.attempt > job.max_retries:
            self._finish(
                job, S.FAILED, f"{why}; no retries left", report, code="infrastructure_failure"
            )
            return
        self._requeue(
            job,
            f"{why}; retrying from the last checkpoint",
            "infrastructure_failure",
            report,
            preempted=False,
        )

    def _requeue_after_preemption(self, job: Job, report: CycleReport) -> None:
        self._requeue(
            job, "preempted; will resume from its checkpoint", "preempted", report, preempted=True
        )

    def _requeue(
        self, job: Job, message: str, code: str, report: CycleReport, preempted: bool
    ) -> None:
        now = self.clock()
        self.ray.teardown(job.id, job.attempt, serve=job.kind == SERVE_KIND)
        started = time.time_ns()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            gpu_seconds = close_usage(s, job.id, job.attempt, now)
            transition(
                s,
                job.id,
                expected=S(job.status),
                to=S.QUEUED,
                now=now,
                message=message,
                reasons=[{"code": code, "message": message}],
                assignment=[],
                pool=None,
                observed_events=0,
                preempt_deadline=None,
                times_preempted=job.times_preempted + (1 if preempted else 0),
            )
            audit_log.record(
                s,
                None,
                "job.requeue",
                "job",
                job.id,
                stream=job.member_id,
                now=now,
                details={
                    "reason": code,
                    "message": message,
                    "attempt": job.attempt,
                    "checkpoint": job.checkpoint_uri,
                },
            )
            s.commit()
        spans.accounted(job, started, gpu_seconds, f"requeued: {code}")
        report.requeued.append(job.id)
        report.evictions.append((job.pool or "", code))
        self._wake.set()

    def _mark_running(self, job: Job, report: CycleReport) -> None:
        now = self.clock()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            transition(
                s,
                job.id,
                expected=S.ADMITTED,
                to=S.RUNNING,
                now=now,
                message=f"running on {', '.join(n for n, _ in job.assignment)}",
                reasons=[],
            )
            job.status = S.RUNNING.value
            open_usage(s, job, now)
            s.commit()
        report.launched.append(job.id)
