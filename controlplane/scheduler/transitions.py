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
from pathlib import Path
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
from workers import checkpoint_layout

if TYPE_CHECKING:
    from controlplane.scheduler.service import CycleReport, SchedulerConfig

S = JobStatus


def _checkpoint_on_disk(job: Job) -> checkpoint_layout.Found | None:
    """The newest complete checkpoint in the job's checkpoint directory (this attempt's
    plan names it), when this machine sees the jobs area."""
    root = ((job.execution_plan or {}).get("dirs") or {}).get("checkpoints")
    return checkpoint_layout.newest(Path(root)) if root else None


def _recorded_step(s: Session, job: Job) -> int:
    """The step of the last checkpoint the database recorded for the job (-1: none)."""
    last = s.exec(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.type == "checkpoint")
        .order_by(col(JobEvent.id).desc())
        .limit(1)
    ).first()
    return int(last.details.get("step", -1)) if last is not None else -1


def retries_used(job: Job) -> int:
    """Attempts that failed for a reason of the job or its node (so far)."""
    return job.attempt - 1 - job.times_preempted - job.free_requeues


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
        ended_at: datetime | None = None,
    ) -> None:
        """End the attempt (and the job) in ``to``; its GPUs are billed to ``ended_at`` (an
        unseen death: the last heartbeat), else to now."""
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
        self._release(job, ended_at or now, report)
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

    def _infrastructure_failure(
        self, job: Job, why: str, report: CycleReport, ended_at: datetime | None = None
    ) -> None:
        """The attempt failed for a reason of the job or its node: a retry is used up
        (preemptions and attempts lost with the control plane never count)."""
        if retries_used(job) >= job.max_retries:
            self._finish(
                job,
                S.FAILED,
                f"{why}; no retries left",
                report,
                code="infrastructure_failure",
                ended_at=ended_at,
            )
            return
        self._requeue(
            job,
            f"{why}; retrying from the last checkpoint",
            "infrastructure_failure",
            report,
            preempted=False,
            ended_at=ended_at,
        )

    def _lost_with_the_control_plane(self, job: Job, why: str, report: CycleReport) -> None:
        """The attempt went away with Ray itself (a new Ray session since it was launched: a
        one-host control plane killed together with its Ray, a restarted Ray head): requeued
        for free, billed to its last heartbeat."""
        message = (
            f"{why}: Ray restarted since this attempt started (it went away with the control "
            "plane); resuming from the last checkpoint, not counted against its retries"
        )
        self._requeue(
            job,
            message,
            "control_plane_restart",
            report,
            preempted=S(job.status) is S.PREEMPTING,
            free=S(job.status) is not S.PREEMPTING,
            ended_at=job.heartbeat_at,
        )

    def _requeue_after_preemption(
        self, job: Job, report: CycleReport, ended_at: datetime | None = None
    ) -> None:
        self._requeue(
            job,
            "preempted; will resume from its checkpoint",
            "preempted",
            report,
            preempted=True,
            ended_at=ended_at,
        )

    def _requeue(
        self,
        job: Job,
        message: str,
        code: str,
        report: CycleReport,
        preempted: bool,
        free: bool = False,
        ended_at: datetime | None = None,
    ) -> None:
        """Back to the queue for a new attempt; ``free``: not counted against the retries;
        ``ended_at``: bill the attempt to then (its last heartbeat) instead of now."""
        now = self.clock()
        self.ray.teardown(job.id, job.attempt, serve=job.kind == SERVE_KIND)
        # The checkpoint the next attempt resumes from is the one on disk: a supervisor that
        # died (or was torn down) may not have reported its last one.
        found = _checkpoint_on_disk(job)
        started = time.time_ns()
        with Session(self.db, expire_on_commit=False) as s:
            self._fence(s, now)
            gpu_seconds = close_usage(s, job.id, job.attempt, ended_at or now)
            extra: dict[str, Any] = {}
            if found is not None and found.step > _recorded_step(s, job):
                extra = {"checkpoint_uri": found.uri, "last_checkpoint_at": found.at}
                s.add(
                    JobEvent(
                        job_id=job.id,
                        at=found.at,
                        type="checkpoint",
                        attempt=job.attempt,
                        message=f"checkpoint at step {found.step} (found on disk)",
                        details={"uri": found.uri, "step": found.step},
                    )
                )
                job.checkpoint_uri = found.uri
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
                free_requeues=job.free_requeues + (1 if free else 0),
                ray_session=None,
                heartbeat_at=None,
                **extra,
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
        session = self.ray.session()  # the Ray this attempt runs in (outside the transaction)
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
                ray_session=session,
                heartbeat_at=now,
            )
            job.status = S.RUNNING.value
            job.ray_session, job.heartbeat_at = session, now
            open_usage(s, job, now)
            s.commit()
        report.launched.append(job.id)
