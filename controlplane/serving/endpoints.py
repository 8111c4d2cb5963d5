"""Endpoints: create, read, change and delete, scoped to the caller's member and audited.

An endpoint is checked like a job before anything runs: the model (a base preset with local
weights, a registered model or a model artifact) and each LoRA adapter must be the member's,
the residency policy must allow the model's and the adapters' labels into at least one of the
allowed pools (denials are audited, as for jobs), a replica must fit one node of such a pool,
and the capacity planner must find the replica's GPUs enough for the weights and the KV cache
of its context at its concurrency. Replicas themselves are the controller's business
(``controlplane.serving.controller``); deleting an endpoint stops them.

An endpoint is addressed by its name within the member (``/v1/endpoints/{name}``); another
member's endpoint is a 404 exactly like a missing one. A deleted endpoint keeps its row (its
replicas' jobs and its token ledger refer to it) under its id as name, so the name is free
again at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane import execution, planning, residency
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Artifact, Endpoint, EndpointState, Job, TokenUsage
from controlplane.errors import Conflict, InvalidRequest, NotFound
from controlplane.jobstate import TERMINAL, JobStatus
from controlplane.services import catalog, lookup, paging
from controlplane.services.jobs import check_model
from controlplane.serving import schemas
from controlplane.serving.names import SERVE_KIND


def _adapters(session: Session, member_id: str, adapters: dict[str, str]) -> None:
    for name, ident in sorted(adapters.items()):
        art = session.get(Artifact, ident)
        if art is None or art.member_id != member_id:
            raise InvalidRequest(
                f"adapter {name}: unknown artifact {ident!r}",
                code="unknown_adapter",
                details={"adapter": name, "artifact": ident},
            )
        if art.kind != "adapter":
            raise InvalidRequest(
                f"adapter {name}: artifact {ident} holds {art.kind}, not a LoRA adapter",
                code="not_an_adapter",
                details={"adapter": name, "artifact": ident, "kind": art.kind},
            )


def _candidates(
    session: Session,
    caller: Principal,
    member_id: str,
    model: str,
    adapters: dict[str, str],
    allowed_pools: list[str],
    gpus_per_replica: int,
    config: schemas.EndpointConfig,
    now: datetime,
    action: str,
) -> list[str]:
    """The pools a replica may run in (residency, shape, planner); raises why none."""
    cat = catalog.get(session)
    unknown = [p for p in allowed_pools if p not in cat.shapes]
    if unknown:
        raise InvalidRequest(
            f"unknown pool {unknown[0]!r}",
            code="unknown_pool",
            details={"unknown": sorted(set(unknown)), "pools": sorted(cat.shapes)},
        )
    names = allowed_pools or sorted(cat.shapes)
    pools = [cat.pool_facts[p] for p in names]
    facts = residency.input_facts(
        session, member_id, model, list(adapters.values()), list(cat.pool_facts.values())
    )
    decisions = residency.engine(session).allowed_pools(facts, pools)
    permitted = [p for p in names if decisions[p].allowed]
    if not permitted:
        denied = residency.ResidencyDenied(
            "no allowed pool may serve this endpoint's model and adapters",
            details=residency.denial_details(decisions),
        )
        session.rollback()
        audit_log.record(
            session,
            caller,
            action,
            "endpoint",
            None,
            stream=member_id,
            now=now,
            outcome="denied",
            details={"code": denied.code, "model": model, **denied.details},
        )
        session.commit()
        raise denied
    fitting = [p for p in permitted if cat.shapes[p].gpus_per_node >= gpus_per_replica]
    if not fitting:
        raise InvalidRequest(
            f"a replica of {gpus_per_replica} GPUs fits no node of an allowed pool "
            "(a replica runs on one node)",
            code="exceeds_capacity",
            details={
                "gpus_per_replica": gpus_per_replica,
                "pools": {p: cat.shapes[p].gpus_per_node for p in permitted},
            },
        )
    # The planner sizes a replica like an inference job: weights plus the KV cache of
    # max_context tokens for max_ongoing_requests sequences at once.
    planning.check_submission(
        "inference",
        execution.plan_key(session, member_id, model) or model,
        None,
        {"batch_size": config.max_ongoing_requests, "max_new_tokens": config.max_context},
        gpus_per_replica,
        1,
        [(p, cat.shapes[p].gpu_memory_gib, cat.shapes[p].gpus_per_node) for p in fitting],
    )
    return fitting


def _active(session: Session, caller: Principal, name: str) -> Endpoint:
    stmt = lookup.scoped(select(Endpoint), Endpoint.member_id, caller).where(
        Endpoint.name == name, Endpoint.state == EndpointState.ACTIVE.value
    )
    found = session.exec(stmt).first()
    if found is None:
        raise NotFound("endpoint", name)
    return found


def get(session: Session, caller: Principal, name: str) -> Endpoint:
    return _active(session, caller, name)


def create(
    session: Session, caller: Principal, body: schemas.EndpointCreate, now: datetime
) -> Endpoint:
    caller.require_write()
    member_id = caller.require_member()
    check_model(session, member_id, body.model, runs=True)
    _adapters(session, member_id, body.adapters)
    classes = catalog.get(session).priority_classes
    if body.priority_class not in classes:
        raise InvalidRequest(
            f"unknown priority class {body.priority_class!r}",
            code="unknown_priority_class",
            details={"priority_classes": sorted(classes)},
        )
    if session.exec(
        select(Endpoint.id).where(Endpoint.member_id == member_id, Endpoint.name == body.name)
    ).first():
        raise Conflict(f"endpoint {body.name!r} exists", code="endpoint_exists")
    pools = _candidates(
        session,
        caller,
        member_id,
        body.model,
        body.adapters,
        body.allowed_pools,
        body.gpus_per_replica,
        body.config,
        now,
        "endpoint.create",
    )
    row = Endpoint(
        member_id=member_id,
        creator_id=caller.user_id,
        name=body.name,
        model=body.model,
        adapters=dict(body.adapters),
        min_replicas=body.min_replicas,
        max_replicas=body.max_replicas,
        gpus_per_replica=body.gpus_per_replica,
        allowed_pools=list(body.allowed_pools),
        priority_class=body.priority_class,
        config=body.config.model_dump(mode="json"),
        desired_replicas=body.min_replicas,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"endpoint {body.name!r} exists", code="endpoint_exists") from None
    audit_log.record(
        session,
        caller,
        "endpoint.create",
        "endpoint",
        row.id,
        stream=member_id,
        now=now,
        details={
            "name": row.name,
            "model": row.model,
            "adapters": row.adapters,
            "min_replicas": row.min_replicas,
            "max_replicas": row.max_replicas,
            "gpus_per_replica": row.gpus_per_replica,
            "allowed_pools": row.allowed_pools,
            "eligible_pools": pools,
            "priority_class": row.priority_class,
        },
    )
    session.commit()
    session.refresh(row)
    return row


def update(
    session: Session, caller: Principal, name: str, body: schemas.EndpointUpdate, now: datetime
) -> Endpoint:
    row = _active(session, caller, name)
    caller.require_write()
    changes = body.model_dump(exclude_unset=True, mode="json")
    low = body.min_replicas if body.min_replicas is not None else row.min_replicas
    high = body.max_replicas if body.max_replicas is not None else row.max_replicas
    if low > high:
        raise InvalidRequest(
            f"min_replicas ({low}) exceeds max_replicas ({high})",
            code="validation_error",
            details={"min_replicas": low, "max_replicas": high},
        )
    config = body.config or schemas.EndpointConfig(**row.config)
    if "allowed_pools" in changes or "config" in changes:
        _candidates(
            session,
            caller,
            row.member_id,
            row.model,
            row.adapters,
            body.allowed_pools if body.allowed_pools is not None else row.allowed_pools,
            row.gpus_per_replica,
            config,
            now,
            "endpoint.update",
        )
        row = _active(session, caller, name)  # a denial's audit commit expired it
    if not changes:
        return row
    row.min_replicas, row.max_replicas = low, high
    if body.allowed_pools is not None:
        row.allowed_pools = list(body.allowed_pools)
    if body.config is not None:
        row.config = body.config.model_dump(mode="json")
    row.desired_replicas = min(max(row.desired_replicas, low), high)
    row.version += 1
    row.updated_at = now
    session.add(row)
    audit_log.record(
        session,
        caller,
        "endpoint.update",
        "endpoint",
        row.id,
        stream=row.member_id,
        now=now,
        details={"name": row.name, "changes": changes},
    )
    session.commit()
    session.refresh(row)
    return row


def delete(session: Session, caller: Principal, name: str, now: datetime) -> Endpoint:
    """Mark the endpoint deleted; the controller stops its replicas on its next cycle."""
    row = _active(session, caller, name)
    caller.require_write()
    row.state = EndpointState.DELETED.value
    row.name = row.id  # frees the name; the audit event keeps it
    row.desired_replicas = 0
    row.deleted_at = row.updated_at = now
    row.version += 1
    session.add(row)
    audit_log.record(
        session,
        caller,
        "endpoint.delete",
        "endpoint",
        row.id,
        stream=row.member_id,
        now=now,
        details={"name": name},
    )
    session.commit()
    session.refresh(row)
    return row


def list_endpoints(
    session: Session, caller: Principal, limit: int, cursor: str | None, member: str | None = None
) -> tuple[Sequence[Endpoint], str | None]:
    stmt = lookup.scoped(select(Endpoint), Endpoint.member_id, caller).where(
        Endpoint.state == EndpointState.ACTIVE.value
    )
    if caller.reads_all_members and member:
        stmt = stmt.where(Endpoint.member_id == lookup.member(session, member, caller).id)
    return paging.page(session, stmt, Endpoint.id, limit, cursor)


def replicas(session: Session, endpoint_ids: Sequence[str]) -> dict[str, list[Job]]:
    """The replica jobs of each endpoint that are not finished, by endpoint id."""
    out: dict[str, list[Job]] = {i: [] for i in endpoint_ids}
    if not endpoint_ids:
        return out
    rows = session.exec(
        select(Job)
        .where(col(Job.endpoint_id).in_(list(endpoint_ids)), Job.kind == SERVE_KIND)
        .where(col(Job.status).notin_([s.value for s in TERMINAL]))
        .order_by(col(Job.created_at), col(Job.id))
    ).all()
    for job in rows:
        out[str(job.endpoint_id)].append(job)
    return out


def replica_index(job: Job) -> int:
    """The replica slot a job fills (``config["replica"]``, set by the controller)."""
    value = (job.config or {}).get("replica", 0)
    return int(value) if isinstance(value, int) else 0


def public(session: Session, rows: Sequence[Endpoint]) -> list[schemas.EndpointPublic]:
    """Endpoints with their replicas (where they run) and the tokens they served."""
    ids = [r.id for r in rows]
    reps = replicas(session, ids)
    served: dict[str, tuple[int, int]] = {}
    if ids:
        for ident, tokens, count in session.execute(
            select(
                col(TokenUsage.endpoint_id),
                func.coalesce(
                    func.sum(col(TokenUsage.prompt_tokens) + col(TokenUsage.completion_tokens)), 0
                ),
                func.count(),
            )
            .where(col(TokenUsage.endpoint_id).in_(ids), col(TokenUsage.settled_at).is_not(None))
            .group_by(col(TokenUsage.endpoint_id))
        ).all():
            served[str(ident)] = (int(tokens), int(count))
    out = []
    for row in rows:
        jobs = reps.get(row.id, [])
        items = [
            schemas.ReplicaPublic(
                job_id=j.id,
                index=replica_index(j),
                status=j.status,
                guaranteed=not j.preemptible,
                pool=j.pool,
                nodes=[str(n) for n, _ in j.assignment],
                reasons=list(j.reasons) if j.status == JobStatus.QUEUED.value else [],
                started_at=j.started_at,
            )
            for j in jobs
        ]
        tokens, count = served.get(row.id, (0, 0))
        data: dict[str, Any] = {
            **{k: getattr(row, k) for k in schemas.EndpointPublic.model_fields if hasattr(row, k)},
            "replicas": items,
            "ready_replicas": sum(1 for j in jobs if j.status == JobStatus.RUNNING.value),
            "tokens_served": tokens,
            "requests_served": count,
        }
        out.append(schemas.EndpointPublic(**data))
    return out
