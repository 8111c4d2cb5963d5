"""Resolve references (id or name) with tenant scoping: what the caller cannot see is 404."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from sqlmodel import Session, or_, select
from sqlmodel.sql.expression import SelectOfScalar

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


class _Owned(Protocol):
    member_id: str


Row = TypeVar("Row", bound=_Owned)
S = TypeVar("S", bound=SelectOfScalar[Any])


def owned(session: Session, caller: Principal, model: type[Row], ident: str, kind: str) -> Row:
    """A member-owned row by id; another member's row is exactly as absent as a missing one."""
    row = session.get(model, ident)
    if row is None or not caller.can_see_member(row.member_id):
        raise NotFound(kind, ident)
    return row


def scoped(stmt: S, member_column: Any, caller: Principal) -> S:
    """Restrict a listing to the caller's member unless the caller reads every member."""
    if caller.reads_all_members:
        return stmt
    return stmt.where(member_column == (caller.member_id or ""))
