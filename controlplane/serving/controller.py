"""The endpoint controller: each endpoint's replica jobs, between its min and max.

Runs in the scheduler leader at the start of every cycle (database only, no Ray call), so
replicas are created, admitted and placed by the same cycle. Why not Ray Serve's own
autoscaler: every replica must be admitted against the member's quota like any workload, and
Serve's autoscaler cannot ask; so Nuri scales, and Serve runs what was admitted.

- **Demand** is the gateway's requests in flight for the endpoint: the open reservations of
  its token ledger (``TokenUsage`` rows not settled). A request waiting for a cold start holds
  one too, which is what wakes an endpoint scaled to zero.
- **Target**: ``ceil(demand / target_ongoing_requests)`` replicas, at least one while there is
  demand, within ``[min_replicas, max_replicas]``. Without demand the endpoint keeps what it
  has until it has been idle for ``idle_s`` (no request since), then falls back to
  ``min_replicas`` (zero: scale to zero).
- **Replicas** are jobs of kind ``serve`` filling slots ``0 .. target-1``: slots below
  ``min_replicas`` are guaranteed (the endpoint's priority class, not preemptible: admitted
  only inside nominal quota), the others are burst replicas (preemptible: they borrow and a job
  inside its quota reclaims them), created only once every guaranteed replica holds its GPUs
  and drained while one waits. A slot above the target is cancelled (its replica drains:
  the supervisor deletes its Serve application). A slot whose replica failed in the last
  ``RETRY_AFTER_S`` waits, so a replica that cannot start does not churn.
- A deleted endpoint's replicas are cancelled. Scaling decisions are audited
  (``endpoint.scale``); each replica job's creation is too (``endpoint.replica``), and its
  admission, placement and end are audited like any job's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from controlplane.audit import log as audit_log
from controlplane.db.models import Endpoint, EndpointState, Job, JobEvent, TokenUsage
from controlplane.db.types import new_id
from controlplane.jobstate import TERMINAL, JobStatus, transition
from controlplane.services import catalog
from controlplane.serving import metering
from controlplane.serving.endpoints import replica_index
from controlplane.serving.names import SERVE_KIND

log = logging.getLogger(__name__)

RETRY_AFTER_S = 15.0
# A replica's declared runtime: what admission charges against a budget and what backfill and
# ETAs assume. Replicas are not stopped when it passes (the scheduler skips the max-runtime
# check for them); the controller keeps them while the endpoint wants them.
REPLICA_LEASE_S = 3600
# Serve knobs copied from the endpoint's config into each replica job's config.
SERVE_KNOBS = ("max_context", "max_tokens_default", "max_ongoing_requests", "seed", "system_prompt")


@dataclass
class Report:
    """What one pass changed (for the cycle's log and tests)."""

    created: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    scaled: dict[str, tuple[int, int]] = field(default_factory=dict)  # endpoint -> (from, to)


def open_requests(session: Session, endpoint_ids: Sequence[str]) -> dict[str, int]:
    """Requests in flight per endpoint: the ledger's open reservations."""
    if not endpoint_ids:
        return {}
    rows = session.execute(
        select(col(TokenUsage.endpoint_id), func.count())
        .where(col(TokenUsage.endpoint_id).in_(list(endpoint_ids)))
        .where(col(TokenUsage.settled_at).is_(None))
        .group_by(col(TokenUsage.endpoint_id))
    ).all()
    return {str(e): int(n) for e, n in rows}


def target(endpoint: Endpoint, demand: int, now: datetime) -> int:
    """How many replicas ``endpoint`` should have (see the module docstring)."""
    if endpoint.state != EndpointState.ACTIVE.value:
        return 0
    cfg = endpoint.config or {}
    per = max(1, int(cfg.get("target_ongoing_requests", 4)))
    low, high = endpoint.min_replicas, endpoint.max_replicas
    if demand > 0:
        return min(high, max(low, 1, math.ceil(demand / per)))
    idle_s = float(cfg.get("idle_s", 300.0))
    last = endpoint.last_request_at
    if last is None or (now - last).total_seconds() >= idle_s:
        return low
    return min(high, max(low, endpoint.desired_replicas))


def reconcile(session: Session, now: datetime) -> Report:
    """One pass over every endpoint; commits its own changes."""
    # A dead gateway's open reservations are neither demand nor a charge: close them first.
    metering.settle_abandoned(session, now)
    report = Report()
    endpoints = session.exec(
        select(Endpoint).where(
            (col(Endpoint.state) == EndpointState.ACTIVE.value)
            | col(Endpoint.id).in_(
                select(Job.endpoint_id).where(
                    col(Job.endpoint_id).is_not(None),
                    col(Job.status).notin_([s.value for s in TERMINAL]),
                )
            )
        )
    ).all()
    if not endpoints:
        return report
    ids = [e.id for e in endpoints]
    demand = open_requests(session, ids)
    jobs = session.exec(
        select(Job).where(col(Job.endpoint_id).in_(ids), Job.kind == SERVE_KIND)
    ).all()
    by_endpoint: dict[str, list[Job]] = {i: [] for i in ids}
    for job in jobs:
        by_endpoint[str(job.endpoint_id)].append(job)
    for ep in endpoints:
        want = target(ep, demand.get(ep.id, 0), now)
        if ep.state == EndpointState.ACTIVE.value and want != ep.desired_replicas:
            report.scaled[ep.id] = (ep.desired_replicas, want)
            audit_log.record(
                session,
                None,
                "endpoint.scale",
                "endpoint",
                ep.id,
                stream=ep.member_id,
                now=now,
                details={
                    "name": ep.name,
                    "from": ep.desired_replicas,
                    "to": want,
                    "in_flight": demand.get(ep.id, 0),
                },
            )
            ep.desired_replicas = want
            session.add(ep)
        _slots(session, ep, want, by_endpoint[ep.id], now, report)
    session.commit()
    return report


def _slots(
    session: Session, ep: Endpoint, want: int, jobs: list[Job], now: datetime, report: Report
) -> None:
    live: dict[int, Job] = {}
    failed_at: dict[int, datetime] = {}
    for job in jobs:
        slot = replica_index(job)
        if JobStatus(job.status) in TERMINAL:
            if job.status == JobStatus.FAILED.value and job.finished_at is not None:
                failed_at[slot] = max(failed_at.get(slot, job.finished_at), job.finished_at)
            continue
        if slot in live or slot >= want:
            # Above the target (scaled down, endpoint deleted) or a duplicate: drain it.
            why = "scaled down" if ep.state == EndpointState.ACTIVE.value else "endpoint deleted"
            _drain(session, ep, slot, job, why, now, report)
            continue
        live[slot] = job
    # Burst replicas only beside guaranteed ones that hold their GPUs: a burst replica
    # admitted first would take the nominal quota a guaranteed one needs (both are the
    # member's), and the engine preempts borrowers for others, not a member for itself.
    guaranteed = min(want, ep.min_replicas)
    held = (JobStatus.ADMITTED.value, JobStatus.RUNNING.value)
    settled = all(slot in live and live[slot].status in held for slot in range(guaranteed))
    if not settled:
        for slot in sorted((s for s in live if s >= guaranteed), reverse=True):
            why = "a guaranteed replica waits for room"
            _drain(session, ep, slot, live.pop(slot), why, now, report)
    retry = timedelta(seconds=RETRY_AFTER_S)
    for slot in range(want if settled else guaranteed):
        if slot in live or (slot in failed_at and now - failed_at[slot] < retry):
            continue
        report.created.append(_create(session, ep, slot, now))


def _drain(
    session: Session, ep: Endpoint, slot: int, job: Job, why: str, now: datetime, report: Report
) -> None:
    """Cancel a replica's job: its supervisor deletes its Serve application (the gateway
    stops routing to it at once) and the scheduler releases its GPUs."""
    transition(
        session,
        job.id,
        expected=JobStatus(job.status),
        to=JobStatus.CANCELLED,
        now=now,
        message=f"replica {slot} of {ep.name}: {why}",
        reasons=[{"code": "cancelled", "message": why}],
    )
    report.cancelled.append(job.id)


def _create(session: Session, ep: Endpoint, slot: int, now: datetime) -> str:
    guaranteed = slot < ep.min_replicas
    class_preemptible = catalog.get(session).priority_classes.get(ep.priority_class, True)
    cfg = ep.config or {}
    config: dict[str, Any] = {k: cfg[k] for k in SERVE_KNOBS if k in cfg}
    config.update(replica=slot, adapters=dict(ep.adapters))
    job = Job(
        id=new_id("job"),
        member_id=ep.member_id,
        submitter_id=ep.creator_id,
        name=f"{ep.name}/replica-{slot}",
        kind=SERVE_KIND,
        model=ep.model,
        inputs=sorted(set(ep.adapters.values())),
        gpus=ep.gpus_per_replica,
        nodes=1,
        gpus_per_node=ep.gpus_per_replica,
        allowed_pools=list(ep.allowed_pools),
        preferred_pools=[],
        same_domain=True,
        priority_class=ep.priority_class,
        max_runtime_s=REPLICA_LEASE_S,
        preemptible=class_preemptible or not guaranteed,
        config=config,
        status=JobStatus.QUEUED.value,
        reasons=[{"code": "awaiting_scheduler", "message": "waiting for the scheduling cycle"}],
        endpoint_id=ep.id,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    session.add(
        JobEvent(
            job_id=job.id,
            at=now,
            type="submitted",
            to_status=JobStatus.QUEUED.value,
            message=f"replica {slot} of endpoint {ep.name}",
            details={"endpoint": ep.id, "replica": slot, "guaranteed": guaranteed},
        )
    )
    audit_log.record(
        session,
        None,
        "endpoint.replica",
        "job",
        job.id,
        stream=ep.member_id,
        now=now,
        details={
            "endpoint": ep.id,
            "name": ep.name,
            "replica": slot,
            "guaranteed": guaranteed,
            "gpus": ep.gpus_per_replica,
        },
    )
    return job.id
