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

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class VictimFloor:
    """Cheap bounds on a pool's victims: any already leaving, and the lowest priority."""

    leaving: bool
    priority: int


def victim_floor(state: CycleState, pool: str) -> VictimFloor:
    """Bounds computed once per pool and cycle (claims only shrink the set: conservative)."""
    found = state.victim_floors.get(pool)
    if found is None:
        # Straight from the snapshot rows: cheaper than building the records it guards.
        cfg, now = state.config, state.now
        rank = {c.name: (c.value, c.preemptible) for c in state.classes.values()}
        leaving, lowest = False, 1 << 62
        for job in state.running_jobs:
            if job.pool != pool:
                continue
            value, preemptible = rank.get(job.priority_class, (0, True))
            if job.preempting_until is not None:
                leaving = True
            elif (
                not preemptible
                or job.times_preempted >= cfg.max_preemptions
                or now - job.started_at < cfg.min_runtime
            ):
                continue
            lowest = min(lowest, value)
        found = state.victim_floors[pool] = VictimFloor(leaving, lowest)
    return found


def plan_preemption(
    state: CycleState,
    job: PendingWorkload,
    pool: str,
    shape: Shape,
    priority: int,
    preemptible: bool,
) -> PreemptionPlan | None:
    """Find victims in ``pool`` so that ``job`` fits; None when no eligible set exists.

    Leaves the cycle state exactly as it found it.
    """
    tree = state.tree
    member = job.member
    in_nominal = tree.unused_nominal(member, pool) >= shape.gpus
    floor = victim_floor(state, pool)
    if not in_nominal and not floor.leaving and priority <= floor.priority:
        return None  # a borrower may only take leaving or lower-priority work: none exists
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
