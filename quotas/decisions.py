"""The engine's output: what to admit, whom to preempt, and why the rest waits.

The control plane applies :class:`Admit` and :class:`Preempt` with optimistic guards (the job
must still be QUEUED / RUNNING) and shows :class:`Pending` to users. Reason codes are stable
strings (listed in :data:`REASON_RANK`, most fundamental first); messages are for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Reason codes, ranked: a pending job's reasons are sorted by this order so the first reason
# is the one that must be resolved first (no point saying "fragmented" when the quota is full).
INVALID_REQUEST = "invalid_request"
NO_ALLOWED_POOL = "no_allowed_pool"
SHAPE_UNSATISFIABLE = "shape_unsatisfiable"
PLACEMENT_PAUSED = "placement_paused"  # the cluster cannot take work now (its Ray head is down)
BUDGET_EXHAUSTED = "budget_exhausted"
NON_PREEMPTIBLE_OVER_NOMINAL = "non_preemptible_over_nominal"
QUOTA_EXCEEDED = "quota_exceeded"
COHORT_EXHAUSTED = "cohort_exhausted"
INSUFFICIENT_CAPACITY = "insufficient_capacity"
FRAGMENTED = "fragmented"
WAITING_FOR_PREEMPTION = "waiting_for_preemption"
RESERVED_FOR_HEAD = "reserved_for_head"
BLOCKED_BY_HEAD = "blocked_by_head"
QUEUE_POSITION = "queue_position"

REASON_RANK: dict[str, int] = {
    code: rank
    for rank, code in enumerate(
        (
            INVALID_REQUEST,
            NO_ALLOWED_POOL,
            SHAPE_UNSATISFIABLE,
            PLACEMENT_PAUSED,  # nothing starts anywhere until the cluster is back
            WAITING_FOR_PREEMPTION,  # the job already has its room coming; say so first
            BUDGET_EXHAUSTED,
            NON_PREEMPTIBLE_OVER_NOMINAL,
            QUOTA_EXCEEDED,
            COHORT_EXHAUSTED,
            INSUFFICIENT_CAPACITY,
            FRAGMENTED,
            RESERVED_FOR_HEAD,
            BLOCKED_BY_HEAD,
            QUEUE_POSITION,
        )
    )
}

# Preemption reasons.
RECLAIM = "reclaim"
PRIORITY = "priority"


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason a job waits: a stable ``code`` and a human ``message``."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Admit:
    """Start ``job_id`` in ``pool`` on ((node, GPUs), ...). ``borrowing``: above nominal.
    ``backfilled``: admitted while the pool held a reservation for its blocked head job."""

    job_id: str
    pool: str
    assignments: tuple[tuple[str, int], ...]
    borrowing: bool = False
    backfilled: bool = False


@dataclass(frozen=True, slots=True)
class Preempt:
    """Tell ``victims`` to checkpoint and stop by ``grace_deadline`` to make room for ``for_job``.

    ``reason`` is ``reclaim`` (the victims' members borrow capacity the preemptor is
    guaranteed) or ``priority`` (the victims have lower priority).
    """

    for_job: str
    victims: tuple[str, ...]
    reason: str
    message: str
    grace_deadline: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """Capacity held for a blocked head job so backfilled jobs cannot delay it."""

    job_id: str
    pool: str
    start: float
    assignments: tuple[tuple[str, int], ...]


class Pending(NamedTuple):
    """A job that stays queued: ranked ``reasons``, 1-based ``position`` in this cycle's order,
    and ``eta`` (epoch seconds) estimated from running jobs' max runtimes and the queue ahead,
    ``None`` when no estimate exists (budget exhausted, shape never fits ...).

    A named tuple, not a frozen dataclass: a cycle builds one per waiting job (tens of
    thousands), and a tuple is built several times faster.
    """

    job_id: str
    reasons: tuple[Reason, ...]
    position: int
    eta: float | None


@dataclass(frozen=True, slots=True)
class Decisions:
    """Everything one cycle decided."""

    admitted: tuple[Admit, ...] = ()
    preempted: tuple[Preempt, ...] = ()
    pending: tuple[Pending, ...] = ()
    reservations: tuple[Reservation, ...] = ()

    def pending_by_id(self) -> dict[str, Pending]:
        """Pending decisions keyed by job id."""
        return {p.job_id: p for p in self.pending}
