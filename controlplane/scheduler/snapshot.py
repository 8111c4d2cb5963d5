"""Phase 2 of the cycle: read the database and the live inventory into a quotas.Snapshot."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Row, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

import quotas
from controlplane import residency
from controlplane.db.models import (
    Budget,
    Job,
    Member,
    Node,
    NodeStatus,
    Pool,
    PriorityClass,
    Quota,
    UsageRecord,
)
from controlplane.jobstate import JobStatus
from controlplane.k8s.core import PoolFacts, location_contradicts
from controlplane.usage import running_gpu_seconds
from quotas.budgets import BudgetLeft, budget_left

COHORT = "consortium"
# Usage older than this many fair-share half-lives is not read (weight < 2^-20).
HISTORY_HALF_LIVES = 20
# Jobs whose GPUs are held: everything between admission and teardown.
HOLDING = (JobStatus.ADMITTED.value, JobStatus.RUNNING.value, JobStatus.PREEMPTING.value)


def held_assignments(session: Session) -> list[Job]:
    """Jobs that hold GPUs: live ones, and finished ones whose Ray side is not torn down yet.

    ``assignment`` is cleared only when the scheduler has removed the placement group, so it
    is the single marker of "these GPUs are taken", whatever the status says.
    """
    return list(session.exec(select(Job).where(func.json_array_length(Job.assignment) > 0)).all())


def _usage_rows(
    session: Session, now: datetime, budgets: Iterable[Budget], half_life: float
) -> Sequence[Row[str, datetime, datetime | None, int, float]]:
    """The usage records a cycle needs, as plain rows: still open, started in a current
    budget period, or ended within ``HISTORY_HALF_LIVES`` fair-share half-lives (older work
    weighs less than 2^-20 of its GPU-seconds). The table grows with every job attempt and
    month; what a cycle reads does not."""
    wanted: list[ColumnElement[bool]] = [col(UsageRecord.ended_at).is_(None)]
    starts = [b.starts_at for b in budgets]
    if starts:
        wanted.append(col(UsageRecord.started_at) >= min(starts))
    if half_life > 0:
        horizon = now - timedelta(seconds=half_life * HISTORY_HALF_LIVES)
        wanted.append(col(UsageRecord.ended_at) >= horizon)
    query = sa_select(
        col(UsageRecord.member_id),
        col(UsageRecord.started_at),
        col(UsageRecord.ended_at),
        col(UsageRecord.gpus),
        col(UsageRecord.gpu_seconds),
    ).where(or_(*wanted))
    return session.connection().execute(query).all()


# A job that opted into preemption in a class that is not preemptible (a burst replica of an
# endpoint, ``JobCreate.preemptible``) keeps its class's priority but is preemptible: the
# engine reads preemptibility from the class, so it gets this twin of its class.
OPTED_IN = "+preemptible"


def class_of(job: Job, classes: dict[str, PriorityClass]) -> str:
    """The engine's priority class for ``job`` (see :data:`OPTED_IN`)."""
    pc = classes.get(job.priority_class)
    if job.preemptible and pc is not None and not pc.preemptible:
        return job.priority_class + OPTED_IN
    return job.priority_class


def running_workload(job: Job, priority_class: str) -> quotas.RunningWorkload:
    """The engine's view of a job that holds GPUs."""
    started = job.started_at or job.admitted_at or job.created_at
    return quotas.RunningWorkload(
        job_id=job.id,
        member=job.member_id,
        pool=job.pool or "",
        priority_class=priority_class,
        assignments=tuple((str(n), int(g)) for n, g in job.assignment),
        started_at=started.timestamp(),
        max_runtime=float(job.max_runtime_s),
        last_checkpoint_at=(job.last_checkpoint_at.timestamp() if job.last_checkpoint_at else None),
        times_preempted=job.times_preempted,
        preempting_until=(job.preempt_deadline.timestamp() if job.preempt_deadline else None),
    )


def current_budgets(now: datetime) -> SelectOfScalar[Budget]:
    """Budgets whose period is under way, in a fixed order: where a member has two (a quarter
    and a month), the last one is the one the engine and the pages both use."""
    return (
        select(Budget)
        .where(col(Budget.starts_at) <= now, col(Budget.ends_at) > now)
        .order_by(col(Budget.starts_at), col(Budget.id))
    )


def budgets_left(
    session: Session, member_ids: Iterable[str] | None, now: datetime
) -> dict[str, tuple[Budget, BudgetLeft]]:
    """Each member's budget of the period under way and what is left of it, computed as the
    admission engine does (``quotas.budgets.budget_left``: used so far, and reserved by
    running jobs up to their max runtime): the usage page and the job page show these
    numbers, and a job waiting with ``budget_exhausted`` was refused on the same ones.
    ``member_ids`` None: every member's."""
    query = current_budgets(now)
    if member_ids is not None:
        query = query.where(col(Budget.member_id).in_(list(member_ids)))
    budgets = {b.member_id: b for b in session.exec(query).all()}
    if not budgets:
        return {}
    members = list(budgets)
    records = session.exec(
        select(UsageRecord).where(
            col(UsageRecord.member_id).in_(members),
            col(UsageRecord.started_at) >= min(b.starts_at for b in budgets.values()),
        )
    ).all()
    seconds: dict[str, float] = defaultdict(float)
    for rec in records:
        b = budgets[rec.member_id]
        if b.starts_at <= rec.started_at < b.ends_at:
            seconds[rec.member_id] += running_gpu_seconds(rec, now)
    running: dict[str, list[quotas.RunningWorkload]] = defaultdict(list)
    holding = select(Job).where(col(Job.status).in_(HOLDING), col(Job.member_id).in_(members))
    for job in session.exec(holding).all():
        if job.pool and job.assignment:
            running[job.member_id].append(running_workload(job, job.priority_class))
    return {
        member_id: (
            b,
            budget_left(
                quotas.Budget(
                    period_start=b.starts_at.timestamp(),
                    period_end=b.ends_at.timestamp(),
                    limit_gpu_hours=b.gpu_hours,
                    used_gpu_hours=seconds[member_id] / 3600.0,
                ),
                running[member_id],
                now.timestamp(),
            ),
        )
        for member_id, b in budgets.items()
    }


def build(
    session: Session, alive_nodes: set[str], now: datetime, config: quotas.EngineConfig
) -> quotas.Snapshot:
    residency.sync(session)
    pools = {p.id: p for p in session.exec(select(Pool)).all()}
    pool_by_name = {p.name: p for p in pools.values()}
    nodes = session.exec(select(Node)).all()

    classes = {pc.name: pc for pc in session.exec(select(PriorityClass)).all()}
    used: dict[str, int] = defaultdict(int)
    running: list[quotas.RunningWorkload] = []
    holders = held_assignments(session)
    members = {m.id: m for m in session.exec(select(Member)).all()}
    for job in holders:
        for node_name, gpus in job.assignment:
            used[str(node_name)] += int(gpus)
        if job.status in HOLDING and job.pool:
            running.append(running_workload(job, class_of(job, classes)))

    snap_nodes = []
    for n in nodes:
        pool = pools.get(n.pool_id)
        if pool is None:
            continue
        # A quarantined node, or one whose observed location (Kubernetes inventory) is outside
        # its pool, is left out of placement altogether (not only zero free GPUs): preempting
        # its jobs must not make room for new work there either.
        alive = (
            n.name in alive_nodes
            and n.status not in (NodeStatus.DOWN.value, NodeStatus.QUARANTINED.value)
            and not location_contradicts(
                n.observed,
                pool.name,
                PoolFacts(pool.name, pool.region, pool.jurisdiction, pool.gpus_per_node),
            )
        )
        free = max(0, n.gpus - used[n.name])
        if n.status == NodeStatus.CORDONED.value:
            free = 0  # running work stays, nothing new lands
        snap_nodes.append(
            quotas.Node(
                name=n.name,
                pool=pool.name,
                domain=n.domain,
                total_gpus=n.gpus,
                free_gpus=free if alive else 0,
                alive=alive,
            )
        )

    quotas_by_member: dict[str, dict[str, quotas.Quota]] = defaultdict(dict)
    for q in session.exec(select(Quota)).all():
        if q.pool_id in pools:
            quotas_by_member[q.member_id][pools[q.pool_id].name] = quotas.Quota(
                nominal=q.nominal_gpus,
                borrowing_limit=q.borrowing_limit,
                lending_limit=q.lending_limit,
            )

    budgets = {b.member_id: b for b in session.exec(current_budgets(now)).all()}
    usage: dict[str, float] = defaultdict(float)
    decayed: dict[str, float] = defaultdict(float)
    half_life = config.fair_share_half_life
    for member_id, started_at, ended_at, gpus, gpu_seconds in _usage_rows(
        session, now, budgets.values(), half_life
    ):
        if ended_at is None:
            seconds = max(0.0, (now - started_at).total_seconds()) * gpus
        else:
            seconds = gpu_seconds
        b = budgets.get(member_id)
        if b is not None and b.starts_at <= started_at < b.ends_at:
            usage[member_id] += seconds
        age = (now - (ended_at or now)).total_seconds()
        decayed[member_id] += seconds * 0.5 ** (age / half_life) if half_life > 0 else 0

    snap_members = []
    for m in members.values():
        if not m.active:
            continue
        b = budgets.get(m.id)
        budget = (
            quotas.Budget(
                period_start=b.starts_at.timestamp(),
                period_end=b.ends_at.timestamp(),
                limit_gpu_hours=b.gpu_hours,
                used_gpu_hours=usage[m.id] / 3600.0,
            )
            if b
            else None
        )
        snap_members.append(
            quotas.Member(
                name=m.id,
                label=m.name,
                cohort=COHORT,
                quotas=dict(quotas_by_member[m.id]),
                budget=budget,
                decayed_usage_gpu_seconds=decayed[m.id],
            )
        )

    all_pools = tuple(sorted(pool_by_name))
    queued = session.exec(select(Job).where(Job.status == JobStatus.QUEUED.value)).all()
    # Residency filters each job's pools here, every cycle: labels may have changed.
    permitted = residency.allowed_pools_by_job(session, queued) if queued else {}
    pending = [
        quotas.PendingWorkload(
            job_id=j.id,
            member=j.member_id,
            gpus=j.gpus,
            priority_class=class_of(j, classes),
            submitted_at=j.created_at.timestamp(),
            max_runtime=float(j.max_runtime_s),
            allowed_pools=tuple(
                p for p in (tuple(j.allowed_pools) or all_pools) if p in permitted.get(j.id, ())
            ),
            nodes=j.nodes if j.nodes > 1 else None,
            same_domain=j.same_domain,
            times_preempted=j.times_preempted,
        )
        for j in queued
    ]
    return quotas.Snapshot(
        pools=tuple(
            quotas.Pool(
                name=p.name,
                gpu_model=p.gpu_model,
                gpus_per_node=p.gpus_per_node,
                gpu_memory_gb=float(p.gpu_memory_gib),
                region=p.region,
                default_borrowing_limit=p.default_borrowing_limit,
            )
            for p in pools.values()
        ),
        nodes=tuple(snap_nodes),
        cohorts=(quotas.Cohort(name=COHORT),),
        members=tuple(snap_members),
        priority_classes=tuple(
            quotas.PriorityClass(name=name, value=pc.value, preemptible=preemptible)
            for pc in classes.values()
            for name, preemptible in (
                ((pc.name, True),)
                if pc.preemptible
                else ((pc.name, False), (pc.name + OPTED_IN, True))
            )
        ),
        running=tuple(running),
        pending=tuple(pending),
        config=config,
    )
