"""Datasets and model inputs a member registers, with their residency labels and fingerprint.

A ``file://`` dataset must lie under the member's own data directory
(``<NURI_DATA_DIR>/<member name>/``) or be Nuri's shipped demo data; its SHA-256 and size are
computed at registration (and again when its URI changes). An ``s3://`` dataset is pinned by
the first job that reads it. Staging verifies every later read against the fingerprint, so
what a job reads is what was registered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, col, or_, select

from controlplane import residency
from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Dataset, Job, Member, Pool, Role
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, Forbidden, InvalidRequest, NotFound
from controlplane.jobstate import JobStatus
from controlplane.services import lookup, paging
from policies import LABEL_PARTS, InvalidLabels, Labels, narrowing, widening
from quotas.decisions import NO_ALLOWED_POOL

# The demo data shipped with Nuri: readable by every member.
SHIPPED_DATA = (Path(__file__).resolve().parents[1] / "demo_data").resolve()


def _file_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise InvalidRequest(
            "a file:// URI is absolute: file:///path/to/data",
            code="invalid_uri",
            details={"uri": uri},
        )
    return Path(unquote(parsed.path))


def fingerprint_for(
    session: Session, member_id: str, uri: str, data_dir: Path
) -> tuple[str | None, int | None]:
    """(sha256, size) of a dataset about to be registered at ``uri``; 4xx when it may not be.

    ``file://``: under the member's data directory (or the shipped demo data), no link
    leading anywhere else, read now. ``s3://``: pinned by the first job that reads it.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "s3":
        return None, None
    if scheme != "file":
        raise InvalidRequest(
            f"unsupported dataset URI {uri!r}: use file:// (under your data directory) or s3://",
            code="invalid_uri",
            details={"uri": uri, "schemes": ["file", "s3"]},
        )
    from workers.staging import StagingError, fingerprint

    member = session.get(Member, member_id)
    own = (data_dir / (member.name if member else member_id)).resolve()
    path = _file_path(uri)
    # Resolved first, so neither `..` nor a link can point a dataset at the database, the
    # audit key, another member's data or another job's directory.
    real = path.resolve()
    if real != path or not (real.is_relative_to(own) or real.is_relative_to(SHIPPED_DATA)):
        raise InvalidRequest(
            f"{uri} is outside your data directory ({own.as_uri()}/)",
            code="uri_not_allowed",
            details={"uri": uri, "data_dir": own.as_uri() + "/"},
        )
    try:
        fp = fingerprint(real.as_uri())
    except StagingError as exc:
        raise InvalidRequest(
            f"cannot read {uri}: {exc}", code="dataset_unreadable", details={"reason": exc.code}
        ) from None
    return fp.sha256, fp.size_bytes


MAX_CONFIG_BYTES = 1 << 20


def model_config(uri: str) -> dict[str, Any] | None:
    """The architecture of a ``file://`` model dataset (its ``config.json``), read when it is
    registered so the capacity planner can size jobs on it; None for ``s3://`` models."""
    if not uri.startswith("file://"):
        return None
    path = _file_path(uri) / "config.json"
    try:
        if path.is_symlink() or path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError("not a plain, small file")
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ValueError("no model_type")
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            "a model dataset is a directory with the model's config.json (and its weights)",
            code="not_a_model",
            details={"uri": uri, "reason": str(exc)[:200]},
        ) from None
    return config


def pin_fingerprints(session: Session, member_id: str, records: list[dict[str, Any]]) -> None:
    """Record what a job's first read of a not-yet-fingerprinted dataset found (s3://)."""
    for r in records:
        ds = session.get(Dataset, r.get("id"))
        if ds is None or ds.member_id != member_id or ds.sha256 is not None:
            continue
        if ds.uri != r.get("uri"):
            continue
        ds.sha256, ds.size_bytes = str(r["sha256"]), int(r["size_bytes"])
        session.add(ds)


def create_dataset(
    session: Session, caller: Principal, body: schemas.DatasetCreate, data_dir: Path
) -> Dataset:
    caller.require_write()
    member_id = caller.require_member()
    if session.exec(
        select(Dataset).where(Dataset.member_id == member_id, Dataset.name == body.name)
    ).first():
        raise Conflict(
            f"dataset {body.name!r} already exists",
            code="already_exists",
            details={"name": body.name},
        )
    sha256, size = fingerprint_for(session, member_id, body.uri, data_dir)
    config = model_config(body.uri) if body.kind == "model" else None
    row = Dataset(
        member_id=member_id,
        name=body.name,
        kind=body.kind,
        uri=body.uri,
        description=body.description,
        labels=body.labels.model_dump(mode="json"),
        sha256=sha256,
        size_bytes=size,
        provenance={"config": config} if config is not None else {},
    )
    session.add(row)
    audit_log.record(
        session,
        caller,
        "dataset.create",
        "dataset",
        row.id,
        stream=member_id,
        now=utcnow(),
        details={
            "name": row.name,
            "uri": row.uri,
            "labels": row.labels,
            "sha256": row.sha256,
            "size_bytes": row.size_bytes,
        },
    )
    session.commit()
    return row


def visible(session: Session, caller: Principal, ref: str) -> Dataset:
    """A dataset by id or (within the caller's member) by name; others' datasets are 404."""
    stmt = select(Dataset).where(or_(Dataset.id == ref, Dataset.name == ref))
    if not caller.reads_all_members:
        stmt = stmt.where(Dataset.member_id == (caller.member_id or ""))
    rows = session.exec(stmt).all()
    if len(rows) != 1:
        raise NotFound("dataset", ref)
    return rows[0]


def list_datasets(
    session: Session, caller: Principal, limit: int, cursor: str | None, member: str | None
) -> tuple[Sequence[Dataset], str | None]:
    stmt = lookup.scoped(select(Dataset), Dataset.member_id, caller)
    if member:
        stmt = stmt.where(Dataset.member_id == lookup.member(session, member, caller).id)
    return paging.page(session, stmt, Dataset.id, limit, cursor)


# Who may make a dataset's residency labels less strict (anyone who may write it may tighten).
WIDENS_LABELS = (Role.MEMBER_ADMIN, Role.PLATFORM_ADMIN)


def _label_change(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """Before, after, and the parts that widen and narrow; None when the labels are equal.
    Stored labels that no longer parse count as widening in every part."""
    after = Labels.from_dict(new)
    try:
        before: Labels | None = Labels.from_dict(stored)
    except InvalidLabels:
        before = None
    if before == after:
        return None
    return {
        "before": stored,
        "after": new,
        "widened": list(LABEL_PARTS) if before is None else widening(before, after),
        "narrowed": [] if before is None else narrowing(before, after),
    }


def _strand_queued_jobs(session: Session, row: Dataset, now: datetime) -> list[str]:
    """Queued jobs of the dataset's member that read it (an input, or the model or teacher
    for a model dataset) and that its new labels leave with no pool: their pending reason
    says so now instead of at the scheduler's next cycle (which filters by residency anyway,
    and writes every other reason). Returns their ids."""
    refs = {row.id, row.name} if row.kind == "model" else set()
    queued = session.connection().execute(
        sa_select(
            col(Job.id),
            col(Job.member_id),
            col(Job.model),
            col(Job.teacher),
            col(Job.inputs),
            col(Job.allowed_pools),
        ).where(col(Job.member_id) == row.member_id, col(Job.status) == JobStatus.QUEUED.value)
    )
    reading = [j for j in queued if row.id in j.inputs or j.model in refs or j.teacher in refs]
    if not reading:
        return []
    permitted = residency.allowed_pools_by_job(session, reading)
    every = session.exec(select(Pool.name)).all()
    stranded = [
        j.id
        for j in reading
        if not any(p in permitted.get(j.id, ()) for p in (j.allowed_pools or every))
    ]
    message = (
        f"no pool may run this job: the residency labels of {row.name!r} were changed "
        f"({now.isoformat()}) and allow none of the pools it may use"
    )
    for job_id in stranded:
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.status) == JobStatus.QUEUED.value)
            .values(
                reasons=[{"code": NO_ALLOWED_POOL, "message": message}],
                queue_position=None,
                eta=None,
            )
        )
    return stranded


def update_dataset(
    session: Session,
    caller: Principal,
    ref: str,
    body: schemas.DatasetUpdate,
    now: datetime,
    data_dir: Path,
) -> Dataset:
    row = visible(session, caller, ref)
    caller.require_write()
    changes = body.model_dump(exclude_unset=True, mode="json")
    relabel = None
    if changes.get("labels") is not None:
        # Compared with the labels as they are when this commits: a concurrent relabel waits.
        session.refresh(row, with_for_update=True)
        relabel = _label_change(row.labels, changes["labels"])
    if relabel is not None and relabel["widened"] and caller.role not in WIDENS_LABELS:
        # Labels only widen with authority. The refusal is kept; nothing else of the request is.
        ident, stream, version = row.id, row.member_id, row.version
        session.rollback()
        audit_log.record(
            session,
            caller,
            "dataset.update",
            "dataset",
            ident,
            stream=stream,
            now=now,
            outcome="denied",
            details={"code": "labels_widening_forbidden", **relabel, "version": version},
        )
        session.commit()
        raise Forbidden(
            "making a dataset's residency labels less strict needs the member admin (or the "
            f"platform admin); this change widens: {', '.join(relabel['widened'])}",
            code="labels_widening_forbidden",
            details={
                "widening": relabel["widened"],
                "before": relabel["before"],
                "after": relabel["after"],
                "role": caller.role.value,
                "required_roles": [r.value for r in WIDENS_LABELS],
            },
        )
    if changes.get("uri") is not None:
        # New data: a new fingerprint (or none yet, for s3://), so nothing stale is trusted.
        row.sha256, row.size_bytes = fingerprint_for(
            session, row.member_id, changes["uri"], data_dir
        )
        if row.kind == "model":
            config = model_config(changes["uri"])
            row.provenance = {**row.provenance, "config": config}
    for key, value in changes.items():
        if value is None:
            continue
        setattr(row, key, value)
    if changes:
        row.version += 1
        row.updated_at = now
    session.add(row)
    details: dict[str, Any] = {"changes": changes, "version": row.version}
    if relabel is not None:
        details["labels"] = relabel
        details["queued_jobs_without_pool"] = _strand_queued_jobs(session, row, now)
    audit_log.record(
        session,
        caller,
        "dataset.update",
        "dataset",
        row.id,
        stream=row.member_id,
        now=now,
        details=details,
    )
    session.commit()
    return row
