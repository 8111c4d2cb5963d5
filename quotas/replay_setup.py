"""The cluster a trace replays on: capacity per pool and members' quotas.

Capacity (the ITP traces do not say how big each cluster was): a pool gets enough
``gpus_per_node``-GPU nodes to run its trace at ``target_load`` (default 0.8) on average,
``nodes = ceil(gpu_hours / span_hours / target_load / gpus_per_node)``, and never fewer than
the largest job needs; then ``capacity_scale`` multiplies the node count (rounded up).
Nodes are grouped into interconnect domains of ``nodes_per_domain``.

Quotas, unless a mapping (e.g. loaded from YAML) says otherwise: each member's nominal quota
in a pool is the pool's capacity split in proportion to the member's GPU-hour demand in that
pool's trace (largest remainder, so nominal quotas add up to capacity exactly); borrowing and
lending are unlimited. A mapping looks like::

    members:
      telco-1: {share: 0.3, borrowing_limit: 64, weight: 2.0}
      univ-1:  {nominal: {cluster04: 96}, lending_limit: 32, budget_gpu_hours: 50000}

``share`` is a fraction of every pool's capacity; ``nominal`` gives GPUs per pool (and wins
over ``share``); members the mapping does not name get what is left of each pool, in
proportion to demand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from quotas.snapshot import Budget, Cohort, Member, Node, Pool, Quota
from quotas.traces import TraceError, TraceJob


@dataclass(frozen=True, slots=True)
class MemberPlan:
    """What a quota mapping says about one member."""

    name: str
    share: float | None = None
    nominal: Mapping[str, int] = field(default_factory=dict)
    borrowing_limit: int | None = None
    lending_limit: int | None = None
    weight: float | None = None
    budget_gpu_hours: float | None = None


@dataclass(frozen=True, slots=True)
class ReplayCluster:
    """Pools, nodes and the quota tree one replay runs on."""

    pools: tuple[Pool, ...]
    nodes: tuple[Node, ...]
    cohorts: tuple[Cohort, ...]
    members: tuple[Member, ...]

    def capacity(self, pool: str) -> int:
        """GPUs in the pool."""
        return sum(n.total_gpus for n in self.nodes if n.pool == pool)


def node_gpus(gpus: int, gpus_per_node: int) -> int:
    """GPUs a request takes: requests above one node round up to whole nodes."""
    if gpus <= gpus_per_node:
        return gpus
    return math.ceil(gpus / gpus_per_node) * gpus_per_node


def derive_nodes(
    jobs: Iterable[TraceJob], gpus_per_node: int, target_load: float, scale: float
) -> dict[str, int]:
    """Nodes per pool (see the module docstring)."""
    hours: dict[str, float] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    largest: dict[str, int] = {}
    for job in jobs:
        p = job.pool
        gpus = node_gpus(job.gpus, gpus_per_node)
        hours[p] = hours.get(p, 0.0) + gpus * job.duration / 3600.0
        first[p] = min(first.get(p, job.submit_time), job.submit_time)
        last[p] = max(last.get(p, 0.0), job.submit_time + job.duration)
        largest[p] = max(largest.get(p, 0), gpus)
    nodes = {}
    for p in sorted(hours):
        span_h = max(1.0, (last[p] - first[p]) / 3600.0)
        need = math.ceil(hours[p] / span_h / target_load / gpus_per_node)
        base = max(need, math.ceil(largest[p] / gpus_per_node), 1)
        nodes[p] = max(1, math.ceil(base * scale))
    return nodes


def split_by_demand(demand: Mapping[str, float], gpus: int) -> dict[str, int]:
    """Split ``gpus`` in proportion to ``demand`` (largest remainder; sums to ``gpus``)."""
    total = sum(demand.values())
    names = sorted(demand)
    if total <= 0 or not names:
        return dict.fromkeys(names, 0)
    exact = {n: gpus * demand[n] / total for n in names}
    result = {n: math.floor(v) for n, v in exact.items()}
    left = gpus - sum(result.values())
    for n in sorted(names, key=lambda n: (-(exact[n] - result[n]), n))[:left]:
        result[n] += 1
    return result


def parse_quota_mapping(data: object) -> list[MemberPlan]:
    """Validate a quota mapping (already loaded from YAML/JSON) into member plans."""
    if not isinstance(data, Mapping) or not isinstance(data.get("members"), Mapping):
        raise TraceError("bad_format", "quota file needs a 'members' mapping")
    plans = []
    for name, spec in data["members"].items():
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise TraceError("bad_format", f"member {name}: expected a mapping")
        unknown = set(spec) - {
            "share",
            "nominal",
            "borrowing_limit",
            "lending_limit",
            "weight",
            "budget_gpu_hours",
        }
        if unknown:
            raise TraceError("bad_format", f"member {name}: unknown keys {sorted(unknown)}")
        try:
            nominal = {str(p): int(v) for p, v in (spec.get("nominal") or {}).items()}
            plans.append(
                MemberPlan(
                    str(name),
                    _opt_float(spec.get("share")),
                    nominal,
                    _opt_int(spec.get("borrowing_limit")),
                    _opt_int(spec.get("lending_limit")),
                    _opt_float(spec.get("weight")),
                    _opt_float(spec.get("budget_gpu_hours")),
                )
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise TraceError("bad_value", f"member {name}: {exc}") from exc
    return plans


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _opt_float(value: object) -> float | None:
    return None if value is None else float(str(value))


def build_cluster(
    jobs: list[TraceJob],
    gpus_per_node: int = 8,
    nodes_per_domain: int = 16,
    target_load: float = 0.8,
    capacity_scale: float = 1.0,
    plans: list[MemberPlan] | None = None,
    gpu_model: str = "GPU",
) -> ReplayCluster:
    """Pools, nodes and quotas for replaying ``jobs`` (see the module docstring)."""
    node_counts = derive_nodes(jobs, gpus_per_node, target_load, capacity_scale)
    pools = tuple(Pool(p, gpu_model, gpus_per_node) for p in node_counts)
    nodes = tuple(
        Node(f"{p}-n{i:04d}", p, f"{p}-d{i // nodes_per_domain:03d}", gpus_per_node, gpus_per_node)
        for p, count in node_counts.items()
        for i in range(count)
    )
    demand: dict[str, dict[str, float]] = {p: {} for p in node_counts}
    for job in jobs:
        per_pool = demand[job.pool]
        gpus = node_gpus(job.gpus, gpus_per_node)
        per_pool[job.tenant] = per_pool.get(job.tenant, 0.0) + gpus * job.duration
    by_name = {plan.name: plan for plan in plans or []}
    tenants = sorted({j.tenant for j in jobs} | set(by_name))
    nominal: dict[str, dict[str, int]] = {t: {} for t in tenants}
    for pool, count in node_counts.items():
        capacity = count * gpus_per_node
        fixed: dict[str, int] = {}
        for name, plan in by_name.items():
            if pool in plan.nominal:
                fixed[name] = plan.nominal[pool]
            elif plan.share is not None:
                fixed[name] = int(capacity * plan.share)
        rest = max(0, capacity - sum(fixed.values()))
        others = {t: demand[pool].get(t, 0.0) for t in tenants if t not in fixed}
        split = split_by_demand(others, rest)
        for t in tenants:
            nominal[t][pool] = fixed.get(t, split.get(t, 0))
    members = []
    for t in tenants:
        plan = by_name.get(t, MemberPlan(t))
        quotas = {
            p: Quota(nominal[t][p], plan.borrowing_limit, plan.lending_limit) for p in node_counts
        }
        budget = (
            Budget(0.0, math.inf, plan.budget_gpu_hours, 0.0)
            if plan.budget_gpu_hours is not None
            else None
        )
        members.append(Member(t, "consortium", quotas, plan.weight, budget))
    return ReplayCluster(pools, nodes, (Cohort("consortium"),), tuple(members))
