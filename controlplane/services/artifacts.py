"""What jobs write: artifacts with effective labels and provenance; export and download."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session, select

from controlplane import residency
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Artifact, Dataset, Job, JobKind
from controlplane.services import lookup, paging
from policies import ArtifactFacts, ArtifactKind, Caller, Classification, Decision, Role

OUTPUT_KIND = {
    JobKind.FINETUNE.value: "model",
    JobKind.LORA.value: "adapter",
    JobKind.DISTILL.value: "model",
    JobKind.PRETRAIN.value: "model",
    JobKind.INFERENCE.value: "outputs",
}


# Where each kind's exported artifact lies in the job's output directory (the workers write
# it there; the control plane never takes a path from a worker's report).
ARTIFACT_PATH = {
    JobKind.FINETUNE.value: "model",
    JobKind.PRETRAIN.value: "model",
    JobKind.LORA.value: "adapter",
    JobKind.DISTILL.value: "student",
    JobKind.INFERENCE.value: "outputs.jsonl",
}


@dataclass(frozen=True, slots=True)
class Output:
    """A finished job's artifact, fingerprinted, and exactly what the job read."""

    uri: str
    sha256: str | None
    size_bytes: int | None
    read: list[dict[str, Any]] = field(default_factory=list)
    # An exported model's config.json: what the capacity planner sizes a job on it from.
    config: dict[str, Any] | None = None


def output_of(job: Job, read: list[dict[str, Any]]) -> Output | None:
    """The exported artifact of ``job`` (from its execution plan), fingerprinted.

    Read from disk, outside any transaction. The synthetic payload has no model: its output
    is its checkpoint files. A path that leaves the job's directory (a link planted by the
    job) gives no fingerprint, so the artifact can never be staged by a later job.
    """
    from workers.staging import StagingError, fingerprint

    plan = job.execution_plan
    if not plan:
        return None
    dirs = plan["dirs"]
    root = Path(dirs["root"])
    if plan["payload"] == "synthetic":
        path = Path(dirs["checkpoints"])
    else:
        path = Path(dirs["output"]) / ARTIFACT_PATH.get(job.kind, "model")
    if not path.exists() or path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        return Output(path.as_uri(), None, None, read)
    try:
        fp = fingerprint(path.as_uri())
    except StagingError:
        return Output(path.as_uri(), None, None, read)
    config = None
    if path.is_dir() and (path / "config.json").is_file():  # links were refused above
        try:
            loaded = json.loads((path / "config.json").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            config = None
    return Output(path.as_uri(), fp.sha256, fp.size_bytes, read, config)


def _model_ref(session: Session, job: Job, model: str, role: str) -> dict[str, Any] | None:
    if model in residency.BASE_MODEL_JURISDICTION:
        return {"type": "base_model", "id": model, "role": role}
    if model.startswith("art_"):
        return {"type": "artifact", "id": model, "role": role}
    ds = session.exec(
        select(Dataset).where(
            Dataset.member_id == job.member_id,
            (Dataset.id == model) | (Dataset.name == model),
        )
    ).first()
    if ds is None:
        return None
    return {"type": "dataset", "id": ds.id, "version": ds.version, "role": role}


def _input_refs(session: Session, job: Job) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    for model, role in ((job.model, "model"), (job.teacher, "teacher")):
        ref = _model_ref(session, job, model, role) if model else None
        if ref is not None:
            refs.append(ref)
    for ident in job.inputs:
        ds = session.get(Dataset, ident)
        refs.append(
            {"type": "dataset", "id": ident, "version": ds.version if ds else None, "role": "input"}
        )
    return refs


def register_output(
    session: Session,
    job: Job,
    now: datetime,
    uri: str,
    sha256: str | None,
    size_bytes: int | None = None,
    read: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> Artifact:
    """Record what a finished job wrote, in the caller's transaction.

    The label is computed now from every input of the job's execution plan (the model and a
    distillation's teacher included) and stored with the provenance: the references, and
    the SHA-256 and size of each input exactly as staging read it. It is never edited
    afterwards.
    """
    labels = residency.effective_output_labels(
        session, job.member_id, job.model, job.inputs, job.teacher
    )
    kind = OUTPUT_KIND.get(job.kind, "model")
    art = Artifact(
        member_id=job.member_id,
        job_id=job.id,
        name=f"{job.name}-{kind}",
        kind=kind,
        uri=uri,
        sha256=sha256,
        labels=labels.to_dict(),
        created_at=now,
        provenance={
            "job_id": job.id,
            "attempt": job.attempt,
            "kind": job.kind,
            "model": job.model,
            "teacher": job.teacher,
            "inputs": _input_refs(session, job),
            "read": [
                {k: r.get(k) for k in ("id", "name", "role", "uri", "sha256", "size_bytes")}
                for r in read or []
            ],
            "size_bytes": size_bytes,
            **({"config": config} if config is not None else {}),
            "policy_set_hash": residency.engine(session).policy_set_hash,
        },
    )
    session.add(art)
    audit_log.record(
        session,
        None,
        "artifact.create",
        "artifact",
        art.id,
        stream=job.member_id,
        now=now,
        details={"job_id": job.id, "kind": kind, "labels": art.labels, "sha256": sha256},
    )
    return art


def visible(session: Session, caller: Principal, art_id: str) -> Artifact:
    return lookup.owned(session, caller, Artifact, art_id, "artifact")


def list_artifacts(
    session: Session, caller: Principal, limit: int, cursor: str | None
) -> tuple[Sequence[Artifact], str | None]:
    stmt = lookup.scoped(select(Artifact), Artifact.member_id, caller)
    return paging.page(session, stmt, Artifact.id, limit, cursor)


def _facts(session: Session, art: Artifact) -> ArtifactFacts:
    return ArtifactFacts(
        ref=art.id,
        labels=residency.artifact_labels(session, art),
        kind=ArtifactKind.of(art.kind),
        member=art.member_id,
    )


def _caller(p: Principal) -> Caller:
    return Caller(user_id=p.user_id, role=Role(p.role.value), member=p.member_id)


def export(
    session: Session,
    caller: Principal,
    art_id: str,
    region: str,
    jurisdiction: str,
    max_classification: str,
    now: datetime,
) -> dict[str, Any]:
    """May the artifact leave for ``region``? Every answer is audited; a denial is a 403."""
    art = visible(session, caller, art_id)
    caller.require_write()
    facts = _facts(session, art)
    decision: Decision = residency.engine(session).export(
        facts,
        region,
        jurisdiction,
        destination_max_classification=Classification.parse(max_classification),
        caller=_caller(caller),
    )
    audit_log.record(
        session,
        caller,
        "artifact.export",
        "artifact",
        art.id,
        stream=art.member_id,
        now=now,
        outcome="success" if decision.allowed else "denied",
        details={
            "destination": {"region": region, "jurisdiction": jurisdiction},
            "labels": facts.labels.to_dict(),
            **decision.to_dict(),
        },
    )
    session.commit()
    if not decision.allowed:
        raise residency.ExportDenied(
            f"artifact {art.id} may not be exported to {region}",
            details={"decision": decision.to_dict(), "labels": facts.labels.to_dict()},
        )
    return {
        "artifact_id": art.id,
        "sha256": art.sha256,
        "destination": region,
        "decision": decision.to_dict(),
    }


def _read_decision(session: Session, caller: Principal, art: Artifact) -> Decision:
    """The access policy's READ decision on ``art`` for ``caller``."""
    from policies import Action

    return residency.engine(session).authorize(_caller(caller), Action.READ, _facts(session, art))


def _audit_read(
    session: Session,
    caller: Principal,
    art: Artifact,
    action: str,
    now: datetime,
    outcome: str,
    details: dict[str, Any],
) -> None:
    audit_log.record(
        session,
        caller,
        action,
        "artifact",
        art.id,
        stream=art.member_id,
        now=now,
        outcome=outcome,
        details=details,
    )
    session.commit()


def _denied(art: Artifact, decision: Decision) -> residency.ExportDenied:
    return residency.ExportDenied(
        f"you may not read artifact {art.id}",
        code="access_denied",
        details={"decision": decision.to_dict()},
    )


def public_location(uri: str) -> str:
    """Where an artifact (or an input) lies, without any server path: ``"nuri"`` for what
    Nuri stores itself (``file://``: fetch it through ``GET /v1/artifacts/{id}/download``),
    the URI itself for a member's own object store (``s3://...``), ``"external"`` else."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "s3":
        return uri
    return "nuri" if scheme == "file" else "external"


def public_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """``provenance`` with each input's ``uri`` replaced by its :func:`public_location` (an
    input may be an earlier artifact, whose URI is a server path)."""
    read = provenance.get("read")
    if not isinstance(read, list):
        return provenance
    public: list[Any] = []
    for item in read:
        if isinstance(item, dict) and isinstance(item.get("uri"), str):
            location = public_location(item["uri"])
            item = {**{k: v for k, v in item.items() if k != "uri"}, "location": location}
        public.append(item)
    return {**provenance, "read": public}


# --- download references ------------------------------------------------------------------

# How long a download link (``GET .../download``'s ``href``) may be followed.
