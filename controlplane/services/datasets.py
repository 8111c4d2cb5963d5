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

from sqlmodel import Session, or_, select

from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Dataset, Member
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, InvalidRequest, NotFound
from controlplane.services import lookup, paging

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
    audit_log.record(
        session,
        caller,
        "dataset.update",
        "dataset",
        row.id,
        stream=row.member_id,
        now=now,
        details={"changes": changes, "version": row.version},
    )
    session.commit()
    return row
