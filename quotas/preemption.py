"""Victim selection: the fewest, cheapest running jobs whose removal lets a job start.

Who may be a victim of job J (member M, priority P) in pool p:

* a job already in its grace period (its GPUs are leaving anyway; costs nothing), else
* a preemptible job that ran at least ``min_runtime`` and was preempted fewer than
  ``max_preemptions`` times (no thrash), and
  - of another member that currently *borrows* in p, when J fits in M's nominal quota
    (reclaim: idle guaranteed capacity was lent, now its owner needs it), or when it has a
    lower priority than P; or
  - of M itself with a lower priority than P.

Candidates are tried in order: already leaving, other members' borrowed work, lowest
priority, least work lost since the last checkpoint (GPUs x seconds), most recently started.
A reclaim never takes a member below its nominal quota. After the first set that makes J fit
(quota and placement both), victims that turn out unnecessary are given back (Kueue's
"fill back"), so the final set is minimal in that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from quotas.cycle import CycleState, RunningRecord
from quotas.placement import Placement, Shape
from quotas.snapshot import PendingWorkload


@dataclass(frozen=True, slots=True)
class PreemptionPlan:
    """Victims that make room for a job, and where the job will then run."""

    victims: tuple[RunningRecord, ...]
    placement: Placement
    freed: dict[int, int]  # node -> GPUs the victims release
    reclaim: bool


def lost_work(record: RunningRecord, now: float) -> float:
    """GPU-seconds of progress since the victim's last checkpoint (lost if it stops now)."""
    job = record.job
    since = job.last_checkpoint_at if job.last_checkpoint_at is not None else job.started_at
    return record.gpus * max(0.0, now - since)


def eligible_victims(state: CycleState, pool: str) -> list[RunningRecord]:
    """Running jobs of ``pool`` that may ever be victims this cycle, cheapest first.

    Computed once per pool and cycle: already leaving, or preemptible, past the minimum
    runtime and not yet protected by too many preemptions; sorted by priority, work lost
    since the last checkpoint, most recent start, id.
    """
    found = state.victims.get(pool)
    if found is not None:
        return found
    cfg, now = state.config, state.now
    keyed = []
    for record in state.running(pool):
        victim = record.job
        leaving = victim.preempting_until is not None
        if not leaving and (
            not record.preemptible
            or victim.times_preempted >= cfg.max_preemptions
            or now - victim.started_at < cfg.min_runtime
        ):
            continue
        key = (record.priority, lost_work(record, now), -victim.started_at, victim.job_id)
        keyed.append((key, record))
    keyed.sort(key=lambda item: item[0])
    found = state.victims[pool] = [record for _, record in keyed]
    return found


@dataclass(slots=True)
class VictimFloor:
    """Cheap bounds on a pool's victims, from the snapshot rows: any already leaving, the
    lowest priority, and GPUs still unclaimed this cycle -- of the jobs already leaving and,
    per member, of the other jobs that may be victims. :func:`claim` lowers the GPU counts,
    so they stay upper bounds of what a search can find."""

    leaving: bool
    priority: int
    leaving_gpus: int = 0
    member_gpus: dict[str, int] = field(default_factory=dict)
    # Sum of ``member_gpus`` over the members that borrow in the pool, as of quota tree
    # version ``borrowers_at`` (-1: stale).
    borrowers_gpus: int = 0
    borrowers_at: int = -1


def victim_floor(state: CycleState, pool: str) -> VictimFloor:
    """Bounds computed once per pool and cycle (claims only shrink the set: conservative)."""
    found = state.victim_floors.get(pool)
    if found is None:
        # Straight from the snapshot rows: cheaper than building the records it guards.
        cfg, now = state.config, state.now
        rank = {c.name: (c.value, c.preemptible) for c in state.classes.values()}
        leaving, lowest, leaving_gpus = False, 1 << 62, 0
        member_gpus: dict[str, int] = {}
        for job in state.running_jobs:
            if job.pool != pool:
                continue
            value, preemptible = rank.get(job.priority_class, (0, True))
            if job.preempting_until is not None:
                leaving = True
                leaving_gpus += job.gpus
            elif (
                not preemptible
                or job.times_preempted >= cfg.max_preemptions
                or now - job.started_at < cfg.min_runtime
            ):
                continue
            else:
                member_gpus[job.member] = member_gpus.get(job.member, 0) + job.gpus
            lowest = min(lowest, value)
        found = state.victim_floors[pool] = VictimFloor(leaving, lowest, leaving_gpus, member_gpus)
    return found


def claim(state: CycleState, pool: str, victims: Iterable[RunningRecord]) -> None:
    """Mark victims as promised to a preemptor this cycle (nobody else may count on them)."""
    floor = victim_floor(state, pool)
    for record in victims:
        record.claimed = True
        if record.job.preempting_until is not None:
            floor.leaving_gpus -= record.gpus
        else:
            member = record.job.member
            floor.member_gpus[member] = floor.member_gpus.get(member, 0) - record.gpus
    floor.borrowers_at = -1


def cannot_preempt(
    state: CycleState, member: str, pool: str, gpus: int, priority: int, in_nominal: bool
) -> bool:
    """True when no victim set can make room for ``gpus`` more GPUs of ``member``.

    A necessary condition of :func:`plan_preemption` (so it never rejects a plan the search
    would find), in O(1) while usage does not change: even every unclaimed victim the
    search could pick -- leaving jobs; other members' work while they borrow, when the job
    reclaims or outranks it; the member's own lower-priority work -- frees too few GPUs, or
    too little quota (each GPU a victim gives back raises the member's availability by at
    most one).
    """
    floor = victim_floor(state, pool)
    tree = state.tree
    bound = floor.leaving_gpus
    outranks = priority > floor.priority
    if in_nominal or outranks:
        if floor.borrowers_at != tree.version:  # recomputed only after usage changed
            floor.borrowers_gpus = sum(
                held
                for other, held in floor.member_gpus.items()
                if held > 0 and tree.borrowed(other, pool) > 0
            )
            floor.borrowers_at = tree.version
        own = floor.member_gpus.get(member, 0)
        bound += floor.borrowers_gpus
        if own > 0 and tree.borrowed(member, pool) > 0:
            bound -= own  # the member's own work is no reclaim victim ...
        if outranks:
            bound += own  # ... only its lower-priority work is
    need = gpus - bound
    return state.index[pool].free_total < need or tree.available(member, pool) < need


def plan_preemption(
    state: CycleState,
    job: PendingWorkload,
    pool: str,
    shape: Shape,
    priority: int,
    preemptible: bool,
    bound: bool = True,
) -> PreemptionPlan | None:
    """Find victims in ``pool`` so that ``job`` fits; None when no eligible set exists.

    Leaves the cycle state exactly as it found it. ``bound=False`` skips the
    :func:`cannot_preempt` shortcut (tests check that it never changes the answer).
    """
    tree = state.tree
    member = job.member
    in_nominal = tree.unused_nominal(member, pool) >= shape.gpus
    floor = victim_floor(state, pool)
    if not in_nominal and not floor.leaving and priority <= floor.priority:
        return None  # a borrower may only take leaving or lower-priority work: none exists
    if bound and cannot_preempt(state, member, pool, shape.gpus, priority, in_nominal):
        return None  # even every possible victim together is not enough
    # Stable partition of the pool's pre-sorted candidates: leaving, other members', own.
    leaving: list[RunningRecord] = []
    others: list[RunningRecord] = []
    own: list[RunningRecord] = []
    borrowing: dict[str, bool] = {}
    for record in eligible_victims(state, pool):
        if record.claimed:
            continue
        victim = record.job
        if victim.preempting_until is not None:
            leaving.append(record)
        elif victim.member != member:
            lends = borrowing.get(victim.member)
            if lends is None:
                lends = borrowing[victim.member] = tree.borrowed(victim.member, pool) > 0
            if lends and (in_nominal or record.priority < priority):
                others.append(record)
        elif record.priority < priority:
            own.append(record)
    candidates = leaving + others + own
    index = state.index[pool]
    # Cheap bound first: even every candidate together may not free enough GPUs.
    if index.free_total + sum(r.gpus for r in candidates) < shape.gpus:
        return None
    removed: list[RunningRecord] = []
    freed: dict[int, int] = {}

    def remove(record: RunningRecord) -> None:
        tree.add_usage(record.job.member, pool, -record.gpus)
        for i, g in record.placement:
            freed[i] = freed.get(i, 0) + g

    def restore(record: RunningRecord) -> None:
        tree.add_usage(record.job.member, pool, record.gpus)
        for i, g in record.placement:
            freed[i] -= g
            if freed[i] == 0:
                del freed[i]

    def fits() -> Placement | None:
        if tree.available(member, pool) < shape.gpus:
            return None
        if not preemptible and tree.usage(member, pool) + shape.gpus > tree.nominal(member, pool):
            return None
        return index.place_with_extra(shape, freed)

    placement: Placement | None = None
    for record in candidates:
        victim = record.job
        reclaim_only = (
            victim.preempting_until is None
            and victim.member != member
            and record.priority >= priority
        )
        # A reclaim stops at the victim member's nominal: below it the work is guaranteed.
        if reclaim_only and tree.borrowed(victim.member, pool) <= 0:
            continue
        remove(record)
        removed.append(record)
        placement = fits()
        if placement is not None:
            break
    if placement is None:
        for record in reversed(removed):
            restore(record)
        return None
    # Fill back: give back victims (newest choice first, the last one is needed) that the job
    # can do without.
    for record in reversed(removed[:-1]):
        restore(record)
        again = fits()
        if again is not None:
            removed.remove(record)
            placement = again
        else:
            remove(record)
    plan_freed = dict(freed)
    for record in removed:
        restore(record)
    reclaim = in_nominal and any(r.job.member != member for r in removed)
    return PreemptionPlan(tuple(removed), placement, plan_freed, reclaim)
