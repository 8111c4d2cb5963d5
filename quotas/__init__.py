"""quotas: the admission engine (pure).

Owns the quota tree (cohort -> member, nominal / borrowing / lending per pool), fair share,
gang and topology fit, preemption, backfill, GPU-hour budgets, pending explanations and ETAs,
and the trace simulator.

Invariants: no I/O of any kind. Nothing here imports a database, web, Ray or torch module,
reads the clock or the environment. Time always arrives as an argument
(``admit(snapshot, now)``) so every decision is reproducible from its inputs.

The one call the control plane makes per scheduling cycle::

    from quotas import Snapshot, admit
    decisions = admit(snapshot, now)  # now: float epoch seconds

Input types (all frozen dataclasses, ``str`` ids, ``float`` epoch seconds; see
:mod:`quotas.snapshot`): :class:`Pool`, :class:`Node`, :class:`Cohort`, :class:`Member`,
:class:`Quota`, :class:`Budget`, :class:`PriorityClass`, :class:`RunningWorkload`,
:class:`PendingWorkload`, :class:`EngineConfig`, :class:`Snapshot`.
Output types (see :mod:`quotas.decisions`): :class:`Decisions` holding :class:`Admit`,
:class:`Preempt`, :class:`Reservation` and :class:`Pending` (with ranked :class:`Reason`).

The simulator replays job traces through the same ``admit``: parse a trace with
:mod:`quotas.traces` (bytes or text passed in, no file access here), build the replay cluster
with :func:`quotas.replay_setup.build_cluster` and call :func:`quotas.simulator.simulate`.

Guarantees of one cycle, each checked by property tests in tests/unit/quotas:

* no node gets more GPUs than it has free; a job gets all its GPUs or none; multi-node jobs
  take whole nodes (inside one domain when asked);
* a member's usage stays within nominal + borrowing limit, lenders never lend more than
  their lending limit, a cohort never hands out more than its quota;
* a member without a quota row in a pool holds at most the pool's
  ``default_borrowing_limit`` there (0: it is never admitted there), and the reasons of
  the jobs this keeps waiting say so;
* non-preemptible work is admitted only inside nominal quota;
* a job that fits its member's unused nominal quota starts now if GPUs are free, else
  borrowers are preempted (with a grace period) to make room;
* a backfilled job never delays the reserved start of the blocked head job;
* admissions never overrun a member's GPU-hour budget; budgets never preempt;
* the same snapshot and ``now`` give the same decisions, whatever the input order;
* with placement paused (:func:`quotas.pause`), nothing is admitted or preempted and every
  waiting job's first reason says so.
"""

from quotas.decisions import Admit, Decisions, Pending, Preempt, Reason, Reservation
from quotas.engine import admit
from quotas.pause import pause
from quotas.snapshot import (
    Budget,
    Cohort,
    EngineConfig,
    Member,
    Node,
    PendingWorkload,
    Pool,
    PriorityClass,
    Quota,
    RunningWorkload,
    Snapshot,
    SnapshotError,
)

__all__ = [
    "Admit",
    "Budget",
    "Cohort",
    "Decisions",
    "EngineConfig",
    "Member",
    "Node",
    "Pending",
    "PendingWorkload",
    "Pool",
    "Preempt",
    "PriorityClass",
    "Quota",
    "Reason",
    "Reservation",
    "RunningWorkload",
    "Snapshot",
    "SnapshotError",
    "admit",
    "pause",
]
