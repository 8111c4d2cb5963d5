"""Resolve references (id or name) with tenant scoping: what the caller cannot see is 404."""

from __future__ import annotations

from sqlmodel import Session, or_, select

from controlplane.auth import Principal
from controlplane.db.models import Member, Pool
from controlplane.errors import NotFound


def member(session: Session, ref: str, caller: Principal | None = None) -> Member:
    row = session.exec(select(Member).where(or_(Member.id == ref, Member.name == ref))).first()
    if row is None or (caller is not None and not caller.can_see_member(row.id)):
        raise NotFound("member", ref)
    return row


def pool(session: Session, ref: str) -> Pool:
    row = session.exec(select(Pool).where(or_(Pool.id == ref, Pool.name == ref))).first()
    if row is None:
        raise NotFound("pool", ref)
    return row
