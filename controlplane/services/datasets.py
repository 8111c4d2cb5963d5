"""Datasets and model inputs a member registers, with their residency labels."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, or_, select

from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.auth import Principal
from controlplane.db.models import Dataset
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, NotFound
from controlplane.services import lookup, paging


def create_dataset(session: Session, caller: Principal, body: schemas.DatasetCreate) -> Dataset:
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
    row = Dataset(
        member_id=member_id,
        name=body.name,
        kind=body.kind,
        uri=body.uri,
        description=body.description,
        labels=body.labels.model_dump(mode="json"),
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
        details={"name": row.name, "uri": row.uri, "labels": row.labels},
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
    session: Session, caller: Principal, ref: str, body: schemas.DatasetUpdate, now: datetime
) -> Dataset:
    row = visible(session, caller, ref)
    caller.require_write()
    changes = body.model_dump(exclude_unset=True, mode="json")
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
