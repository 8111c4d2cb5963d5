"""/v1/artifacts and /v1/policies (residency dry-run)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from controlplane import residency
from controlplane.api import schemas
from controlplane.api.deps import CallerDep, PageDep, SessionDep, SettingsDep
from controlplane.auth import Origin, trace_id_from
from controlplane.db.models import JobKind, Pool
from controlplane.db.types import utcnow
from controlplane.errors import InvalidRequest
from controlplane.observability import tracing
from controlplane.services import artifact_content, artifacts, jobs, policies

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
def download_artifact(
    art_id: str, request: Request, session: SessionDep, caller: CallerDep
) -> schemas.ArtifactDownload:
    """A link to the artifact's content, valid for 5 minutes (access policy checked, audited).

    ``href`` needs no bearer token: it is bound to this artifact and to the caller."""
    key = artifact_content.ref_key(request.app.state.audit_key)
    return schemas.ArtifactDownload.model_validate(
        artifact_content.download(session, caller, art_id, utcnow(), key)
    )


@router.get(
    "/artifacts/{art_id}/content",
    operation_id="fetchArtifactContent",
    tags=["artifacts"],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The artifact: a single file as itself, a directory as a tar archive",
            "content": {"application/octet-stream": {}, "application/x-tar": {}},
        },
        403: {"model": schemas.ErrorBody, "description": "invalid_reference, access_denied"},
        404: {"model": schemas.ErrorBody, "description": "content_missing"},
        409: {"model": schemas.ErrorBody, "description": "not_served, unsafe_content"},
    },
)
def get_artifact_content(
    art_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    ref: Annotated[str, Query(description="from GET /v1/artifacts/{id}/download")] = "",
) -> StreamingResponse:
    """The artifact's bytes, for a link from ``GET .../download`` (no bearer token: the
    reference is the credential). Audited as ``artifact.fetch``."""
    origin = Origin(
        source_ip=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
        # The request's trace: its server span's when the API traces, else the caller's.
        trace_id=trace_id_from(tracing.submission_traceparent(request.headers.get("traceparent"))),
    )
    content = artifact_content.fetch(
        session,
        artifact_content.ref_key(request.app.state.audit_key),
        art_id,
        ref,
        utcnow(),
        settings.resolved_jobs_dir,
        settings.token_touch_interval_s,
        origin,
    )
    return StreamingResponse(
        content.chunks(),
        media_type=content.media_type,
        headers={
            "Content-Disposition": artifact_content.content_disposition(content.filename),
            "Content-Length": str(content.length),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/policies", operation_id="getPolicies", tags=["policies"])
def get_policies(session: SessionDep, _caller: CallerDep) -> dict[str, Any]:
    """The active policy set: its version, hash and rule ids."""
    return policies.describe(session)


@router.get("/policies/versions", operation_id="listPolicyVersions", tags=["policies"])
def list_policy_versions(
    session: SessionDep, caller: CallerDep
) -> schemas.Page[schemas.PolicyVersionPublic]:
    return schemas.Page(
        items=[
            schemas.PolicyVersionPublic.model_validate(r)
            for r in policies.list_versions(session, caller)
        ]
    )


@router.post(
    "/policies/versions", status_code=201, operation_id="createPolicyVersion", tags=["policies"]
)
def create_policy_version(
    body: schemas.PolicyVersionCreate, session: SessionDep, caller: CallerDep
) -> schemas.PolicyVersionPublic:
    """Store a new Cedar policy set (validated against the schema), optionally activating it."""
    row = policies.create_version(
        session, caller, body.policies, body.cedar_schema, body.note, body.activate, utcnow()
    )
    return schemas.PolicyVersionPublic.model_validate(row)


@router.post(
    "/policies/versions/{version_id}/activate",
    operation_id="activatePolicyVersion",
    tags=["policies"],
)
def activate_policy_version(
    version_id: Annotated[int, Path(ge=1, le=schemas.DB_INT_MAX)],
    session: SessionDep,
    caller: CallerDep,
) -> schemas.PolicyVersionPublic:
    return schemas.PolicyVersionPublic.model_validate(
        policies.activate(session, caller, version_id, utcnow())
    )


@router.post("/policies/revert", operation_id="revertPolicies", tags=["policies"])
def revert_policies(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Go back to the policy set shipped with this release."""
    policies.revert_to_shipped(session, caller, utcnow())
    return policies.describe(session)


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
        "policy_set_hash": residency.engine(session).policy_set_hash,
    }
