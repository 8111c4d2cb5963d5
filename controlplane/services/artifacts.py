"""What jobs write: artifacts with effective labels and provenance; export and download."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

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


def _input_refs(session: Session, job: Job) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    if job.model in residency.BASE_MODEL_JURISDICTION:
        refs.append({"type": "base_model", "id": job.model, "role": "model"})
    elif job.model.startswith("art_"):
        refs.append({"type": "artifact", "id": job.model, "role": "model"})
    else:
        ds = session.exec(
            select(Dataset).where(
                Dataset.member_id == job.member_id,
                (Dataset.id == job.model) | (Dataset.name == job.model),
            )
        ).first()
        if ds is not None:
            refs.append({"type": "dataset", "id": ds.id, "version": ds.version, "role": "model"})
    for ident in job.inputs:
        ds = session.get(Dataset, ident)
        refs.append(
            {"type": "dataset", "id": ident, "version": ds.version if ds else None, "role": "input"}
        )
    return refs


def register_output(
    session: Session, job: Job, now: datetime, uri: str, sha256: str | None
) -> Artifact:
    """Record what a finished job wrote, in the caller's transaction.

    The label is computed now from every input (the base or teacher model included) and
    stored with the provenance; it is never edited afterwards.
    """
    labels = residency.effective_output_labels(session, job.member_id, job.model, job.inputs)
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
            "inputs": _input_refs(session, job),
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
        "uri": art.uri,
        "sha256": art.sha256,
        "destination": region,
        "decision": decision.to_dict(),
    }


def download(session: Session, caller: Principal, art_id: str, now: datetime) -> dict[str, Any]:
    """Where to fetch the artifact from (access policy checked, audited)."""
    from policies import Action

    art = visible(session, caller, art_id)
    decision = residency.engine(session).authorize(
        _caller(caller), Action.READ, _facts(session, art)
    )
    audit_log.record(
        session,
        caller,
        "artifact.download",
        "artifact",
        art.id,
        stream=art.member_id,
        now=now,
        outcome="success" if decision.allowed else "denied",
        details=decision.to_dict(),
    )
    session.commit()
    if not decision.allowed:
        raise residency.ExportDenied(
            f"you may not read artifact {art.id}",
            code="access_denied",
            details={"decision": decision.to_dict()},
        )
    return {"artifact_id": art.id, "uri": art.uri, "sha256": art.sha256}
