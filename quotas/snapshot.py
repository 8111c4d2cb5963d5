"""The engine's input: an immutable snapshot of the cluster, the quota tree and the queue.

The control plane builds one :class:`Snapshot` per scheduling cycle from its database rows and
calls ``quotas.admit(snapshot, now)``. Every type here is a plain frozen dataclass; ids are
``str``; time is ``float`` seconds since the epoch (``now``, ``submitted_at``, ``started_at``
...) and durations are ``float`` seconds (``max_runtime``, ``grace_period`` ...).

Shape of the data (one row type per class):

* :class:`Pool` -- a resource flavor at a site (GPU model, GPUs per node, region), and what
  a member without a quota row there may borrow (``default_borrowing_limit``).
* :class:`Node` -- a machine in a pool, inside one interconnect ``domain`` (NVLink island or
  rack), with ``total_gpus`` and the ``free_gpus`` the control plane sees right now.
* :class:`Cohort` / :class:`Member` -- the quota tree: consortium cohort -> optional
  sub-cohort -> member. Each member (and optionally each cohort) has a per-pool
  :class:`Quota`: ``nominal`` GPUs (guaranteed), ``borrowing_limit`` (how far above nominal it
  may go, ``None`` = unlimited) and ``lending_limit`` (how much of its nominal others may use,
  ``None`` = all of it).
* :class:`Budget` -- GPU-hours for the current period and what was used so far.
* :class:`PriorityClass` -- a named priority value, preemptible or not.
* :class:`RunningWorkload` -- an admitted job and where it runs.
* :class:`PendingWorkload` -- a queued job: GPUs, shape, allowed pools (already filtered by
  residency), priority class, submit time, declared max runtime.
* :class:`EngineConfig` -- the policy knobs (grace period, minimum runtime, fair-share
  half-life ...), part of the snapshot because admins change them at run time.

A member's usage of a pool is not an input: it is the sum of its running workloads'
assignments, so usage and placement can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["nuri", "fifo", "drf"]
POLICIES: tuple[Policy, ...] = ("nuri", "fifo", "drf")


class SnapshotError(ValueError):
    """A structurally invalid snapshot (unknown pool of a node, cycle in the cohort tree ...).

    ``code`` is stable so the control plane can map it without parsing the message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Pool:
    """A resource flavor at a site: one GPU model and node size.

    ``default_borrowing_limit`` is what a member with no :class:`Quota` of its own in this
    pool may hold there: it is treated as ``Quota(nominal=0, borrowing_limit=N)``, so ``0``
    keeps such members out of the pool and ``N`` lets them borrow up to N GPUs of what
    others leave idle. ``None`` is unlimited borrowing (the cohort's idle GPUs are the only
    bound), which is what the control plane passes only for a pool an admin set so.
    """

    name: str
    gpu_model: str
    gpus_per_node: int
    gpu_memory_gb: float = 0.0
    region: str = ""
    domain_label: str = "NVLink domain"  # how explanations name this pool's domains
    default_borrowing_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """A machine of a pool inside one interconnect domain."""

    name: str
    pool: str
    domain: str
    total_gpus: int
    free_gpus: int
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Quota:
    """Per-pool quota of a member or cohort, in GPUs."""

    nominal: int
    borrowing_limit: int | None = None
    lending_limit: int | None = None


@dataclass(frozen=True, slots=True)
class Cohort:
    """An inner node of the quota tree; ``parent`` None marks the root (the consortium).

    ``quotas`` may carry the cohort's own nominal GPUs and the limits on what the whole
    sub-cohort borrows from / lends to its parent.
    """

    name: str
    parent: str | None = None
    quotas: Mapping[str, Quota] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Budget:
    """GPU-hours a member may use in the current period, and what it used so far."""

    period_start: float
    period_end: float
    limit_gpu_hours: float
    used_gpu_hours: float = 0.0


@dataclass(frozen=True, slots=True)
class Member:
    """A consortium member: a leaf of the quota tree.

    ``weight`` is its fair-share entitlement; ``None`` means "its share of all nominal quota".
    ``decayed_usage_gpu_seconds`` is its historical usage decayed with the configured
    half-life up to ``now`` (see :func:`quotas.fair_share.decay_usage`).
    """

    name: str
    cohort: str
    quotas: Mapping[str, Quota] = field(default_factory=dict)
    weight: float | None = None
    budget: Budget | None = None
    decayed_usage_gpu_seconds: float = 0.0
    label: str = ""  # how messages name the member ('' = its ``name``)


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A named priority; higher ``value`` wins. Non-preemptible work runs only in nominal."""

    name: str
    value: int
    preemptible: bool = True


@dataclass(frozen=True, slots=True)
class RunningWorkload:
    """An admitted job. ``assignments`` is ((node name, GPUs), ...).

    ``preempting_until`` is set while the job is in its grace period after a preemption
    notice: its GPUs are still busy but already promised to whoever caused the preemption.
    """

    job_id: str
    member: str
    pool: str
    priority_class: str
    assignments: tuple[tuple[str, int], ...]
    started_at: float
    max_runtime: float
    last_checkpoint_at: float | None = None
    times_preempted: int = 0
    preempting_until: float | None = None

    @property
    def gpus(self) -> int:
        """GPUs held on all nodes together."""
        return sum(g for _, g in self.assignments)


@dataclass(frozen=True, slots=True)
class PendingWorkload:
    """A queued job.

    ``nodes`` None lets the engine pick the shape per pool: one node when ``gpus`` fits on a
    node, otherwise ``gpus / gpus_per_node`` whole nodes. ``nodes`` > 1 always means whole
    nodes. ``same_domain`` asks for all nodes inside one interconnect domain.
    ``allowed_pools`` is in preference order and already filtered by residency.
    """

    job_id: str
    member: str
    gpus: int
    priority_class: str
    submitted_at: float
    max_runtime: float
    allowed_pools: tuple[str, ...]
    nodes: int | None = None
    same_domain: bool = False
    times_preempted: int = 0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Policy knobs of one cycle (all durations in seconds).

    * ``policy``: ``nuri`` (everything in ARCHITECTURE section 4), or the baselines ``fifo``
      (one queue in submit order, head-of-line blocking per pool, no quotas) and ``drf``
      (weighted dominant-resource fairness on current usage, work-conserving, no quotas).
    * ``grace_period``: time a preempted job gets to checkpoint before its GPUs are taken.
    * ``min_runtime``: a job is never preempted before it ran this long.
    * ``max_preemptions``: a job preempted this many times is no longer a victim.
    * ``fair_share_half_life`` / ``history_weight``: fair share mixes current dominant share
      with decayed historical usage, ``history_weight`` in [0, 1].
    * ``backfill``: reserve capacity for the first blocked job of each pool and let others
      jump ahead only when they cannot delay it.
    * ``explain``: build reasons, positions and ETAs for pending jobs (the simulator turns
      it off; ``Decisions.pending`` is then empty).
    * ``max_preemption_attempts``: victim searches per cycle, bounding the cost of a cycle.
    """

    policy: Policy = "nuri"
    grace_period: float = 120.0
    min_runtime: float = 600.0
    max_preemptions: int = 3
    fair_share_half_life: float = 7 * 86400.0
    history_weight: float = 0.5
    backfill: bool = True
    explain: bool = True
    max_preemption_attempts: int = 16


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one cycle needs. Order of the tuples does not matter: the engine sorts."""

    pools: tuple[Pool, ...]
    nodes: tuple[Node, ...]
    cohorts: tuple[Cohort, ...]
    members: tuple[Member, ...]
    priority_classes: tuple[PriorityClass, ...]
    running: tuple[RunningWorkload, ...] = ()
    pending: tuple[PendingWorkload, ...] = ()
    config: EngineConfig = EngineConfig()


def validate(snapshot: Snapshot) -> None:
    """Raise :class:`SnapshotError` when the snapshot's structure is inconsistent.

    Jobs that reference unknown pools, members or classes are not errors here: the engine
    keeps them pending with reason ``invalid_request`` so one bad row cannot stop a cycle.
    """
    pools = {p.name for p in snapshot.pools}
    if len(pools) != len(snapshot.pools):
        raise SnapshotError("invalid_snapshot", "duplicate pool names")
    for pool in snapshot.pools:
        if pool.gpus_per_node <= 0:
            raise SnapshotError("invalid_snapshot", f"pool {pool.name}: gpus_per_node <= 0")
        if pool.default_borrowing_limit is not None and pool.default_borrowing_limit < 0:
            raise SnapshotError(
                "invalid_snapshot", f"pool {pool.name}: negative default borrowing limit"
            )
    names: set[str] = set()
    for node in snapshot.nodes:
        if node.pool not in pools:
            raise SnapshotError("invalid_snapshot", f"node {node.name}: unknown pool {node.pool}")
        if node.name in names:
            raise SnapshotError("invalid_snapshot", f"duplicate node {node.name}")
        names.add(node.name)
        if not 0 <= node.free_gpus <= node.total_gpus:
            raise SnapshotError(
                "invalid_snapshot",
                f"node {node.name}: free_gpus {node.free_gpus} outside 0..{node.total_gpus}",
            )
    cohorts = {c.name: c for c in snapshot.cohorts}
    for cohort in snapshot.cohorts:
        seen = {cohort.name}
        parent = cohort.parent
        while parent is not None:
            if parent not in cohorts:
                raise SnapshotError(
                    "invalid_snapshot", f"cohort {cohort.name}: unknown parent {parent}"
                )
            if parent in seen:
                raise SnapshotError("invalid_snapshot", f"cycle in cohort tree at {parent}")
            seen.add(parent)
            parent = cohorts[parent].parent
    for member in snapshot.members:
        if member.cohort and member.cohort not in cohorts:
            raise SnapshotError(
                "invalid_snapshot", f"member {member.name}: unknown cohort {member.cohort}"
            )
        for pool_name, quota in member.quotas.items():
            if pool_name not in pools:
                raise SnapshotError(
                    "invalid_snapshot", f"member {member.name}: quota for unknown pool {pool_name}"
                )
            if quota.nominal < 0:
                raise SnapshotError("invalid_snapshot", f"member {member.name}: negative nominal")
