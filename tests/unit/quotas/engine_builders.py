"""Builders for engine tests, Kueue-style: ``make_job("a", member="m1").gpus(8).obj()``.

A :class:`ClusterBuilder` owns pools, nodes, the quota tree and the workloads, and computes
each node's free GPUs from the running workloads' assignments, so tests cannot build a
snapshot whose usage and placement disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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
)

CLASSES = (
    PriorityClass("production-inference", 1000, preemptible=False),
    PriorityClass("training", 100),
    PriorityClass("research", 50),
    PriorityClass("best-effort", 0),
)


class JobBuilder:
    """Builds a :class:`PendingWorkload`."""

    def __init__(self, job_id: str, member: str):
        self._job = PendingWorkload(
            job_id=job_id,
            member=member,
            gpus=1,
            priority_class="training",
            submitted_at=0.0,
            max_runtime=3600.0,
            allowed_pools=("h200",),
        )

    def gpus(self, gpus: int) -> JobBuilder:
        self._job = replace(self._job, gpus=gpus)
        return self

    def nodes(self, nodes: int) -> JobBuilder:
        self._job = replace(self._job, nodes=nodes)
        return self

    def same_domain(self) -> JobBuilder:
        self._job = replace(self._job, same_domain=True)
        return self

    def priority(self, name: str) -> JobBuilder:
        self._job = replace(self._job, priority_class=name)
        return self

    def submitted(self, at: float) -> JobBuilder:
        self._job = replace(self._job, submitted_at=at)
        return self

    def runtime(self, seconds: float) -> JobBuilder:
        self._job = replace(self._job, max_runtime=seconds)
        return self

    def pools(self, *pools: str) -> JobBuilder:
        self._job = replace(self._job, allowed_pools=tuple(pools))
        return self

    def obj(self) -> PendingWorkload:
        return self._job


def make_job(job_id: str, member: str = "m1") -> JobBuilder:
    return JobBuilder(job_id, member)


class RunningBuilder:
    """Builds a :class:`RunningWorkload`."""

    def __init__(self, job_id: str, member: str):
        self._job = RunningWorkload(
            job_id=job_id,
            member=member,
            pool="h200",
            priority_class="training",
            assignments=(),
            started_at=0.0,
            max_runtime=3600.0,
        )

    def on(self, node: str, gpus: int) -> RunningBuilder:
        pool = node.rsplit("-", 1)[0]
        self._job = replace(
            self._job, pool=pool, assignments=(*self._job.assignments, (node, gpus))
        )
        return self

    def priority(self, name: str) -> RunningBuilder:
        self._job = replace(self._job, priority_class=name)
        return self

    def started(self, at: float) -> RunningBuilder:
        self._job = replace(self._job, started_at=at)
        return self

    def runtime(self, seconds: float) -> RunningBuilder:
        self._job = replace(self._job, max_runtime=seconds)
        return self

    def checkpoint(self, at: float) -> RunningBuilder:
        self._job = replace(self._job, last_checkpoint_at=at)
        return self

    def preempted(self, times: int) -> RunningBuilder:
        self._job = replace(self._job, times_preempted=times)
        return self

    def leaving(self, until: float) -> RunningBuilder:
        self._job = replace(self._job, preempting_until=until)
        return self

    def obj(self) -> RunningWorkload:
        return self._job


def make_running(job_id: str, member: str = "m1") -> RunningBuilder:
    return RunningBuilder(job_id, member)


class ClusterBuilder:
    """Builds a whole :class:`Snapshot`. Node names are ``<pool>-<i>``."""

    def __init__(self) -> None:
        self._pools: list[Pool] = []
        self._nodes: list[tuple[str, str, str, int, bool]] = []
        self._cohorts: list[Cohort] = [Cohort("consortium")]
        self._members: list[Member] = []
        self._running: list[RunningWorkload] = []
        self._pending: list[PendingWorkload] = []
        self._config = EngineConfig(min_runtime=0.0)

    def pool(
        self,
        name: str = "h200",
        nodes: int = 4,
        gpus_per_node: int = 8,
        nodes_per_domain: int = 1000,
        gpu_model: str = "H200",
        dead: Sequence[int] = (),
    ) -> ClusterBuilder:
        self._pools.append(Pool(name, gpu_model, gpus_per_node))
        for i in range(nodes):
            domain = f"{name}-d{i // nodes_per_domain}"
            self._nodes.append((f"{name}-{i}", name, domain, gpus_per_node, i not in dead))
        return self

    def cohort(
        self, name: str, parent: str | None = "consortium", **quotas: Quota
    ) -> ClusterBuilder:
        self._cohorts.append(Cohort(name, parent, dict(quotas)))
        return self

    def member(
        self,
        name: str,
        nominal: int = 0,
        borrowing_limit: int | None = None,
        lending_limit: int | None = None,
        pool: str = "h200",
        cohort: str = "consortium",
        budget: Budget | None = None,
        weight: float | None = None,
        history: float = 0.0,
        quotas: dict[str, Quota] | None = None,
    ) -> ClusterBuilder:
        q = quotas if quotas is not None else {pool: Quota(nominal, borrowing_limit, lending_limit)}
        self._members.append(Member(name, cohort, q, weight, budget, history))
        return self

    def running(self, *jobs: RunningWorkload | RunningBuilder) -> ClusterBuilder:
        for job in jobs:
            self._running.append(job.obj() if isinstance(job, RunningBuilder) else job)
        return self

    def pending(self, *jobs: PendingWorkload | JobBuilder) -> ClusterBuilder:
        for job in jobs:
            self._pending.append(job.obj() if isinstance(job, JobBuilder) else job)
        return self

    def config(self, **changes: object) -> ClusterBuilder:
        self._config = replace(self._config, **changes)  # type: ignore[arg-type]
        return self

    def obj(self) -> Snapshot:
        used: dict[str, int] = {}
        for job in self._running:
            for node, gpus in job.assignments:
                used[node] = used.get(node, 0) + gpus
        nodes = tuple(
            Node(name, pool, domain, total, total - used.get(name, 0), alive)
            for name, pool, domain, total, alive in self._nodes
        )
        return Snapshot(
            pools=tuple(self._pools),
            nodes=nodes,
            cohorts=tuple(self._cohorts),
            members=tuple(self._members),
            priority_classes=CLASSES,
            running=tuple(self._running),
            pending=tuple(self._pending),
            config=self._config,
        )


def cluster() -> ClusterBuilder:
    return ClusterBuilder()
