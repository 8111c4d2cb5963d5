"""Resolving an admitted job into the ExecutionPlan its workers run (``workers.execution``).

What a member declared (model, teacher, inputs, GPUs, knobs) becomes, here and only here,
what runs: registered datasets with the URI, SHA-256 and size recorded at registration,
models as presets or registered weights, the capacity plan for the pool the engine chose, and
the job's own directories under the jobs area. Residency, labels, quotas and accounting all
hold for this object, so nothing a worker reads comes from anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from controlplane import planning, residency
from controlplane.db.models import Artifact, Dataset, Job, Pool
from controlplane.errors import InvalidRequest
from controlplane.serving.names import SERVE_KIND
from workers.execution import (
    CapacityPlan,
    ExecutionPlan,
    InputPlan,
    JobDirs,
    ModelPlan,
    PlanInvalid,
)
from workers.knobs import is_synthetic, knobs_for, serve_knobs

# Presets small enough to start from a seeded random init (workers.presets refuses larger
# ones without weights; a test keeps this set equal to what it accepts).
SEEDABLE_PRESETS = frozenset({"axk1-mini", "axk1-tiny", "student-mini", "student-tiny"})


class PlanFailed(InvalidRequest):
    """The job cannot be resolved into something that may run (it fails, with this reason)."""

    code = "plan_failed"


def plan_key(session: Session, member_id: str, ref: str, depth: int = 0) -> str | None:
    """What the capacity planner sizes for the model ``ref``: a preset's name, or the
    architecture registered with it (``config:<json>``: a file:// model's config.json read at
    registration, an exported model's at export); None when nothing is known."""
    if ref in residency.BASE_MODEL_JURISDICTION:
        return ref
    if ref.startswith("art_"):
        art = session.get(Artifact, ref)
        if art is None or art.member_id != member_id or depth > 8:
            return None
        if art.kind == "adapter":  # sized as the base it runs on
            return plan_key(session, member_id, str(art.provenance.get("model")), depth + 1)
        return _config_key(art.provenance.get("config"))
    ds = residency.registered_model(session, member_id, ref)
    return _config_key(ds.provenance.get("config")) if ds is not None else None


def _config_key(config: Any) -> str | None:
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return None
    return planning.CONFIG_PREFIX + json.dumps(config, sort_keys=True, separators=(",", ":"))


def job_root(jobs_dir: Path, job: Job) -> Path:
    """The job's directory: ``<jobs area>/<member id>/<job id>`` (server-made ids only)."""
    return jobs_dir / job.member_id / job.id


def resolve(session: Session, job: Job, pool_name: str, jobs_dir: Path) -> ExecutionPlan:
    """The plan for ``job``'s current attempt on ``pool_name`` (raises :class:`PlanFailed`)."""
    pool = session.exec(select(Pool).where(Pool.name == pool_name)).first()
    if pool is None:
        raise PlanFailed(f"unknown pool {pool_name}", details={"pool": pool_name})
    serving = job.kind == SERVE_KIND
    config = dict(job.config)
    if serving:
        config.pop("replica", None)  # the controller's slot number, not a knob
        knobs = serve_knobs(config).model_dump(mode="json")
    else:
        knobs = knobs_for(job.kind, job.config).model_dump(mode="json")
    synthetic = not serving and is_synthetic(job.config)
    pools = residency.pool_facts(session.exec(select(Pool)).all())
    model = teacher = None
    inputs: tuple[InputPlan, ...] = ()
    if serving:
        model = _model(session, job.member_id, job.model, "model", pools)
        inputs = tuple(_adapter(session, job.member_id, ident) for ident in sorted(set(job.inputs)))
    elif not synthetic:
        model = _model(session, job.member_id, job.model, "model", pools)
        if job.teacher:
            teacher = _model(session, job.member_id, job.teacher, "teacher", pools)
        inputs = tuple(_dataset(session, job.member_id, ident, "data") for ident in job.inputs)
    plan = ExecutionPlan(
        job_id=job.id,
        attempt=job.attempt,
        kind=job.kind,
        payload="synthetic" if synthetic else "model",
        model=model,
        teacher=teacher,
        inputs=inputs,
        capacity=_capacity(
            job,
            pool,
            knobs,
            plan_key(session, job.member_id, job.model),
            plan_key(session, job.member_id, job.teacher) if job.teacher else None,
            synthetic,
        ),
        knobs=config,
        dirs=JobDirs.under(job_root(jobs_dir, job)),
    )
    try:
        plan.validate()
    except PlanInvalid as exc:
        raise PlanFailed(f"the job cannot run: {exc}") from None
    return plan


def _dataset(session: Session, member_id: str, ident: str, role: str) -> InputPlan:
    ds = session.get(Dataset, ident)
    if ds is None or ds.member_id != member_id:
        raise PlanFailed(f"dataset {ident} is no longer registered", details={"dataset": ident})
    return InputPlan(
        id=ds.id,
        name=ds.name,
        role=role,
        uri=ds.uri,
        # Unknown for an s3:// dataset nobody has read yet: the first staging pins it.
        sha256=ds.sha256 or "",
        size_bytes=ds.size_bytes if ds.size_bytes is not None else -1,
        version=ds.version,
        labels=dict(ds.labels),
    )


def _adapter(session: Session, member_id: str, ident: str) -> InputPlan:
    """A LoRA adapter an endpoint serves beside its model (Serve multiplexing)."""
    art = session.get(Artifact, ident)
    if art is None or art.member_id != member_id or art.kind != "adapter":
        raise PlanFailed(f"adapter {ident} is not available", details={"adapter": ident})
    return _artifact_input(art, "adapter")


def _artifact_input(art: Artifact, role: str) -> InputPlan:
    size = art.provenance.get("size_bytes")
    if not art.sha256 or not isinstance(size, int) or "://" not in art.uri:
        raise PlanFailed(
            f"artifact {art.id} was written before artifacts were fingerprinted; "
            "it cannot be staged",
            details={"artifact": art.id},
        )
    return InputPlan(
        id=art.id,
        name=art.name,
        role=role,
        uri=art.uri,
        sha256=art.sha256,
        size_bytes=size,
        labels=dict(art.labels),
    )


def _model(
    session: Session,
    member_id: str,
    ref: str,
    role: str,
    pools: list[Any],
    depth: int = 0,
) -> ModelPlan:
    facts = residency.model_facts(session, member_id, ref, pools)
    labels = facts.labels.to_dict() if facts is not None else {}
    if ref in residency.BASE_MODEL_JURISDICTION:
        if ref not in SEEDABLE_PRESETS:
            raise PlanFailed(f"{ref} has no local weights here", details={"model": ref})
        return ModelPlan(ref=ref, preset=ref, labels=labels)
    if ref.startswith("art_"):
        art = session.get(Artifact, ref)
        if art is None or art.member_id != member_id or depth > 8:
            raise PlanFailed(f"model {ref} is not available", details={"model": ref})
        if art.kind == "adapter":
            # An adapter runs on the base it was trained on: that base, resolved as well.
            base = _model(
                session, member_id, str(art.provenance.get("model")), role, pools, depth + 1
            )
            adapter = _artifact_input(art, "adapter")
            return ModelPlan(
                ref=ref, preset=base.preset, weights=base.weights, adapter=adapter, labels=labels
            )
        return ModelPlan(ref=ref, preset=None, weights=_artifact_input(art, role), labels=labels)
    ds = residency.registered_model(session, member_id, ref)
    if ds is None:
        raise PlanFailed(f"model {ref} is not available", details={"model": ref})
    return ModelPlan(
        ref=ds.id, preset=None, weights=_dataset(session, member_id, ds.id, role), labels=labels
    )


def _capacity(
    job: Job,
    pool: Pool,
    knobs: dict[str, Any],
    model_key: str | None,
    teacher_key: str | None,
    synthetic: bool,
) -> CapacityPlan:
    inference = job.kind in ("inference", SERVE_KIND)  # a replica is sized like inference
    zero: int | None = None if inference else 2
    checkpointing = False
    sized = planning.plannable(model_key) and (
        job.kind != "distill" or planning.plannable(teacher_key)
    )
    if not synthetic and sized:
        try:
            p = planning.plan_for(
                "inference" if inference else job.kind,
                str(model_key),
                teacher_key,
                knobs,
                float(pool.gpu_memory_gib),
                pool.gpus_per_node,
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise PlanFailed(f"cannot plan this job: {exc}") from None
        zero = None if inference else int(p.zero_stage or 2)
        checkpointing = bool(p.activation_checkpointing) and not inference
    return CapacityPlan(
        ranks=job.gpus,
        nodes=job.nodes,
        ranks_per_node=job.gpus_per_node,
        precision=str(knobs.get("precision", "bf16")),
        zero_stage=zero,
        activation_checkpointing=checkpointing,
        offload=False,
        micro_batch=int(knobs.get("batch_size" if inference else "micro_batch", 1)),
        grad_accum=int(knobs.get("grad_accum", 1)),
        seq_len=int(knobs.get("seq_len", 128)),
        gpu_memory_gib=float(pool.gpu_memory_gib),
        gpus_per_node=pool.gpus_per_node,
    )
