"""Submitting, listing, reading and cancelling jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane import execution, planning, residency
from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import (
    Artifact,
    Dataset,
    Job,
    JobEvent,
    JobLog,
    JobMetric,
    Role,
)
from controlplane.db.types import new_id
from controlplane.errors import (
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
)
from controlplane.jobstate import TERMINAL, JobStatus, transition
from controlplane.services import catalog, group_commit, lookup, paging
from workers import knobs

# Base models every member may name; anything else must be a registered model dataset.
BASE_MODELS = frozenset(residency.BASE_MODEL_JURISDICTION)
MAX_CONFIG_BYTES = 64 * 1024
# The teacher a distillation learns from when the job names none.
DEFAULT_TEACHER = "axk1"


def request_hash(body: schemas.JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _shape(body: schemas.JobCreate, candidates: list[catalog.PoolShape]) -> tuple[int, int]:
    """(nodes, gpus_per_node) for the request, derived when the caller gave only ``gpus``."""
    if body.nodes is not None:
        return body.nodes, body.gpus // body.nodes
    if body.gpus_per_node is not None:
        return body.gpus // body.gpus_per_node, body.gpus_per_node
    if any(body.gpus <= p.gpus_per_node for p in candidates):
        return 1, body.gpus
    widest = max((p.gpus_per_node for p in candidates), default=0)
    if widest and body.gpus % widest == 0:
        return body.gpus // widest, widest
    raise InvalidRequest(
        f"{body.gpus} GPUs do not fit one node and are not a multiple of {widest} GPUs per node;"
        " give nodes and gpus_per_node",
        code="invalid_shape",
        details={"gpus": body.gpus, "max_gpus_per_node": widest},
    )


def _fits(shape: catalog.PoolShape, nodes: int, per_node: int, same_domain: bool) -> bool:
    if per_node > shape.gpus_per_node:
        return False
    if nodes > 1 and per_node != shape.gpus_per_node:
        return False  # multi-node jobs take whole nodes (the engine never splits them)
    usable = shape.largest_domain_nodes if same_domain and nodes > 1 else shape.nodes
    return nodes <= usable


def input_ids_of(session: Session, member_id: str, body: schemas.JobCreate) -> list[str]:
    """The caller's datasets by id or name; another member's is as unknown as a missing one."""
    input_ids: list[str] = []
    for ref in body.inputs:
        ds = session.exec(
            select(Dataset).where(
                Dataset.member_id == member_id, (Dataset.id == ref) | (Dataset.name == ref)
            )
        ).first()
        if ds is None:
            raise InvalidRequest(
                f"unknown dataset {ref!r}", code="unknown_dataset", details={"dataset": ref}
            )
        input_ids.append(ds.id)
    return input_ids


def check_model(session: Session, member_id: str, model: str, runs: bool = False) -> None:
    """A base model, a model dataset or a derived model artifact of the caller's member.

    ``runs``: the job runs the real model, so its weights must exist here (a base preset
    too large to initialise at random needs registered weights).
    """
    if model in BASE_MODELS:
        if runs and model not in execution.SEEDABLE_PRESETS:
            raise InvalidRequest(
                f"{model} has no local weights here: register its weights as a model dataset "
                "(POST /v1/datasets with kind=model) and name that, or use a small preset "
                f"({', '.join(sorted(execution.SEEDABLE_PRESETS))})",
                code="weights_unavailable",
                details={"model": model, "presets": sorted(execution.SEEDABLE_PRESETS)},
            )
        return
    if model.startswith("art_"):
        art = session.get(Artifact, model)
        if art is not None and art.member_id == member_id:
            if art.kind not in ("model", "adapter"):
                raise InvalidRequest(
                    f"artifact {model} holds {art.kind}, not a model",
                    code="not_a_model",
                    details={"model": model, "kind": art.kind},
                )
            return
    if residency.registered_model(session, member_id, model) is None:
        raise InvalidRequest(
            f"unknown model {model!r}",
            code="unknown_model",
            details={"model": model, "base_models": sorted(BASE_MODELS)},
        )


def check_config(body: schemas.JobCreate, allow_synthetic: bool) -> dict[str, Any]:
    """The job's knobs, validated against its kind's schema (``workers.knobs``)."""
    if len(json.dumps(body.config)) > MAX_CONFIG_BYTES:
        raise InvalidRequest("config is larger than 64 KiB", code="config_too_large")
    try:
        validated = knobs.knobs_for(body.kind.value, body.config)
    except knobs.KnobError as exc:
        raise InvalidRequest(str(exc), code="invalid_config", details=exc.details) from None
    if knobs.is_synthetic(body.config) and not allow_synthetic:
        raise InvalidRequest(
            "the synthetic payload is switched off on this deployment",
            code="synthetic_disabled",
            details={"setting": "NURI_ALLOW_SYNTHETIC_PAYLOAD"},
        )
    return validated.model_dump(mode="json")


def teacher_of(body: schemas.JobCreate) -> str | None:
    if body.kind.value != "distill":
        if body.teacher is not None:
            raise InvalidRequest(
                "only distill jobs take a teacher",
                code="invalid_teacher",
                details={"kind": body.kind.value},
            )
        return None
    return body.teacher or DEFAULT_TEACHER


def _validate(
    session: Session, member_id: str, body: schemas.JobCreate, allow_synthetic: bool = True
) -> tuple[int, int, list[str], bool]:
    """Check every reference and the shape; returns (nodes, gpus_per_node, inputs, preemptible)."""
    knob_values = check_config(body, allow_synthetic)
    real = not knobs.is_synthetic(body.config)
    teacher = teacher_of(body)
    cat = catalog.get(session)
    shapes = cat.shapes
    unknown = [p for p in [*body.allowed_pools, *body.preferred_pools] if p not in shapes]
    if unknown:
        raise InvalidRequest(
            f"unknown pool {unknown[0]!r}",
            code="unknown_pool",
            details={"unknown": sorted(set(unknown)), "pools": sorted(shapes)},
        )
    candidates = (
        [shapes[p] for p in body.allowed_pools] if body.allowed_pools else list(shapes.values())
    )
    nodes, per_node = _shape(body, candidates)
    input_ids = input_ids_of(session, member_id, body)
    if real and not input_ids:
        raise InvalidRequest(
            f"a {body.kind.value} job reads at least one registered dataset: name it in inputs",
            code="inputs_required",
            details={"kind": body.kind.value},
        )
    check_model(session, member_id, body.model, runs=real)
    if teacher is not None:
        check_model(session, member_id, teacher, runs=real)
    # Residency before capacity: a pool the data may not enter is no candidate at all.
    facts = residency.input_facts(
        session, member_id, body.model, input_ids, list(cat.pool_facts.values()), teacher
    )
    decisions = residency.engine(session).allowed_pools(
        facts, [cat.pool_facts[c.name] for c in candidates]
    )
    permitted = [c for c in candidates if decisions[c.name].allowed]
    if not permitted:
        raise residency.ResidencyDenied(
            "no allowed pool may process this job's data and model",
            details=residency.denial_details(decisions),
        )
    candidates = permitted
    if not any(_fits(s, nodes, per_node, body.same_domain) for s in candidates):
        raise InvalidRequest(
            f"{nodes} node(s) x {per_node} GPUs fits no allowed pool (larger than it can ever "
            "hold, or a multi-node job that does not take whole nodes)",
            code="exceeds_capacity",
            details={
                "requested": {
                    "gpus": body.gpus,
                    "nodes": nodes,
                    "gpus_per_node": per_node,
                    "same_domain": body.same_domain,
                },
                "pools": {
                    s.name: {
                        "gpus_per_node": s.gpus_per_node,
                        "nodes": s.nodes,
                        "largest_domain_nodes": s.largest_domain_nodes,
                    }
                    for s in candidates
                },
            },
        )
    pools = [
        (c.name, c.gpu_memory_gib, c.gpus_per_node)
        for c in candidates
        if _fits(c, nodes, per_node, body.same_domain)
    ]
    # Sized from the configuration: a preset's, or the one registered with the weights.
    planning.check_submission(
        body.kind.value,
        execution.plan_key(session, member_id, body.model) or body.model,
        execution.plan_key(session, member_id, teacher) if teacher else None,
        knob_values,
        body.gpus,
        nodes,
        pools,
    )
    class_preemptible = cat.priority_classes.get(body.priority_class)
    if class_preemptible is None:
        raise InvalidRequest(
            f"unknown priority class {body.priority_class!r}",
            code="unknown_priority_class",
            details={"priority_classes": sorted(cat.priority_classes)},
        )
    preemptible = class_preemptible if body.preemptible is None else body.preemptible
    if class_preemptible and not preemptible:
        raise InvalidRequest(
            f"priority class {body.priority_class} is preemptible; a job in it cannot opt out",
            code="invalid_preemptible",
            details={"priority_class": body.priority_class},
        )
    return nodes, per_node, input_ids, preemptible


def submit(
    session: Session,
    caller: Principal,
    body: schemas.JobCreate,
    idempotency_key: str | None,
    now: datetime,
    max_retries: int,
    allow_synthetic: bool = True,
    traceparent: str | None = None,
) -> tuple[schemas.JobPublic, bool]:
    """Persist a QUEUED job and its first event in one transaction.

    Returns (job, created). A repeat of the same ``Idempotency-Key`` with the same body returns
    the original job (created=False); with a different body it is a 409. ``traceparent``: the
    submission's trace, which the job's later spans continue (``observability.tracing``).
    """
    caller.require_write()
    member_id = caller.require_member()
    digest = request_hash(body)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 200:
            raise InvalidRequest(
                "Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key"
            )
        existing = _by_key(session, member_id, idempotency_key)
        if existing is not None:
            return _replay(existing, digest), False
    try:
        nodes, per_node, input_ids, preemptible = _validate(
            session, member_id, body, allow_synthetic
        )
    except residency.ResidencyDenied as denied:
        # A policy denial is a decision worth keeping: record it, though nothing else is.
        session.rollback()
        audit_log.record(
            session,
            caller,
            "job.submit",
            "job",
            None,
            stream=member_id,
            now=now,
            outcome="denied",
            details={
                "code": denied.code,
                "model": body.model,
                "inputs": body.inputs,
                "allowed_pools": body.allowed_pools,
                **denied.details,
            },
        )
        session.commit()
        raise
    # Core rows, not ORM objects: building two SQLModel table instances costs more than the
    # rest of a submission together, and this is the API's hottest write.
    row: dict[str, Any] = {
        "id": new_id("job"),
        "member_id": member_id,
        "submitter_id": caller.user_id,
        "name": body.name or f"{body.kind.value}-{body.model}",
        "kind": body.kind.value,
        "model": body.model,
        "inputs": input_ids,
        "gpus": body.gpus,
        "nodes": nodes,
        "gpus_per_node": per_node,
        "allowed_pools": body.allowed_pools,
        "preferred_pools": body.preferred_pools,
        "same_domain": body.same_domain,
        "priority_class": body.priority_class,
        "max_runtime_s": body.max_runtime_s,
        "preemptible": preemptible,
        "config": body.config,
        "teacher": teacher_of(body),
        "execution_plan": None,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
        "status": JobStatus.QUEUED.value,
        "attempt": 1,
        "max_retries": max_retries,
        "reasons": [
            {"code": "awaiting_scheduler", "message": "waiting for the next scheduling cycle"}
        ],
        "pool": None,
        "checkpoint_uri": None,
        "created_at": now,
        "updated_at": now,
        "admitted_at": None,
        "started_at": None,
        "finished_at": None,
        "traceparent": traceparent,
    }
    event: dict[str, Any] = {
        "job_id": row["id"],
        "at": now,
        "type": "submitted",
        "from_status": None,
        "to_status": JobStatus.QUEUED.value,
        "attempt": 1,
        "actor": caller.user_id,
        "message": "job submitted",
        "details": {"gpus": body.gpus, "nodes": nodes, "gpus_per_node": per_node},
    }
    audit = audit_log.entry(
        caller,
        "job.submit",
        "job",
        row["id"],
        stream=member_id,
        now=now,
        details={
            "kind": row["kind"],
            "model": body.model,
            "teacher": row["teacher"],
            "inputs": input_ids,
            "gpus": body.gpus,
            "nodes": nodes,
            "priority_class": body.priority_class,
            "allowed_pools": body.allowed_pools,
            "idempotency_key": idempotency_key,
        },
    )
    pending = group_commit.Pending(row, event, audit)
    try:
        bind = session.get_bind()
        if isinstance(bind, Engine):
            # The reads are done: end this session's transaction (it holds a connection, and
            # on SQLite a snapshot) and commit the rows with whatever else is being submitted.
            session.commit()
            group_commit.write(bind, pending)
        else:  # a session bound to one connection: its own transaction is the only one
            group_commit.insert_rows(session.connection(), [pending])
            session.commit()
    except IntegrityError:
        # Two submissions with one key raced; the loser replays the winner's job.
        session.rollback()
        if idempotency_key is None:
            raise
        existing = _by_key(session, member_id, idempotency_key)
        if existing is None:
            raise
        return _replay(existing, digest), False
    return schemas.JobPublic(**row), True


def _by_key(session: Session, member_id: str, key: str) -> Job | None:
    return session.exec(
        select(Job).where(Job.member_id == member_id, Job.idempotency_key == key)
    ).first()


def _replay(existing: Job, digest: str) -> schemas.JobPublic:
    if existing.request_hash != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body",
            details={"job_id": existing.id},
        )
    return schemas.JobPublic.model_validate(existing)


def get_job(session: Session, caller: Principal, job_id: str) -> Job:
    return lookup.owned(session, caller, Job, job_id, "job")


def list_jobs(
    session: Session,
    caller: Principal,
    limit: int,
    cursor: str | None,
    status: list[str] | None = None,
    kind: str | None = None,
    submitter: str | None = None,
    pool: str | None = None,
    member: str | None = None,
) -> tuple[Sequence[Job], str | None]:
    stmt = lookup.scoped(select(Job), Job.member_id, caller)
    if caller.reads_all_members and member:
        stmt = stmt.where(Job.member_id == lookup.member(session, member, caller).id)
    if status:
        wanted = [s.upper() for s in status]
        bad = [s for s in wanted if s not in JobStatus.__members__]
        if bad:
            raise InvalidRequest(
                f"unknown status {bad[0]!r}",
                code="invalid_filter",
                details={"allowed": list(JobStatus.__members__)},
            )
        stmt = stmt.where(col(Job.status).in_(wanted))
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if submitter:
        stmt = stmt.where(Job.submitter_id == (caller.user_id if submitter == "me" else submitter))
    if pool:
        stmt = stmt.where(Job.pool == pool)
    return paging.page(session, stmt, Job.id, limit, cursor)


def cancel(session: Session, caller: Principal, job_id: str, reason: str, now: datetime) -> Job:
    """Cancel a job that is not finished. Member users may cancel only their own jobs."""
    job = get_job(session, caller, job_id)
    caller.require_write()
    if not (
        caller.is_platform_admin
        or caller.role is Role.MEMBER_ADMIN
        or job.submitter_id == caller.user_id
    ):
        raise Forbidden("member users may cancel only their own jobs", details={"job_id": job.id})
    current = JobStatus(job.status)
    if current in TERMINAL:
        raise InvalidTransition(
            f"job {job.id} is {job.status}, which is final; it cannot be cancelled",
            details={"job_id": job.id, "status": job.status},
        )
    details: dict[str, Any] = {"reason": reason} if reason else {}
    transition(
        session,
        job.id,
        expected=current,
        to=JobStatus.CANCELLED,
        now=now,
        actor=caller.user_id,
        message=reason or "cancelled by user",
        details=details,
        reasons=[{"code": "cancelled", "message": reason or "cancelled by user"}],
    )
    audit_log.record(
        session,
        caller,
        "job.cancel",
        "job",
        job.id,
        stream=job.member_id,
        now=now,
        details={"from": current.value, "reason": reason},
    )
    session.commit()
    session.refresh(job)
    return job


def events(session: Session, caller: Principal, job_id: str) -> Sequence[JobEvent]:
    get_job(session, caller, job_id)
    return session.exec(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
    ).all()


def logs(
    session: Session,
    caller: Principal,
    job_id: str,
    attempt: int | None,
    tail: int,
    after_id: int | None = None,
) -> Sequence[JobLog]:
    """The last ``tail`` log lines of an attempt (default: the current one), oldest first.

    With ``after_id`` it is a cursor instead: the *first* ``tail`` lines whose id is above
    it, oldest first, so a follower that passes the last id it printed never skips or
    repeats a line. That holds because a job's lines become visible in id order: they are
    written only by ``scheduler.progress.store``, whose commits for one job are serialised
    on the job row's guarded counter, and a new attempt's lines come after the old one's.
    """
    job = get_job(session, caller, job_id)
    query = select(JobLog).where(
        JobLog.job_id == job_id, JobLog.attempt == (attempt or job.attempt)
    )
    if after_id is not None:
        return session.exec(
            query.where(col(JobLog.id) > after_id).order_by(col(JobLog.id)).limit(tail)
        ).all()
    rows = session.exec(query.order_by(col(JobLog.id).desc()).limit(tail)).all()
    return list(reversed(rows))


def metrics(
    session: Session, caller: Principal, job_id: str, after_step: int, limit: int
) -> Sequence[JobMetric]:
    """Metric samples of every attempt in order (a resumed job continues its curve)."""
    get_job(session, caller, job_id)
    return session.exec(
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.step > after_step)
        .order_by(col(JobMetric.step), col(JobMetric.id))
        .limit(limit)
    ).all()
