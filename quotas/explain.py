"""Pending explanations: ranked human-readable reasons and ETAs.

Every pending job gets all the distinct reasons it could not start (one per pool tried,
deduplicated by code), sorted by :data:`quotas.decisions.REASON_RANK` so the reason to fix
first comes first, followed by its queue position. Messages say what was needed and what was
there, e.g. ``needs 16 x H200 (2 whole nodes) in one NVLink domain; 6 GPUs free in h200``.

ETAs are estimates, not promises: a fluid list-schedule per pool, in queue order, over the
GPUs that running jobs release at their declared max runtime (``started_at + max_runtime``).
It ignores fragmentation and quota, so it is optimistic when those are the blocker; jobs
waiting for a preemption or holding a reservation get their exact start instead, and a job
blocked by its budget gets the end of the budget period.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from quotas import decisions as codes
from quotas.cycle import CycleState
from quotas.decisions import Reason
from quotas.placement import Shape, describe_shape
from quotas.snapshot import PendingWorkload

# A reason whose message is written at the end of the cycle, from the final state (free GPUs
# and quota usage only shrink during a cycle, so what blocked the job still blocks it then).
# Many jobs share one, so it is formatted once: (kind, member, pool, what, flag), where
# ``what`` is the job's GPUs for quota reasons (all they depend on) and its shape otherwise.
Deferred = tuple[str, str, str, Shape | int, bool]
QUOTA = "quota"
NOMINAL_ONLY = "nominal_only"
CAPACITY = "capacity"


@dataclass(slots=True)
class PendingRecord:
    """A job that stays pending this cycle, with what the engine learned about it."""

    job: PendingWorkload
    reasons: list[Reason | Deferred]
    eta_pool: str | None  # pool whose queue the ETA estimate uses
    eta: float | None = None  # fixed ETA (reservation, preemption, budget) when known
    no_eta: bool = False  # never fits / invalid: no estimate


def relative(when: float, now: float) -> str:
    """``in 12m`` style distance from now, for messages."""
    seconds = max(0.0, when - now)
    if seconds < 120:
        return f"in {seconds:.0f}s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f}m"
    if seconds < 172800:
        return f"in {seconds / 3600:.1f}h"
    return f"in {seconds / 86400:.1f}d"


class ReasonWriter:
    """Formats deferred reasons from the cycle's final state, each distinct one once."""

    def __init__(self, state: CycleState):
        self.state = state
        self._cache: dict[Deferred, Reason] = {}
        # Per (member, pool): what a quota message says besides the GPUs needed.
        self._quota: dict[tuple[str, str], tuple[int, int | None, str, str]] = {}

    def write(self, item: Reason | Deferred) -> Reason:
        """The human-readable reason for a recorded one."""
        if isinstance(item, Reason):
            return item
        found = self._cache.get(item)
        if found is None:
            found = self._cache[item] = self._make(item)
        return found

    def _make(self, item: Deferred) -> Reason:
        kind, member, pool, what, flag = item
        state = self.state
        gpus = what if isinstance(what, int) else what.gpus
        if kind == QUOTA:
            facts = self._quota.get((member, pool))
            if facts is None:
                facts = self._quota[(member, pool)] = _quota_facts(state, member, pool)
            used, limit, exceeded, exhausted = facts
            if limit is not None and used + gpus > limit:
                return Reason(codes.QUOTA_EXCEEDED, f"{exceeded}; needs {gpus}")
            return Reason(codes.COHORT_EXHAUSTED, f"{exhausted}; needs {gpus}")
        if kind == NOMINAL_ONLY:
            tree = state.tree
            used, nominal = tree.usage(member, pool), tree.nominal(member, pool)
            return Reason(
                codes.NON_PREEMPTIBLE_OVER_NOMINAL,
                f"non-preemptible jobs run only inside nominal quota: member {member} uses "
                f"{used}/{nominal} in {pool}; needs {gpus}",
            )
        if isinstance(what, int):
            raise TypeError(f"a {kind} reason needs the job's shape, not its GPU count")
        return capacity_reason(state, pool, what, flag)


def capacity_reason(state: CycleState, pool_name: str, shape: Shape, held_back: bool) -> Reason:
    """Why ``shape`` does not fit in the pool: capacity, fragmentation, or -- ``held_back``,
    decided when the job was tried -- GPUs held for a reservation the job would outlast."""
    index = state.index[pool_name]
    pool = index.pool
    reservation = state.reservations.get(pool_name)
    if held_back and reservation is not None:
        return Reason(
            codes.RESERVED_FOR_HEAD,
            f"GPUs in {pool.name} are held for job {reservation.job_id}, which starts "
            f"{relative(reservation.start, state.now)}; this job's max runtime would delay it",
        )
    need = describe_shape(shape, pool)
    # GPUs held for a reservation are idle: count them as free in what people read.
    free = index.free_total + (sum(reservation.held.values()) if reservation else 0)
    if free >= shape.gpus:
        return Reason(
            codes.FRAGMENTED,
            f"needs {need}; {free} GPUs free in {pool.name}, but no set of nodes fits the shape",
        )
    return Reason(
        codes.INSUFFICIENT_CAPACITY,
        f"needs {need}; {free} of {index.capacity} GPUs free in {pool.name}",
    )


def quota_reason(state: CycleState, member: str, pool: str, gpus: int) -> Reason:
    """Why the quota tree refuses ``gpus`` more GPUs for ``member`` in ``pool``."""
    used, limit, exceeded, exhausted = _quota_facts(state, member, pool)
    if limit is not None and used + gpus > limit:
        return Reason(codes.QUOTA_EXCEEDED, f"{exceeded}; needs {gpus}")
    return Reason(codes.COHORT_EXHAUSTED, f"{exhausted}; needs {gpus}")


def _quota_facts(state: CycleState, member: str, pool: str) -> tuple[int, int | None, str, str]:
    """(usage, nominal + borrowing limit or None, the two message stems) of a quota reason:
    over the member's own limit, or nothing left to borrow in its cohort."""
    tree = state.tree
    used, nominal = tree.usage(member, pool), tree.nominal(member, pool)
    limit = tree.borrowing_limit(member, pool)
    limit_text = "unlimited" if limit is None else str(limit)
    exceeded = (
        f"member {member} quota in {pool}: {used}/{nominal} in use, borrowing limit {limit_text}"
    )
    cohort = tree.cohort_of(member) or member
    exhausted = (
        f"nothing lendable in cohort {cohort} for {pool}: member {member} uses "
        f"{used}/{nominal}, {tree.available(member, pool)} GPUs available"
    )
    return used, None if limit is None else nominal + limit, exceeded, exhausted


def rank(reasons: Iterable[Reason]) -> list[Reason]:
    """Distinct reasons by code (first message wins), most fundamental first."""
    reasons = list(reasons)
    if len(reasons) < 2:
        return reasons
    seen: dict[str, Reason] = {}
    for reason in reasons:
        seen.setdefault(reason.code, reason)
    return sorted(seen.values(), key=lambda r: codes.REASON_RANK.get(r.code, 99))


def estimate_etas(state: CycleState, records: list[PendingRecord]) -> list[float | None]:
    """ETA of each pending record (same order), see the module docstring.

    Pools are independent: each runs its own fluid schedule over its records, in order.
    """
    now = state.now
    etas: list[float | None] = [None] * len(records)
    by_pool: dict[str, list[int]] = {name: [] for name in state.pools}
    for i, record in enumerate(records):
        pool = record.eta_pool
        if record.no_eta or pool is None or record.eta is not None:
            etas[i] = record.eta
        else:
            by_pool[pool].append(i)
    heappop, heappush = heapq.heappop, heapq.heappush
    for name, positions in by_pool.items():
        if not positions:
            continue
        releases = [(r.end, r.gpus) for r in state.running(name) if not r.claimed]
        releases.extend((end, sum(g for _, g in pl)) for end, pl in state.admitted_ends[name])
        heapq.heapify(releases)
        reservation = state.reservations.get(name)
        index = state.index[name]
        free = index.free_total + (sum(reservation.held.values()) if reservation else 0)
        capacity, clock = index.capacity, now
        for i in positions:
            job = records[i].job
            need = job.gpus
            if need > capacity:
                continue  # never fits: no estimate
            while free < need and releases:
                end, gpus = heappop(releases)
                if end > clock:
                    clock = end
                free += gpus
            if free < need:
                continue
            free -= need
            heappush(releases, (clock + job.max_runtime, need))
            etas[i] = clock
    return etas
