"""The job state machine: the only module that writes ``job.status``.

States and allowed transitions (ARCHITECTURE §3)::

    QUEUED     -> ADMITTED (engine admits) | REJECTED (policy/validation) | CANCELLED
    ADMITTED   -> RUNNING (workers started) | CANCELLED
                | QUEUED  (placement rolled back, or infrastructure failure with retries left)
                | FAILED  (infrastructure failure, no retries left)
    RUNNING    -> SUCCEEDED | FAILED | CANCELLED
                | PREEMPTING (preemption notice, grace period running)
                | QUEUED  (infrastructure failure with retries left; attempt + 1)
    PREEMPTING -> QUEUED (checkpoint kept, attempt + 1) | CANCELLED | FAILED | SUCCEEDED
    SUCCEEDED, FAILED, CANCELLED, REJECTED: terminal and absorbing.

The design's ``FAILED -> QUEUED`` retry edge is realised as a direct requeue from ADMITTED or
RUNNING, so that FAILED stays absorbing: a job is FAILED only once no retries remain.

Every write is ``UPDATE job SET status = :to ... WHERE id = :id AND status = :expected``;
zero rows updated means somebody else moved the job first and the caller's view is stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from controlplane.db.models import Job, JobEvent
from controlplane.errors import InvalidTransition, NotFound


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    ADMITTED = "ADMITTED"
    RUNNING = "RUNNING"
    PREEMPTING = "PREEMPTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


S = JobStatus
TERMINAL: frozenset[JobStatus] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.REJECTED})
# ``session.info[FINISHED_KEY]``: (kind, status) of each job this transaction made terminal,
# for whoever counts outcomes once it commits (``controlplane.observability.metrics``).
FINISHED_KEY = "nuri.finished_jobs"

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.ADMITTED, S.REJECTED, S.CANCELLED}),
    S.ADMITTED: frozenset({S.RUNNING, S.CANCELLED, S.QUEUED, S.FAILED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PREEMPTING, S.QUEUED}),
    S.PREEMPTING: frozenset({S.QUEUED, S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
}

# Timestamp column stamped on entering a state.
_STAMP: dict[JobStatus, str] = {
    S.ADMITTED: "admitted_at",
    S.RUNNING: "started_at",
    S.SUCCEEDED: "finished_at",
    S.FAILED: "finished_at",
    S.CANCELLED: "finished_at",
    S.REJECTED: "finished_at",
}

# Fields a transition may set alongside the status; anything else is a programming error.
_SETTABLE = frozenset(
    {
        "pool",
        "reasons",
        "checkpoint_uri",
        "attempt",
        "assignment",
        "last_checkpoint_at",
        "times_preempted",
        "preempt_deadline",
        "observed_events",
        "free_requeues",
        "ray_session",
        "heartbeat_at",
        "queue_position",
        "eta",
    }
)


def allowed(src: JobStatus, dst: JobStatus) -> bool:
    return dst in TRANSITIONS[src]


@dataclass(frozen=True, slots=True)
class Transition:
    job_id: str
    src: JobStatus
    dst: JobStatus
    attempt: int


def transition(
    session: Session,
    job_id: str,
    *,
    expected: JobStatus,
    to: JobStatus,
    now: datetime,
    actor: str | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    **fields: Any,
) -> Transition:
    """Move a job from ``expected`` to ``to`` with a guarded write and a JobEvent.

    Raises ``InvalidTransition`` when the edge is not in the table or when the job is no
    longer in ``expected`` (a concurrent writer won). The caller owns the transaction.
    """
    if not allowed(expected, to):
        raise InvalidTransition(
            f"a job cannot go from {expected.value} to {to.value}",
            details={"job_id": job_id, "from": expected.value, "to": to.value},
        )
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise ValueError(f"transition cannot set {sorted(unknown)}")
    values: dict[str, Any] = {"status": to.value, "updated_at": now, **fields}
    requeue = to is S.QUEUED and expected in (S.ADMITTED, S.RUNNING, S.PREEMPTING)
    if requeue and "attempt" not in fields:
        values["attempt"] = Job.attempt + 1
    if to in _STAMP:
        values[_STAMP[to]] = now
    stmt = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == expected.value)
        .values(**values)
        .returning(col(Job.attempt), col(Job.kind))
    )
    row = session.execute(stmt).one_or_none()
    if row is None:
        current = session.exec(select(Job.status).where(Job.id == job_id)).first()
        if current is None:
            raise NotFound("job", job_id)
        raise InvalidTransition(
            f"job is {current}, not {expected.value}; it cannot go to {to.value}",
            details={
                "job_id": job_id,
                "status": current,
                "expected": expected.value,
                "to": to.value,
            },
        )
    attempt, kind = row
    if to.terminal:
        session.info.setdefault(FINISHED_KEY, []).append((kind, to.value))
    session.add(
        JobEvent(
            job_id=job_id,
            at=now,
            type="status",
            from_status=expected.value,
            to_status=to.value,
            attempt=int(attempt),
            actor=actor,
            message=message,
            details=details or {},
        )
    )
    return Transition(job_id=job_id, src=expected, dst=to, attempt=int(attempt))
