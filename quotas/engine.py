"""The admission cycle: ``admit(snapshot, now) -> Decisions``.

Phases, as in Kueue's scheduler:

1. **Heads** -- group pending jobs into per-member queues (higher priority first, FIFO among
   equals); jobs naming unknown members, classes or pools are set aside as invalid.
2. **Snapshot** -- build the mutable working copy (:class:`quotas.cycle.CycleState`): pool
   indexes, quota tree with usage, fair share, budget headroom, preemption candidates.
3. **Assignment** -- for a head: which pools it may use, in its preference order, whether it
   fits in its member's unused nominal quota (no borrowing) or needs to borrow.
4. **Order** -- a tournament over member queues: heads that fit in nominal quota first (by
   priority, then submit time); then borrowing heads by their member's fair-share score. A
   member's key depends only on its own usage, which changes only when its own head is
   served, so keys never go stale in the heap. Heads that must fail exactly like a head
   already tried (same member, priority, shapes; see ``_failed_heads``) are settled at once,
   so a blocked job never holds back a later job of its member.
5. **Admit** -- optimistically reserve the winner's quota, budget and GPUs in the working
   copy; if nothing fits, try preemption (reclaim or priority), else hold a backfill
   reservation for it; everything else that waits gets ranked reasons, position and ETA.

Phases 3-5 run per head as it wins the tournament. The cycle is deterministic: every
collection is sorted by id before use, and ties break on job id. The ``fifo`` and ``drf``
policies reuse phases 1, 2 and the placement of phase 5 with their own order and no quotas,
so the simulator compares policies through the same code.
"""

from __future__ import annotations

import gc
import heapq
from collections.abc import Callable
from itertools import count
from operator import attrgetter

from quotas import decisions as codes
from quotas.backfill import hold, place_backfill, release_timeline, shadow_start, take
from quotas.budgets import BudgetLeft, job_cost_gpu_hours
from quotas.cycle import CycleState
from quotas.decisions import Admit, Decisions, Pending, Preempt, Reason, Reservation
from quotas.explain import (
    CAPACITY,
    NOMINAL_ONLY,
    QUOTA,
    Deferred,
    PendingRecord,
    QuotaClock,
    ReasonWriter,
    estimate_etas,
    rank,
    relative,
)
from quotas.placement import Placement, Shape, describe_shape
from quotas.preemption import claim, plan_preemption, victim_floor
from quotas.queues import Head, queue_heads
from quotas.snapshot import Snapshot, validate

__all__ = ["admit", "admit_validated"]


def admit(snapshot: Snapshot, now: float) -> Decisions:
    """Run one admission cycle over ``snapshot`` at time ``now`` (epoch seconds).

    Returns which pending jobs start where, which running jobs to preempt (with a grace
    deadline), the backfill reservations held, and -- when ``config.explain`` -- a ranked
    explanation, queue position and ETA for every job that keeps waiting. Pure and
    deterministic: the same snapshot and ``now`` always give the same decisions.
    Raises :class:`quotas.snapshot.SnapshotError` on a structurally invalid snapshot.
    """
    validate(snapshot)
    return admit_validated(snapshot, now)


def admit_validated(snapshot: Snapshot, now: float) -> Decisions:
    """:func:`admit` without the structural check, for a caller that built the snapshot from
    an already validated structure (the simulator validates its cluster once, not per cycle).

    The cycle allocates tens of thousands of short-lived objects and creates no reference
    cycles, so the cyclic garbage collector is paused while it runs: its passes over the
    live snapshot cost about a sixth of a 10k-job cycle and would find nothing to free.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return run_cycle(snapshot, now).decisions()
    finally:
        if paused:
            gc.enable()


def run_cycle(snapshot: Snapshot, now: float, closed_check: int | None = 8) -> _Cycle:
    """Phases 1-5 over ``snapshot``; the cycle's ``decisions()`` assembles the output.

    ``closed_check``: failures in a row after which the tournament looks (again) for the
    closed world (see ``_Cycle._world_closed``); ``None`` never looks.
    The shortcut changes nothing in the decisions; tests compare both ways.
    """
    # 1. Heads.
    queued, invalid = queue_heads(snapshot)
    # 2. Snapshot.
    state = CycleState(snapshot, now)
    cycle = _Cycle(state, closed_check)
    # 3-5. Assignment, order and admission, per policy.
    policy = state.config.policy
    if policy == "fifo":
        cycle.run_fifo(queued)
    elif policy == "drf":
        cycle.run_tournament(queued, cycle.drf_key, cycle.try_greedy)
    else:
        cycle.run_tournament(queued, cycle.nuri_key, cycle.try_nuri)
    cycle.waiting.extend(sorted(invalid, key=lambda r: r.job.job_id))
    return cycle


TournamentKey = tuple[int, float, int, float, str]
_IN_NOMINAL = (0, 0.0)  # tournament key prefix of a head that fits its unused nominal quota
_order = attrgetter("order")
_KeyFn = Callable[[Head], TournamentKey]
_TryFn = Callable[[Head], None]


class _Cycle:
    """Phases 3-5 over one :class:`CycleState`, accumulating decisions."""

    def __init__(self, state: CycleState, closed_check: int | None = 8):
        self.state = state
        self.closed_check = closed_check
        self.closed_at: int | None = None  # waiting jobs when the world was found closed
        self.explain = state.config.explain
        self.admitted: list[Admit] = []
        self.preempted: list[Preempt] = []
        self.reserved: list[Reservation] = []
        self.waiting: list[PendingRecord] = []
        self._failed_preemptions: dict[tuple[str, str, int, bool, int], int] = {}
        # Smallest request the quota tree refused per (member, pool): availability only
        # shrinks during a cycle, so anything as large is refused too.
        self._quota_refused: dict[tuple[str, str], int] = {}
        self._fifo_reasons: dict[str, Reason] = {}
        self._ever_cache: dict[tuple[str, Shape], bool] = {}
        self._no_shadow: set[tuple[str, Shape]] = set()
        self._failed_heads: dict[tuple[object, ...], PendingRecord] = {}
        self._smallest_request = 0
        # Usage changes (admissions, preemption promises) so far, for the closed-world watch.
        self._changes = 0
        self._member_names = list(state.members)
        self._open_witness: dict[str, int] = {}
        self._nominal_pairs = [(m, p) for m in state.members for p in state.index]
        self._room_witness = 0
        self._closed_keys: dict[tuple[str, int], tuple[int, float]] = {}
        self._closed_reasons: dict[
            tuple[str, bool, int], tuple[list[Reason | Deferred], str | None]
        ] = {}

    # -- 4. order ------------------------------------------------------------------------

    def nuri_key(self, head: Head) -> TournamentKey:
        """In-nominal heads first by priority and age; borrowers by fair-share score."""
        job, tree = head.job, self.state.tree
        for pool, shape in head.shapes:
            if shape is not None and tree.unused_nominal(job.member, pool) >= shape.gpus:
                return _IN_NOMINAL + head.order
        return (1, self.state.fair.score(job.member), *head.order)

    def drf_key(self, head: Head) -> TournamentKey:
        """Lowest weighted dominant share first; FIFO inside a member; priority ignored."""
        job = head.job
        share = self.state.fair.dominant_share(job.member)
        return (0, share, 0, job.submitted_at, job.job_id)

    def run_tournament(self, heads: list[Head], key_of: _KeyFn, try_head: _TryFn) -> None:
        """Serve member queues in key order, re-keying a winner lazily (keys only worsen)."""
        queues: dict[str, list[Head]] = {}
        for head in heads:
            queues.setdefault(head.job.member, []).append(head)
        fifo_inside = self.state.config.policy == "drf"
        for queue in queues.values():
            if fifo_inside:
                queue.sort(key=lambda h: (h.job.submitted_at, h.job.job_id))
            else:
                queue.sort(key=_order)
            queue.reverse()  # pop() from the end is O(1)
        heap = [(key_of(q[-1]), member) for member, q in queues.items()]
        heapq.heapify(heap)
        top_priority = max((h.priority for h in heads), default=0)
        distinct = {h.key[3]: h.shapes for h in heads}  # heads share few shapes tuples
        self._smallest_request = min(
            (s.gpus for shapes in distinct.values() for _, s in shapes if s is not None),
            default=0,
        )
        nuri = try_head == self.try_nuri
        # Watch for the closed world (see ``_world_closed``) every few failures in a row.
        check_after = self.closed_check or 0
        watch, seen, misses = nuri and check_after > 0, 0, 0
        while heap:
            key, member = heapq.heappop(heap)
            if not self.explain and self._nothing_left_to_decide(key, top_priority):
                break
            queue = queues[member]
            try_head(queue.pop())
            if nuri:
                self._skip_failed(queue)
                if watch:
                    if self._changes != seen:
                        seen, misses = self._changes, 0
                    else:
                        misses += 1
                        if misses >= check_after:
                            if self._world_closed():
                                self.closed_at = len(self.waiting)
                                if queue:
                                    heapq.heappush(heap, (self._closed_key(queue[-1]), member))
                                self._run_closed(queues, heap)
                                return
                            misses = 0
            if queue:
                heapq.heappush(heap, (key_of(queue[-1]), member))

    def _skip_failed(self, queue: list[Head]) -> None:
        """Settle, right away, the member's next heads that must fail like an earlier one.

        They would wait anyway (see ``_failed_heads``); settling them now means a blocked
        job never holds back a later job of the same member that could still start or
        reclaim (e.g. a small in-nominal job behind a large borrowing one). A head over its
        member's GPU-hour budget is settled first with that reason, as ``try_nuri`` would:
        the failure memo ignores runtimes, and the budget is what the user must fix.
        """
        failed, now = self._failed_heads, self.state.now
        while queue:
            head = queue[-1]
            job = head.job
            if self._over_budget(head):  # settled with its budget reason
                queue.pop()
                continue
            record = failed.get(self._signature(head, now + job.max_runtime)) if failed else None
            if record is None:
                return
            queue.pop()
            self.waiting.append(PendingRecord(job, record.reasons, record.eta_pool))

    def _world_closed(self) -> bool:
        """True when every remaining head must wait, refused by quota in every pool.

        The preemption searches are used up and no member may take even the smallest
        request anywhere. Usage only grows during a cycle, so this stays true; from then on
        a head's outcome depends only on its member, preemptibility and shapes (and the
        budget), which :meth:`_run_closed` settles from a memo -- with exactly the decisions
        and explanations :meth:`try_nuri` would give.
        """
        state = self.state
        if state.preemption_attempts < state.config.max_preemption_attempts:
            return False
        return all(self._quota_closed(pool) for pool in state.index)

    def _closed_key(self, head: Head) -> TournamentKey:
        """:meth:`nuri_key` in the closed world, where usage and scores no longer change:
        its first two parts depend only on the member and the shapes."""
        memo = (head.job.member, head.key[3])
        found = self._closed_keys.get(memo)
        if found is None:
            found = self._closed_keys[memo] = self.nuri_key(head)[:2]
        return found + head.order

    def _run_closed(
        self, queues: dict[str, list[Head]], heap: list[tuple[TournamentKey, str]]
    ) -> None:
        """The rest of the tournament in the closed world, in one loop: the same order and
        outcomes as :meth:`try_nuri` plus :meth:`_skip_failed`, without their searches.

        A head is settled by its budget, then by the failure memo (a head that failed
        like it before the world closed keeps that head's reasons, as in ``try_nuri``),
        then by its per-pool reasons, computed once per (member, preemptible, shapes).
        """
        if not self.explain:
            return  # nothing left to decide, and waiting jobs produce no output
        state = self.state
        failed, waiting = self._failed_heads, self.waiting
        reservations, now = state.reservations, state.now  # no reservation can be added now
        outcomes, signature = self._closed_reasons, self._signature
        while heap:
            member = heap[0][1]
            queue = queues[member]
            head = queue.pop()
            job = head.job
            if not self._over_budget(head):
                key = signature(head, now + job.max_runtime) if reservations else head.key
                record = failed.get(key)
                if record is not None:
                    waiting.append(PendingRecord(job, record.reasons, record.eta_pool))
                else:
                    memo = (member, head.preemptible, head.key[3])
                    outcome = outcomes.get(memo)
                    if outcome is None:
                        outcome = outcomes[memo] = self._closed_outcome(head)
                    reasons, first_pool = outcome
                    if first_pool is None:
                        waiting.append(PendingRecord(job, reasons, None, None, True))
                    else:
                        failed[key] = record = PendingRecord(job, reasons, first_pool)
                        waiting.append(record)
            self._skip_failed(queue)
            # Keys no longer change: the member stays on top while its next head is still the
            # smallest (a borrowing member's heads come out in a run), else one heap swap.
            if queue:
                entry = (self._closed_key(queue[-1]), member)
                if len(heap) > 1 and min(heap[1:3]) < entry:
                    heapq.heapreplace(heap, entry)
                else:
                    heap[0] = entry
            else:
                heapq.heappop(heap)

    def _closed_outcome(self, head: Head) -> tuple[list[Reason | Deferred], str | None]:
        """The reasons and ETA pool :meth:`try_nuri` finds for a head in the closed world."""
        tree, member, explain = self.state.tree, head.job.member, self.explain
        reasons: list[Reason | Deferred] = []
        first_pool: str | None = None
        for pool, shape in head.shapes:
            if shape is None or not self._ever(pool, shape):
                if explain:
                    reasons.append(self._shape_reason(head, pool, shape))
                continue
            if first_pool is None:
                first_pool = pool
            gpus = shape.gpus
            if not head.preemptible and tree.unused_nominal(member, pool) < gpus:
                if explain:
                    reasons.append((NOMINAL_ONLY, member, pool, gpus, False))
            elif explain:
                reasons.append((QUOTA, member, pool, gpus, False))
        return reasons, first_pool

    def _quota_closed(self, pool: str) -> bool:
        """No member may take even the smallest request in ``pool`` any more.

        Per pool, the scan keeps the first member (in name order) that still may:
        availability only shrinks during a cycle, so it resumes there, and all the checks
        of a cycle cost O(members x pools) together.
        """
        tree, smallest, members = self.state.tree, self._smallest_request, self._member_names
        i = self._open_witness.get(pool, 0)
        while i < len(members) and tree.available(members[i], pool) < smallest:
            i += 1
        self._open_witness[pool] = i
        return i == len(members)

    def _nominal_room_left(self) -> bool:
        """Some member still has unused nominal quota for the smallest request somewhere
        (usage only grows during a cycle: the same resumable scan as ``_quota_closed``)."""
        tree, smallest, pairs = self.state.tree, self._smallest_request, self._nominal_pairs
        i = self._room_witness
        while i < len(pairs) and tree.unused_nominal(*pairs[i]) < smallest:
            i += 1
        self._room_witness = i
        return i < len(pairs)

    def _nothing_left_to_decide(self, key: TournamentKey, top_priority: int) -> bool:
        """True when no remaining head can be admitted, preempt or reserve (exactly).

        Only used without explanations (the simulator), where waiting jobs produce no
        output: then the decisions are the same as if every head had been tried. In every
        pool either the quota tree has no room left for the smallest request or every GPU
        is taken and the pool already holds its one reservation (nothing to admit or
        reserve); and either the preemption searches are used up, or no job can still be
        in nominal quota (which could reclaim) and no remaining head outranks any victim.
        """
        state = self.state
        nuri = state.config.policy == "nuri"
        for name, index in state.index.items():
            if nuri and self._quota_closed(name):
                continue  # nobody may take a GPU here: no admission, no reservation
            if index.free_total > 0:
                return False
            reservation = state.reservations.get(name)
            if reservation is not None and reservation.held:
                return False
            if reservation is None and state.config.backfill and nuri:
                return False
        if not nuri:
            return True
        if state.preemption_attempts >= state.config.max_preemption_attempts:
            return True
        # A member whose head borrows may have an in-nominal job behind it, which could
        # reclaim: only past the point where no member has nominal room left may we stop.
        if key[0] == 0 or self._nominal_room_left():
            return False
        for name in state.index:
            floor = victim_floor(state, name)
            if floor.leaving or top_priority > floor.priority:
                return False
        return True

    def run_fifo(self, heads: list[Head]) -> None:
        """One queue in submit order; a blocked job blocks its pools for everyone after it."""
        blocked: dict[str, str] = {}
        for head in sorted(heads, key=lambda h: (h.job.submitted_at, h.job.job_id)):
            job = head.job
            usable = [(p, s) for p, s in head.shapes if s is not None and self._ever(p, s)]
            if not usable:
                self.waiting.append(self._never_fits(head))
                continue
            open_pools = [(p, s) for p, s in usable if p not in blocked]
            if not open_pools:
                pool = usable[0][0]
                reason = self._fifo_reasons.get(pool)
                if reason is None:
                    reason = self._fifo_reasons[pool] = Reason(
                        codes.BLOCKED_BY_HEAD,
                        f"FIFO: job {blocked[pool]} ahead of it in {pool} is waiting for GPUs",
                    )
                self.waiting.append(PendingRecord(job, [reason], pool))
                continue
            if not self._greedy(head, open_pools):
                for pool, _ in open_pools:
                    blocked[pool] = job.job_id
                if not self.explain and len(blocked) == len(self.state.index):
                    return  # every pool is blocked: the rest can only wait

    # -- 5. admit ------------------------------------------------------------------------

    def try_greedy(self, head: Head) -> None:
        """Baseline admission: first pool where the job fits, no quotas, no preemption."""
        usable = [(p, s) for p, s in head.shapes if s is not None and self._ever(p, s)]
        if not usable:
            self.waiting.append(self._never_fits(head))
            return
        self._greedy(head, usable)

    def _greedy(self, head: Head, usable: list[tuple[str, Shape]]) -> bool:
        state = self.state
        reasons: list[Reason | Deferred] = []
        for pool, shape in usable:
            placement = state.index[pool].place(shape)
            if placement is not None:
                self._admit(head, pool, placement, False)
                return True
            if self.explain:
                reasons.append((CAPACITY, "", pool, shape, False))
        self.waiting.append(PendingRecord(head.job, reasons, usable[0][0]))
        return False

    def try_nuri(self, head: Head) -> None:
        """Admit in nominal, else borrowing, else preempt, else hold a reservation, else wait."""
        state, job = self.state, head.job
        tree, member, explain = state.tree, job.member, self.explain
        refused = self._quota_refused
        reasons: list[Reason | Deferred] = []
        if self._over_budget(head):
            return
        end = state.now + job.max_runtime
        # A head like one that already failed everything this cycle fails too: quota, free
        # GPUs and budget only shrink, reservations and failed searches persist. "Like" means
        # same member, priority and shapes, and the same side of every reservation's start.
        signature = self._signature(head, end)
        failed = self._failed_heads.get(signature)
        if failed is not None:
            self.waiting.append(PendingRecord(job, failed.reasons, failed.eta_pool))
            return
        borrow_fit: tuple[str, Placement] | None = None
        blocked: list[tuple[str, Shape, bool, bool]] = []  # pool, shape, in nominal, quota ok
        first_pool: str | None = None
        for pool, shape in head.shapes:
            if shape is None or not self._ever(pool, shape):
                if explain:
                    reasons.append(self._shape_reason(head, pool, shape))
                continue
            if first_pool is None:
                first_pool = pool
            gpus = shape.gpus
            in_nominal = tree.unused_nominal(member, pool) >= gpus
            if not head.preemptible and not in_nominal:
                if explain:
                    reasons.append((NOMINAL_ONLY, member, pool, gpus, False))
                blocked.append((pool, shape, False, False))
                continue
            memo = (member, pool)
            if gpus >= refused.get(memo, 1 << 30) or tree.available(member, pool) < gpus:
                refused[memo] = min(gpus, refused.get(memo, 1 << 30))
                if explain:
                    reasons.append((QUOTA, member, pool, gpus, False))
                blocked.append((pool, shape, in_nominal, False))
                continue
            placement = place_backfill(state, pool, shape, end)
            if placement is None:
                if explain:
                    # Decided now: a later backfill may use the held GPUs up.
                    reservation = state.reservations.get(pool)
                    held_back = (
                        reservation is not None
                        and end > reservation.start
                        and state.index[pool].place_with_extra(shape, reservation.held) is not None
                    )
                    reasons.append((CAPACITY, "", pool, shape, held_back))
                blocked.append((pool, shape, in_nominal, True))
                continue
            if in_nominal:
                self._admit(head, pool, placement, False)
                return
            if borrow_fit is None:
                borrow_fit = (pool, placement)
        if borrow_fit is not None:
            self._admit(head, borrow_fit[0], borrow_fit[1], True)
            return
        if first_pool is None:
            self.waiting.append(PendingRecord(job, reasons, None, None, True))
            return
        # Preemption: pools where the job is guaranteed (reclaim) first.
        if state.preemption_attempts < state.config.max_preemption_attempts:
            for guaranteed_first in (True, False):
                for pool, shape, in_nominal, _ in blocked:
                    if in_nominal is guaranteed_first and self._try_preemption(
                        head, pool, shape, in_nominal, reasons
                    ):
                        return
        record = PendingRecord(job, reasons, first_pool)
        if not (state.config.backfill and self._try_reservation(head, blocked, record)):
            self._failed_heads[signature] = record
        self.waiting.append(record)

    def _over_budget(self, head: Head) -> bool:
        """Settle a head whose worst case overruns its member's GPU-hour budget."""
        state, job = self.state, head.job
        member = job.member
        left = state.headroom.get(member)
        if left is None:
            return False
        # job_cost_gpu_hours, inlined: this runs for every waiting head (window >= 0).
        cost = job.gpus * min(job.max_runtime, state.budget_window[member]) / 3600.0
        if cost <= left + 1e-9:
            return False
        if self.explain:
            budget = state.members[member].budget
            ends = ""
            if budget is not None:
                ends = (
                    f" (it ends {relative(budget.period_end, state.now)})"
                    if budget.period_end > state.now
                    else " (it has ended)"
                )
            # No ETA: a budget is not refilled within its period, and the snapshot does not
            # say what (if anything) the next period grants.
            parts = state.budget_left[member]
            # What this cycle's admissions took is reserved too (by now-running jobs).
            shown = BudgetLeft(
                parts.limit_gpu_hours,
                parts.used_gpu_hours,
                parts.reserved_gpu_hours + max(0.0, parts.left_gpu_hours - left),
                left,
            )
            reason = Reason(
                codes.BUDGET_EXHAUSTED,
                f"member {state.label(member)} GPU-hour budget: job needs up to {cost:.1f} "
                f"GPU-h (GPUs x max runtime, up to the period's end); {shown.describe()}"
                f"{ends}; no estimate: it waits for the next period's budget",
            )
            self.waiting.append(PendingRecord(job, [reason], None, None, True))
        else:
            self.waiting.append(PendingRecord(job, [], None, None, True))
        return True

    def _signature(self, head: Head, end: float) -> tuple[object, ...]:
        reservations = self.state.reservations
        if not reservations:
            return head.key
        sides = tuple(
            reservations[pool].start >= end if pool in reservations else None
            for pool, _ in head.shapes
        )
        return (head.key, sides)

    def _try_preemption(
        self,
        head: Head,
        pool: str,
        shape: Shape,
        in_nominal: bool,
        reasons: list[Reason | Deferred],
    ) -> bool:
        state, job = self.state, head.job
        reservation = state.reservations.get(pool)
        if reservation is not None and (reservation.guaranteed or not in_nominal):
            return False  # the reserved head is ahead of this job; only a reclaim outranks it
        # A victim search that failed for a size fails for every larger one of the same kind:
        # the candidates are the same or fewer, and the job needs more.
        spread = 0 if shape.nodes == 1 else 1 + shape.same_domain  # 1 node, nodes, 1 domain
        memo = (pool, job.member, head.priority, head.preemptible, spread)
        size = shape.gpus if shape.nodes == 1 else shape.nodes
        if size >= self._failed_preemptions.get(memo, 1 << 30):
            return False
        if state.preemption_attempts >= state.config.max_preemption_attempts:
            return False
        state.preemption_attempts += 1
        self._changes += 1  # conservative: a failed search changes nothing, but it is rare
        plan = plan_preemption(state, job, pool, shape, head.priority, head.preemptible)
        if plan is None:
            self._failed_preemptions[memo] = min(size, self._failed_preemptions.get(memo, size))
            return False
        now, grace = state.now, state.config.grace_period
        deadline = now + grace
        fresh = tuple(r.job.job_id for r in plan.victims if r.job.preempting_until is None)
        leaving = [
            r.job.preempting_until for r in plan.victims if r.job.preempting_until is not None
        ]
        claim(state, pool, plan.victims)
        kind = codes.RECLAIM if plan.reclaim else codes.PRIORITY
        if fresh:
            why = (
                f"{state.label(job.member)} reclaims its nominal quota in {pool} for job "
                f"{job.job_id}"
                if plan.reclaim
                else f"higher-priority job {job.job_id} of {state.label(job.member)} needs {pool}"
            )
            self.preempted.append(Preempt(job.job_id, fresh, kind, why, deadline))
        ready = max([*leaving, deadline] if fresh else leaving)
        # Optimistic reservation: the preemptor's quota, budget and the free GPUs it will
        # use are taken now, so nobody later in this cycle can take them.
        gpus = shape.gpus
        state.tree.add_usage(job.member, pool, gpus)
        state.fair.add(job.member, pool, gpus)
        if job.member in state.headroom:
            state.headroom[job.member] -= job_cost_gpu_hours(
                job.gpus, job.max_runtime, state.budget_window[job.member]
            )
        index = state.index[pool]
        for i, g in plan.placement:
            index.take(i, max(0, g - plan.freed.get(i, 0)))
        state.admitted_ends[pool].append((ready + job.max_runtime, plan.placement))
        state.admitted_usage[pool].append((ready + job.max_runtime, job.job_id, job.member, gpus))
        victims = len(plan.victims)
        reasons.insert(
            0,
            Reason(
                codes.WAITING_FOR_PREEMPTION,
                f"{victims} job(s) in {pool} are checkpointing to make room "
                f"({kind}); GPUs free {relative(ready, now)}",
            ),
        )
        self.waiting.append(PendingRecord(job, reasons, pool, ready))
        return True

    def _try_reservation(
        self, head: Head, blocked: list[tuple[str, Shape, bool, bool]], record: PendingRecord
    ) -> bool:
        state = self.state
        best: tuple[float, str, tuple[float, Placement, dict[int, int]], bool] | None = None
        for pool, shape, in_nominal, quota_ok in blocked:
            if not quota_ok or pool in state.reservations or (pool, shape) in self._no_shadow:
                continue
            found = shadow_start(state.index[pool], shape, release_timeline(state, pool))
            if found is None:
                self._no_shadow.add((pool, shape))
            elif best is None or found[0] < best[0]:
                best = (found[0], pool, found, in_nominal)
        if best is None:
            return False
        _, pool, found, in_nominal = best
        reservation = hold(state, pool, head.job.job_id, found, in_nominal)
        names = state.index[pool].names_of(reservation.placement)
        self.reserved.append(Reservation(head.job.job_id, pool, reservation.start, names))
        record.eta = reservation.start
        record.eta_pool = pool
        return True

    def _admit(self, head: Head, pool: str, placement: Placement, borrowing: bool) -> None:
        state, job = self.state, head.job
        self._changes += 1
        end = state.now + job.max_runtime
        take(state, pool, placement, end)
        gpus = sum(g for _, g in placement)
        state.tree.add_usage(job.member, pool, gpus)
        state.fair.add(job.member, pool, gpus)
        if job.member in state.headroom:
            state.headroom[job.member] -= job_cost_gpu_hours(
                job.gpus, job.max_runtime, state.budget_window[job.member]
            )
        state.admitted_ends[pool].append((end, placement))
        state.admitted_usage[pool].append((end, job.job_id, job.member, gpus))
        names = state.index[pool].names_of(placement)
        backfilled = pool in state.reservations
        self.admitted.append(Admit(job.job_id, pool, names, borrowing, backfilled))

    # -- explanations ----------------------------------------------------------------------

    def _ever(self, pool: str, shape: Shape) -> bool:
        key = (pool, shape)
        found = self._ever_cache.get(key)
        if found is None:
            found = self._ever_cache[key] = self.state.index[pool].can_ever_fit(shape)
        return found

    def _shape_reason(self, head: Head, pool: str, shape: Shape | None) -> Reason:
        info = self.state.pools[pool]
        index = self.state.index[pool]
        if shape is None:
            return Reason(
                codes.SHAPE_UNSATISFIABLE,
                f"{head.job.gpus} GPUs do not map onto {pool} ({info.gpus_per_node} per node): "
                "multi-node jobs take whole nodes",
            )
        return Reason(
            codes.SHAPE_UNSATISFIABLE,
            f"needs {describe_shape(shape, info)}; {pool} has {index.capacity} GPUs on "
            f"{len(index.names)} live nodes, so it can never fit",
        )

    def _never_fits(self, head: Head) -> PendingRecord:
        reasons: list[Reason | Deferred] = []
        if self.explain:
            reasons.extend(self._shape_reason(head, p, s) for p, s in head.shapes)
        return PendingRecord(head.job, reasons, None, None, True)

    def decisions(self) -> Decisions:
        """Assemble the cycle's decisions (explanations only when configured)."""
        pending: tuple[Pending, ...] = ()
        if self.explain:
            clock = QuotaClock(self.state)
            writer = ReasonWriter(self.state, clock)
            etas = estimate_etas(self.state, self.waiting, clock)
            nuri = self.state.config.policy == "nuri"
            fair, total = self.state.fair, len(self.waiting)
            # Many jobs wait for the same reasons: rank each distinct list once, and write
            # the queue reason once per member (the position itself is ``Pending.position``).
            # Records that share a reasons list (settled from a memo) hit by identity; every
            # record is alive here, so ids are not reused.
            ranked: dict[tuple[int, tuple[Reason | Deferred, ...]], tuple[Reason, ...]] = {}
            lists: dict[str, tuple[Reason, dict[int, tuple[Reason, ...]]]] = {}
            items: list[Pending] = []
            append = items.append
            for position, record, eta in zip(count(1), self.waiting, etas, strict=False):
                member = record.job.member
                found = lists.get(member)
                if found is None:
                    text = f"{total} jobs waiting"
                    if nuri:
                        text += (
                            f"; member {self.state.label(member)} fair-share score "
                            f"{fair.score(member):.2f}"
                        )
                    found = lists[member] = (Reason(codes.QUEUE_POSITION, text), {})
                where, by_list = found
                reasons = by_list.get(id(record.reasons))
                if reasons is None:
                    key = (id(where), tuple(record.reasons))
                    reasons = ranked.get(key)
                    if reasons is None:
                        found_reasons = rank([writer.write(r) for r in key[1]])
                        reasons = ranked[key] = (*found_reasons, where)
                    by_list[id(record.reasons)] = reasons
                append(Pending(record.job.job_id, reasons, position, eta))
            pending = tuple(items)
        return Decisions(tuple(self.admitted), tuple(self.preempted), pending, tuple(self.reserved))
