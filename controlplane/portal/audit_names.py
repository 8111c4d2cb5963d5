"""Names for the ids in the audit page's rows: actors, streams and targets, in one query.

An audit event stores ids (they never change, names may); people read names. The rows of one
page are resolved together, in a single ``UNION ALL`` over the named tables, and scoped like
every listing: a caller who reads every member (platform admin, auditor) gets every name, a
member's user only the names of its own member's users, jobs, datasets, artifacts,
endpoints and tokens (and the pools and nodes, which every caller may list). An id without a
visible name is shown as the id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import String, literal, union_all
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from controlplane.auth import Principal
from controlplane.db.models import (
    ApiToken,
    Artifact,
    Dataset,
    Endpoint,
    Job,
    Member,
    Node,
    Pool,
    User,
)

# Resource types whose rows belong to a member: (model, its member column).
_OWNED: dict[str, Any] = {
    "user": User,
    "job": Job,
    "dataset": Dataset,
    "artifact": Artifact,
    "endpoint": Endpoint,
    "token": ApiToken,
}
# Resource types every caller may list.
_SHARED: dict[str, Any] = {"pool": Pool, "node": Node}

Names = dict[tuple[str, str], str]


def wanted(events: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """The ids to name, per kind: actors are users, streams are members, targets by type."""
    ids: dict[str, set[str]] = {}
    for e in events:
        ids.setdefault("user", set()).add(str(e.get("actor") or ""))
        ids.setdefault("member", set()).add(str(e.get("stream") or ""))
        kind, ref = e.get("resource_type"), e.get("resource_id")
        if ref and (kind in _OWNED or kind in _SHARED or kind == "member"):
            ids.setdefault(str(kind), set()).add(str(ref))
    return {k: {i for i in v if i} for k, v in ids.items() if any(v)}


def names_for(session: Session, caller: Principal, events: Iterable[Mapping[str, Any]]) -> Names:
    """``{(kind, id): name}`` for the ids of ``events`` the caller may see named."""
    ids = wanted(events)
    every = caller.reads_all_members
    own = caller.member_id or ""
    parts = []
    for kind, refs in sorted(ids.items()):
        model: Any = _OWNED.get(kind) or _SHARED.get(kind) or (Member if kind == "member" else None)
        if model is None or not refs:
            continue
        query = sa_select(
            literal(kind, String).label("kind"), col(model.id), col(model.name)
        ).where(col(model.id).in_(sorted(refs)))
        if not every:
            if model is Member:
                query = query.where(col(Member.id) == own)
            elif kind in _OWNED:
                query = query.where(col(model.member_id) == own)
        parts.append(query)
    if not parts:
        return {}
    rows = session.connection().execute(union_all(*parts)).all()
    return {(str(kind), str(ref)): str(name) for kind, ref, name in rows}
