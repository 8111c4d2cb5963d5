"""/v1/artifacts and /v1/policies (residency dry-run)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlmodel import col, select

from controlplane import residency
from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep
from controlplane.db.models import JobKind, Pool
from controlplane.db.types import utcnow
from controlplane.errors import InvalidRequest
from controlplane.services import artifacts, jobs

router = APIRouter(prefix="/v1")


@router.get("/artifacts", operation_id="listArtifacts", tags=["artifacts"])
def list_artifacts(
    session: SessionDep, caller: CallerDep, page: PageDep
) -> schemas.Page[schemas.ArtifactPublic]:
    rows, nxt = artifacts.list_artifacts(session, caller, page.limit, page.cursor)
    return schemas.Page(
        items=[schemas.ArtifactPublic.model_validate(r) for r in rows], next_cursor=nxt
    )


@router.get("/artifacts/{art_id}", operation_id="getArtifact", tags=["artifacts"])
def get_artifact(art_id: str, session: SessionDep, caller: CallerDep) -> schemas.ArtifactPublic:
    return schemas.ArtifactPublic.model_validate(artifacts.visible(session, caller, art_id))


@router.post("/artifacts/{art_id}/export", operation_id="exportArtifact", tags=["artifacts"])
def export_artifact(
    art_id: str, body: schemas.ExportRequest, session: SessionDep, caller: CallerDep
) -> dict[str, Any]:
    return artifacts.export(
        session,
        caller,
        art_id,
        body.region,
        body.jurisdiction,
        body.max_classification.value,
        utcnow(),
    )


@router.get("/artifacts/{art_id}/download", operation_id="downloadArtifact", tags=["artifacts"])
def download_artifact(art_id: str, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    return artifacts.download(session, caller, art_id, utcnow())


@router.get("/policies", operation_id="getPolicies", tags=["policies"])
def get_policies(_caller: CallerDep) -> dict[str, Any]:
    engine = residency.engine()
    return {"version": engine.version, "policy_set_hash": engine.policy_set_hash}


@router.post("/policies/where", operation_id="whereMayJobRun", tags=["policies"])
def where(body: schemas.WhereRequest, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Dry run: for each pool, may a job with this model and these inputs run there, and why."""
    member_id = caller.require_member()
    probe = schemas.JobCreate(kind=JobKind.INFERENCE, model=body.model, gpus=1, inputs=body.inputs)
    input_ids = jobs.input_ids_of(session, member_id, probe)
    jobs.check_model(session, member_id, body.model)
    pools = None
    if body.pools is not None:
        pools = list(session.exec(select(Pool).where(col(Pool.name).in_(body.pools))).all())
        missing = sorted(set(body.pools) - {p.name for p in pools})
        if missing:
            raise InvalidRequest(
                f"unknown pool {missing[0]!r}", code="unknown_pool", details={"unknown": missing}
            )
    decisions = residency.where_may_run(session, member_id, body.model, input_ids, pools)
    label = residency.effective_output_labels(session, member_id, body.model, input_ids)
    return {
        "allowed_pools": sorted(n for n, d in decisions.items() if d.allowed),
        "pools": {n: d.to_dict() for n, d in sorted(decisions.items())},
        "output_labels": label.to_dict(),
        "policy_set_hash": residency.engine().policy_set_hash,
    }
