"""Phase 2 of a cycle: the mutable working copy of an immutable :class:`Snapshot`.

Everything the later phases read and change lives here: per-pool free-GPU indexes, the quota
tree with usage, fair-share scores, budget headroom, running workloads as preemption
candidates, and backfill reservations. Building it is O(nodes + running + members x pools).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quotas.budgets import BudgetLeft, budget_left
from quotas.fair_share import FairShare
from quotas.placement import Placement, PoolIndex
from quotas.quota_tree import QuotaTree

if TYPE_CHECKING:
    from quotas.preemption import VictimFloor
from quotas.snapshot import (
    EngineConfig,
    Member,
    Node,
    Pool,
    PriorityClass,
    RunningWorkload,
    Snapshot,
)


@dataclass(slots=True)
class RunningRecord:
    """A running workload as the cycle sees it: where it sits and whether it is spoken for.

    ``claimed`` marks workloads whose GPUs this cycle already promised to a preemptor.
    """

    job: RunningWorkload
    placement: Placement
    priority: int
    preemptible: bool
    end: float
    gpus: int
    claimed: bool = False


@dataclass(slots=True)
class ReservationState:
    """A backfill reservation: GPUs free now that the head needs at ``start``.

    ``held`` (node -> GPUs) was taken out of the pool index; jobs that end before ``start``
    may still use it. A reservation for a borrowing head (not ``guaranteed``) yields to a job
    that reclaims its member's nominal quota: the quota guarantee comes first.
    """

    job_id: str
    start: float
    placement: Placement
    held: dict[int, int] = field(default_factory=dict)
    guaranteed: bool = False  # the head fits its member's nominal quota


class CycleState:
    """Working state of one cycle (see module docstring)."""

    def __init__(self, snapshot: Snapshot, now: float):
        self.now = now
        self.config: EngineConfig = snapshot.config
        self.pools: dict[str, Pool] = {p.name: p for p in sorted(snapshot.pools, key=_name)}
        self.classes: dict[str, PriorityClass] = {c.name: c for c in snapshot.priority_classes}
        self.members: dict[str, Member] = {m.name: m for m in sorted(snapshot.members, key=_name)}
        nodes_by_pool: dict[str, list[Node]] = {p: [] for p in self.pools}
        for node in snapshot.nodes:
            nodes_by_pool[node.pool].append(node)
        self.index: dict[str, PoolIndex] = {
            name: PoolIndex(pool, nodes_by_pool[name]) for name, pool in self.pools.items()
        }
        pool_names = list(self.pools)
        self.tree = QuotaTree(
            snapshot.cohorts,
            snapshot.members,
            pool_names,
            {name: pool.default_borrowing_limit for name, pool in self.pools.items()},
        )
        capacity = {name: idx.capacity for name, idx in self.index.items()}
        self.fair = FairShare(
            snapshot.members,
            capacity,
            self.config.history_weight,
            self.config.fair_share_half_life,
            use_history=self.config.policy == "nuri",
        )
        self.running_jobs = snapshot.running
        self._running: dict[str, list[RunningRecord]] | None = None
        used: dict[tuple[str, str], int] = {}
        for job in snapshot.running:
            assignments = job.assignments
            gpus = assignments[0][1] if len(assignments) == 1 else sum(g for _, g in assignments)
            key = (job.member, job.pool)
            used[key] = used.get(key, 0) + gpus
        for (who, pool), gpus in sorted(used.items()):
            if who in self.tree.member_index:
                self.tree.add_usage(who, pool, gpus)
                self.fair.add(who, pool, gpus)
        running_by_member: dict[str, list[RunningWorkload]] = {}
        if any(m.budget is not None for m in self.members.values()):
            for job in snapshot.running:
                running_by_member.setdefault(job.member, []).append(job)
        # Budget headroom only for members with a budget; others are unlimited. A job is
        # charged only what it may burn before the period ends: ``window`` seconds.
        self.headroom: dict[str, float] = {}
        self.budget_window: dict[str, float] = {}
        # The headroom's parts at the start of the cycle, for what the reasons say.
        self.budget_left: dict[str, BudgetLeft] = {}
        for member in self.members.values():
            if member.budget is not None:
                budget = member.budget
                found = budget_left(budget, running_by_member.get(member.name, []), now)
                self.budget_left[member.name] = found
                self.headroom[member.name] = found.left_gpu_hours
                self.budget_window[member.name] = max(0.0, budget.period_end - now)
        self.reservations: dict[str, ReservationState] = {}
        # Jobs admitted (or promised a preemption) this cycle: (end, placement) per pool, so
        # backfill timelines and ETAs see when they release their GPUs.
        self.admitted_ends: dict[str, list[tuple[float, Placement]]] = {p: [] for p in self.pools}
        # The same jobs as (end, job id, member, GPUs): when their quota usage frees (ETAs).
        self.admitted_usage: dict[str, list[tuple[float, str, str, int]]] = {
            p: [] for p in self.pools
        }
        self.preemption_attempts = 0
        # Per pool, the running jobs that may be victims, cheapest first (built lazily).
        self.victims: dict[str, list[RunningRecord]] = {}
        self.victim_floors: dict[str, VictimFloor] = {}

    def label(self, member: str) -> str:
        """How messages name a member: its label (the control plane's member name), else
        its id."""
        found = self.members.get(member)
        return (found.label or found.name) if found is not None else member

    def pool_default(self, member: str, pool: str) -> tuple[bool, int | None]:
        """(True, the pool's default borrowing limit) when the member has no quota of its
        own in the pool, so the default is what applies to it; (False, None) otherwise."""
        found = self.members.get(member)
        spec = self.pools.get(pool)
        if found is None or spec is None or pool in found.quotas:
            return False, None
        return True, spec.default_borrowing_limit

    def running(self, pool: str) -> list[RunningRecord]:
        """Running workloads of ``pool`` as records (built on first use: many cycles never
        need them -- only preemption, backfill timelines and ETAs do)."""
        if self._running is None:
            self._running = self._records()
        return self._running[pool]

    def _records(self) -> dict[str, list[RunningRecord]]:
        records: dict[str, list[RunningRecord]] = {p: [] for p in self.pools}
        rank = {c.name: (c.value, c.preemptible) for c in self.classes.values()}
        positions = {name: index.position for name, index in self.index.items()}
        now = self.now
        # Input order does not matter: every later use sorts or breaks ties on ids.
        for job in self.running_jobs:
            position = positions.get(job.pool)
            if position is None:
                continue
            placement = [(position[n], g) for n, g in job.assignments if n in position]
            value, preemptible = rank.get(job.priority_class, (0, True))
            end = job.preempting_until
            if end is None:
                end = max(now, job.started_at + job.max_runtime)
            gpus = sum(g for _, g in placement)
            records[job.pool].append(RunningRecord(job, placement, value, preemptible, end, gpus))
        return records


def _name(obj: Pool | Member) -> str:
    return obj.name
