"""Backfill with a reservation for the blocked head job (EASY backfill, node-aware).

When the first job of a pool is blocked only by busy GPUs, the engine computes its *shadow
time*: the earliest moment it fits if every running job ends at its declared max runtime
(``started_at + max_runtime``; jobs in their grace period end at their deadline). The GPUs
that the head will need then and that are free now are *held*: taken out of the pool index
so that no later job can use them, except a job that ends before the shadow time. Later jobs
therefore start now only if they cannot delay the head. One reservation per pool per cycle.
"""

from __future__ import annotations

from quotas.cycle import CycleState, ReservationState
from quotas.placement import Placement, PoolIndex, Shape


def release_timeline(state: CycleState, pool: str) -> list[tuple[float, Placement]]:
    """(end, placement) of everything that will release GPUs in ``pool``, earliest first.

    Victims already promised to a preemptor are left out: their GPUs go to that job.
    """
    timeline = [(r.end, r.placement) for r in state.running(pool) if not r.claimed]
    timeline.extend(state.admitted_ends[pool])
    timeline.sort(key=lambda item: item[0])
    return timeline


def shadow_start(
    index: PoolIndex, shape: Shape, timeline: list[tuple[float, Placement]]
) -> tuple[float, Placement, dict[int, int]] | None:
    """Earliest (time, placement, released-by-then) at which ``shape`` fits, or None.

    Incremental: only nodes that change are looked at, so the cost is O(timeline), not
    O(timeline x nodes).
    """
    released: dict[int, int] = {}
    per_node = index.pool.gpus_per_node
    counts = [len(lst) for lst in index.whole]
    total_whole = index.whole_count
    k = shape.nodes
    pos = 0
    while pos < len(timeline):
        when = timeline[pos][0]
        hit = False
        while pos < len(timeline) and timeline[pos][0] == when:
            for i, g in timeline[pos][1]:
                before = index.free[i] + released.get(i, 0)
                released[i] = released.get(i, 0) + g
                after = before + g
                if shape.nodes == 1:
                    hit = hit or after >= shape.gpus_per_node
                elif before < index.total[i] == per_node == after:
                    counts[index.domain_of[i]] += 1
                    total_whole += 1
            pos += 1
        if shape.nodes > 1:
            hit = max(counts, default=0) >= k or (not shape.same_domain and total_whole >= k)
        if hit:
            placement = index.place_with_extra(shape, released)
            if placement is not None:
                return when, placement, released
    return None


def hold(
    state: CycleState,
    pool: str,
    job_id: str,
    found: tuple[float, Placement, dict[int, int]],
    guaranteed: bool = False,
) -> ReservationState:
    """Hold the GPUs a head job found by :func:`shadow_start` needs and that are free now."""
    index = state.index[pool]
    start, placement, released = found
    held: dict[int, int] = {}
    for i, g in placement:
        need_now = min(index.free[i], max(0, g - released.get(i, 0)))
        if need_now > 0:
            index.take(i, need_now)
            held[i] = need_now
    reservation = ReservationState(job_id, start, placement, held, guaranteed)
    state.reservations[pool] = reservation
    return reservation


def place_backfill(state: CycleState, pool: str, shape: Shape, end: float) -> Placement | None:
    """Placement of a job ending at ``end``: held GPUs are usable only before the reservation."""
    index = state.index[pool]
    placement = index.place(shape)
    if placement is not None:
        return placement
    reservation = state.reservations.get(pool)
    if reservation is None or end > reservation.start or not reservation.held:
        return None
    return index.place_with_extra(shape, reservation.held)


def take(state: CycleState, pool: str, placement: Placement, end: float) -> None:
    """Take a placement's GPUs; a job ending before the reservation uses held GPUs first."""
    index = state.index[pool]
    reservation = state.reservations.get(pool)
    if reservation is not None and end > reservation.start:
        reservation = None  # a long job never touches held GPUs
    for i, g in placement:
        from_held = 0
        if reservation is not None and i in reservation.held:
            from_held = min(g, reservation.held[i])
            reservation.held[i] -= from_held
            if reservation.held[i] == 0:
                del reservation.held[i]
        index.take(i, g - from_held)
