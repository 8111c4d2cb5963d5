"""Versioned policy sets: stored, validated, activated by platform admins, all audited."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from controlplane import residency
from controlplane.audit import log as audit_log
from controlplane.audit.chain import PLATFORM_STREAM
from controlplane.auth import Principal
from controlplane.db.models import PolicyVersion
from controlplane.errors import Forbidden, InvalidRequest, NotFound
from policies import PolicyEngine, PolicySetInvalid
from policies.policy_set import shipped_sources


def describe(session: Session) -> dict[str, Any]:
    engine = residency.sync(session, force=True)
    row = session.exec(select(PolicyVersion).where(col(PolicyVersion.active).is_(True))).first()
    return {
        "source": "stored" if row else "shipped",
        "id": row.id if row else None,
        "version": engine.version,
        "policy_set_hash": engine.policy_set_hash,
        "rule_ids": list(engine.policy_set.rule_ids()),
    }


def list_versions(session: Session, caller: Principal) -> Sequence[PolicyVersion]:
    if not caller.reads_all_members:
        raise Forbidden("policy versions are visible to platform admins and auditors")
    return session.exec(select(PolicyVersion).order_by(col(PolicyVersion.id))).all()


def create_version(
    session: Session,
    caller: Principal,
    policy_text: str,
    schema_text: str | None,
    note: str,
    activate: bool,
    now: datetime,
) -> PolicyVersion:
    """Validate and store a policy set; activate it at once when asked."""
    caller.require_platform_admin()
    schema = schema_text if schema_text is not None else shipped_sources()[1]
    try:
        engine = PolicyEngine.from_text(policy_text, schema, "candidate")
    except PolicySetInvalid as exc:
        raise InvalidRequest(
            "the policy set does not validate",
            code="policy_set_invalid",
            details={"problems": list(exc.problems) or [str(exc)]},
        ) from None
    row = PolicyVersion(
        policy_text=policy_text,
        schema_text=schema,
        policy_set_hash=engine.policy_set_hash,
        version="pending",
        note=note,
        created_by=caller.user_id,
        created_at=now,
    )
    session.add(row)
    session.flush()
    row.version = f"v{row.id}+{engine.policy_set_hash[:12]}"
    audit_log.record(
        session,
        caller,
        "policy.create",
        "policy",
        str(row.id),
        stream=PLATFORM_STREAM,
        now=now,
        details={
            "policy_set_hash": row.policy_set_hash,
            "note": note,
            "rule_ids": list(engine.policy_set.rule_ids()),
        },
    )
    if activate:
        _activate(session, caller, row, now)
    session.commit()
    residency.sync(session, force=True)
    return row


def _activate(session: Session, caller: Principal, row: PolicyVersion, now: datetime) -> None:
    previous = residency.engine(session).policy_set_hash
    session.execute(update(PolicyVersion).values(active=False))
    session.execute(
        update(PolicyVersion).where(col(PolicyVersion.id) == row.id).values(active=True)
    )
    audit_log.record(
        session,
        caller,
        "policy.activate",
        "policy",
        str(row.id),
        stream=PLATFORM_STREAM,
        now=now,
        details={"policy_set_hash": row.policy_set_hash, "previous_policy_set_hash": previous},
    )


def activate(session: Session, caller: Principal, version_id: int, now: datetime) -> PolicyVersion:
    caller.require_platform_admin()
    row = session.get(PolicyVersion, version_id)
    if row is None:
        raise NotFound("policy version", str(version_id))
    _activate(session, caller, row, now)
    session.commit()
    session.refresh(row)
    residency.sync(session, force=True)
    return row


def revert_to_shipped(session: Session, caller: Principal, now: datetime) -> None:
    caller.require_platform_admin()
    previous = residency.engine(session).policy_set_hash
    session.execute(update(PolicyVersion).values(active=False))
    audit_log.record(
        session,
        caller,
        "policy.activate",
        "policy",
        "shipped",
        stream=PLATFORM_STREAM,
        now=now,
        details={
            "policy_set_hash": residency.shipped_engine().policy_set_hash,
            "previous_policy_set_hash": previous,
        },
    )
    session.commit()
    residency.sync(session, force=True)
