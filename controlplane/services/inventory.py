"""Pools, nodes, priority classes, quotas and budgets (the platform admin's registry)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import MAXYEAR, MINYEAR, UTC, datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from controlplane.api import schemas
from controlplane.audit import log as audit_log
from controlplane.audit.chain import PLATFORM_STREAM as PLATFORM
from controlplane.auth import Principal
from controlplane.db.models import Budget, Node, NodeStatus, Pool, PriorityClass, Quota, UsageRecord
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, InvalidRequest, NotFound
from controlplane.services import catalog, lookup, paging
from controlplane.serving.metering import months_between, tokens_charged
from controlplane.usage import running_gpu_seconds
from quotas.budgets import forecast as budget_forecast
from quotas.snapshot import Budget as QuotaBudget

DEFAULT_PRIORITY_CLASSES = (
    PriorityClass(
        name="production-inference",
        value=1000,
        preemptible=False,
        description="Serving traffic; never preempted, only inside nominal quota.",
    ),
    PriorityClass(
        name="training",
        value=500,
        preemptible=False,
        description="Scheduled training runs; never preempted, inside nominal quota.",
    ),
    PriorityClass(
        name="research",
        value=100,
        preemptible=True,
        description="Experiments; may borrow idle capacity and be preempted.",
    ),
    PriorityClass(
        name="best-effort",
        value=0,
        preemptible=True,
        description="Runs only on capacity nobody else wants.",
    ),
)


def ensure_priority_classes(session: Session) -> None:
    """Insert the default classes that are missing (idempotent)."""
    existing = set(session.exec(select(PriorityClass.name)).all())
    for pc in DEFAULT_PRIORITY_CLASSES:
        if pc.name not in existing:
            session.add(PriorityClass(**pc.model_dump()))


def list_priority_classes(session: Session) -> Sequence[PriorityClass]:
    return session.exec(select(PriorityClass).order_by(col(PriorityClass.value).desc())).all()


# --- pools and nodes -----------------------------------------------------------------------


def pool_capacity(session: Session, pool_id: str) -> tuple[int, int]:
    """(node count, GPUs) of the pool's nodes that are not down."""
    row = session.exec(
        select(func.count(col(Node.id)), func.coalesce(func.sum(Node.gpus), 0)).where(
            Node.pool_id == pool_id, Node.status != NodeStatus.DOWN.value
        )
    ).one()
    return int(row[0]), int(row[1])


def pool_public(session: Session, row: Pool) -> schemas.PoolPublic:
    nodes, gpus = pool_capacity(session, row.id)
    out = schemas.PoolPublic.model_validate(row)
    out.node_count, out.total_gpus = nodes, gpus
    return out


def create_pool(session: Session, caller: Principal, body: schemas.PoolCreate) -> Pool:
    caller.require_platform_admin()
    if session.exec(select(Pool).where(Pool.name == body.name)).first():
        raise Conflict(
            f"pool {body.name!r} already exists", code="already_exists", details={"name": body.name}
        )
    domains = list(dict.fromkeys(body.interconnect_domains)) or [f"{body.name}-d0"]
    row = Pool(
        **body.model_dump(
            exclude={"node_count", "interconnect_domains", "default_borrowing_limit"}
        ),
        interconnect_domains=domains,
        default_borrowing_limit=schemas.borrowing_limit_of(body.default_borrowing_limit),
    )
    row.max_classification = body.max_classification.value
    session.add(row)
    session.flush()
    per_domain = -(-body.node_count // len(domains)) if body.node_count else 0
    for i in range(body.node_count):
        session.add(
            Node(
                name=f"{body.name}-{i:03d}",
                pool_id=row.id,
                domain=domains[i // per_domain],
                gpus=body.gpus_per_node,
            )
        )
    audit_log.record(
        session,
        caller,
        "pool.create",
        "pool",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json"),
    )
    session.commit()
    catalog.invalidate(session)
    return row


def list_pools(session: Session) -> Sequence[Pool]:
    return session.exec(select(Pool).order_by(Pool.name)).all()


def update_pool(session: Session, caller: Principal, ref: str, body: schemas.PoolUpdate) -> Pool:
    caller.require_platform_admin()
    row = lookup.pool(session, ref)
    for key, value in body.model_dump(exclude_unset=True).items():
        if value is None and key == "default_borrowing_limit":
            raise InvalidRequest(
                'default_borrowing_limit cannot be null: give 0, a number of GPUs or "unlimited"',
                details={"field": key, "expected": '0, a number of GPUs or "unlimited"'},
            )
        if value is None and key != "certification":
            raise InvalidRequest(f"{key} cannot be null", details={"field": key})
        if key == "default_borrowing_limit":
            value = schemas.borrowing_limit_of(value)
        setattr(row, key, value.value if hasattr(value, "value") else value)
    session.add(row)
    audit_log.record(
        session,
        caller,
        "pool.update",
        "pool",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json", exclude_unset=True),
    )
    session.commit()
    return row


def create_node(session: Session, caller: Principal, body: schemas.NodeCreate) -> Node:
    caller.require_platform_admin()
    pool = lookup.pool(session, body.pool)
    if session.exec(select(Node).where(Node.name == body.name)).first():
        raise Conflict(
            f"node {body.name!r} already exists", code="already_exists", details={"name": body.name}
        )
    gpus = body.gpus or pool.gpus_per_node
    if gpus > pool.gpus_per_node:
        raise InvalidRequest(
            f"pool {pool.name} has {pool.gpus_per_node} GPUs per node; a node cannot have {gpus}",
            details={"pool": pool.name, "gpus_per_node": pool.gpus_per_node},
        )
    domain = body.domain or pool.interconnect_domains[0]
    if domain not in pool.interconnect_domains:
        pool.interconnect_domains = [*pool.interconnect_domains, domain]
        session.add(pool)
    row = Node(name=body.name, pool_id=pool.id, domain=domain, gpus=gpus)
    session.add(row)
    audit_log.record(
        session,
        caller,
        "node.create",
        "node",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json"),
    )
    session.commit()
    catalog.invalidate(session)
    return row


def list_nodes(
    session: Session, limit: int, cursor: str | None, pool: str | None
) -> tuple[Sequence[Node], str | None]:
    stmt = select(Node)
    if pool:
        stmt = stmt.where(Node.pool_id == lookup.pool(session, pool).id)
    return paging.page(session, stmt, Node.id, limit, cursor)


def get_node(session: Session, ref: str) -> Node:
    row = session.exec(select(Node).where((Node.id == ref) | (Node.name == ref))).first()
    if row is None:
        raise NotFound("node", ref)
    return row


def update_node(session: Session, caller: Principal, ref: str, body: schemas.NodeUpdate) -> Node:
    caller.require_platform_admin()
    row = get_node(session, ref)
    if body.status is not None:
        if body.status is not NodeStatus.QUARANTINED:
            row.quarantine_reason = None  # an admin lifting a quarantine clears its reason
        row.status = body.status.value
    if body.domain is not None:
        row.domain = body.domain
    session.add(row)
    audit_log.record(
        session,
        caller,
        "node.update",
        "node",
        row.id,
        stream=PLATFORM,
        now=utcnow(),
        details=body.model_dump(mode="json", exclude_unset=True),
    )
    session.commit()
    catalog.invalidate(session)
    return row


# --- quotas --------------------------------------------------------------------------------


def _check_nominal_fits(session: Session, pool: Pool, quota_id: str | None, nominal: int) -> None:
    """Guarantees the pool cannot honour are refused: sum of nominal <= the pool's GPUs."""
    others = session.exec(
        select(func.coalesce(func.sum(Quota.nominal_gpus), 0)).where(
            Quota.pool_id == pool.id, Quota.id != (quota_id or "")
        )
    ).one()
    _, capacity = pool_capacity(session, pool.id)
    if int(others) + nominal > capacity:
        raise InvalidRequest(
            f"nominal quotas in {pool.name} would total {int(others) + nominal} GPUs but the pool "
            f"has {capacity}",
            code="quota_exceeds_capacity",
            details={
                "pool": pool.name,
                "capacity_gpus": capacity,
                "other_nominal_gpus": int(others),
                "requested_nominal_gpus": nominal,
            },
        )


def create_quota(session: Session, caller: Principal, body: schemas.QuotaCreate) -> Quota:
    caller.require_platform_admin()
    member = lookup.member(session, body.member, caller)
    pool = lookup.pool(session, body.pool)
    if session.exec(
        select(Quota).where(Quota.member_id == member.id, Quota.pool_id == pool.id)
    ).first():
        raise Conflict(
            f"{member.name} already has a quota in {pool.name}; update it instead",
            code="already_exists",
            details={"member": member.name, "pool": pool.name},
        )
    _check_nominal_fits(session, pool, None, body.nominal_gpus)
    row = Quota(
        member_id=member.id,
        pool_id=pool.id,
        nominal_gpus=body.nominal_gpus,
        borrowing_limit=body.borrowing_limit,
        lending_limit=body.lending_limit,
    )
    session.add(row)
    audit_log.record(
        session,
        caller,
        "quota.create",
        "quota",
        row.id,
        stream=member.id,
        now=utcnow(),
        details={
            "pool": pool.name,
            "nominal_gpus": row.nominal_gpus,
            "borrowing_limit": row.borrowing_limit,
            "lending_limit": row.lending_limit,
        },
    )
    session.commit()
    return row


def list_quotas(
    session: Session,
    caller: Principal,
    limit: int,
    cursor: str | None,
    member: str | None,
    pool: str | None,
) -> tuple[Sequence[Quota], str | None]:
    stmt = lookup.scoped(select(Quota), Quota.member_id, caller)
    if member:
        stmt = stmt.where(Quota.member_id == lookup.member(session, member, caller).id)
    if pool:
        stmt = stmt.where(Quota.pool_id == lookup.pool(session, pool).id)
    return paging.page(session, stmt, Quota.id, limit, cursor)


def get_quota(session: Session, caller: Principal, quota_id: str) -> Quota:
    return lookup.owned(session, caller, Quota, quota_id, "quota")


def update_quota(
    session: Session, caller: Principal, quota_id: str, body: schemas.QuotaUpdate, now: datetime
) -> Quota:
    row = get_quota(session, caller, quota_id)
    caller.require_platform_admin()
    changes = body.model_dump(exclude_unset=True)
    if "nominal_gpus" in changes:
        if changes["nominal_gpus"] is None:
            raise InvalidRequest("nominal_gpus cannot be null", details={"field": "nominal_gpus"})
        pool = session.get(Pool, row.pool_id)
        if pool is None:
            raise NotFound("pool", row.pool_id)
        _check_nominal_fits(session, pool, row.id, changes["nominal_gpus"])
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = now
    session.add(row)
    audit_log.record(
        session,
        caller,
        "quota.update",
        "quota",
        row.id,
        stream=row.member_id,
        now=now,
        details=changes,
    )
    session.commit()
    return row


# --- budgets -------------------------------------------------------------------------------

# ASCII digits only (``\d`` matches Arabic-Indic and fullwidth digits too); matched with
# ``fullmatch``, as ``$`` lets a trailing newline through.
_PERIOD = re.compile(r"([0-9]{4})-(Q[1-4]|H[12]|[0-9]{2})")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """UTC start (inclusive) and end (exclusive) of ``2026-Q4``, ``2026-H1`` or ``2026-11``.

    A period must lie inside the dates a ``datetime`` holds: year 0 and a period ending on
    10000-01-01 (``9999-Q4``) are refused with ``period_out_of_range``, never a 500.
    """
    m = _PERIOD.fullmatch(period)
    if not m:
        raise InvalidRequest(f"bad period {period!r}", details={"period": period})
    year, part = int(m.group(1)), m.group(2)
    if part.startswith("Q"):
        first, months = 3 * (int(part[1]) - 1) + 1, 3
    elif part.startswith("H"):
        first, months = 6 * (int(part[1]) - 1) + 1, 6
    else:
        first, months = int(part), 1
        if not 1 <= first <= 12:
            raise InvalidRequest(f"bad month in period {period!r}", details={"period": period})
    end_year, end_month = year + (first + months - 1) // 12, (first + months - 1) % 12 + 1
    if year < MINYEAR or end_year > MAXYEAR:
        raise InvalidRequest(
            f"period {period!r} is out of range: periods run from 0001-01 to 9999-11 "
            "(9999-Q3, 9999-H1)",
            code="period_out_of_range",
            details={"period": period, "first": "0001-01", "last": "9999-11"},
        )
    return datetime(year, first, 1, tzinfo=UTC), datetime(end_year, end_month, 1, tzinfo=UTC)


def used_gpu_hours(
    session: Session, member_id: str, start: datetime, end: datetime, now: datetime | None = None
) -> float:
    """GPU-hours of closed and running attempts inside [start, end) (records split monthly)."""
    rows = session.exec(
        select(UsageRecord).where(
            UsageRecord.member_id == member_id,
            col(UsageRecord.started_at) >= start,
            col(UsageRecord.started_at) < end,
        )
    ).all()
    now = now or utcnow()
    return sum(running_gpu_seconds(r, now) for r in rows) / 3600.0


def budget_public(session: Session, row: Budget) -> schemas.BudgetPublic:
    """The budget with what was used so far and, for a period under way, the forecast of
    when it runs out at the member's current burn (``quotas.budgets.forecast``)."""
    now = utcnow()
    out = schemas.BudgetPublic.model_validate(row)
    out.used_gpu_hours = used_gpu_hours(session, row.member_id, row.starts_at, row.ends_at, now)
    out.used_tokens = tokens_charged(
        session, row.member_id, months_between(row.starts_at, row.ends_at)
    )
    if row.starts_at <= now < row.ends_at:
        in_use = session.exec(
            select(func.coalesce(func.sum(UsageRecord.gpus), 0)).where(
                UsageRecord.member_id == row.member_id, col(UsageRecord.ended_at).is_(None)
            )
        ).one()
        seen = budget_forecast(
            QuotaBudget(
                row.starts_at.timestamp(),
                row.ends_at.timestamp(),
                row.gpu_hours,
                out.used_gpu_hours,
            ),
            int(in_use),
            now.timestamp(),
        )
        out.forecast = schemas.BudgetForecast(
            remaining_gpu_hours=round(seen.remaining_gpu_hours, 3),
            gpus_in_use=int(in_use),
            current_burn_gpu_hours_per_hour=seen.current_burn_gpu_hours_per_hour,
            average_burn_gpu_hours_per_hour=round(seen.average_burn_gpu_hours_per_hour, 3),
            exhausted_at=_instant(seen.exhausted_at),
            lasts_the_period=seen.lasts_the_period,
        )
    return out


# The last moment a datetime holds: a large budget at a slow burn runs out after it.
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC).timestamp()


def _instant(at: float | None) -> datetime | None:
    """A forecast's moment as a datetime; one past year 9999 is none, never an overflow: every
    period ends before it, so the forecast already says the budget lasts the period."""
    if at is None or not at < _LAST_INSTANT:
        return None
    return datetime.fromtimestamp(at, UTC)


def create_budget(session: Session, caller: Principal, body: schemas.BudgetCreate) -> Budget:
    caller.require_platform_admin()
    member = lookup.member(session, body.member, caller)
    if session.exec(
        select(Budget).where(Budget.member_id == member.id, Budget.period == body.period)
    ).first():
        raise Conflict(
            f"{member.name} already has a budget for {body.period}",
            code="already_exists",
            details={"member": member.name, "period": body.period},
        )
    start, end = period_bounds(body.period)
    row = Budget(
        member_id=member.id,
        period=body.period,
        starts_at=start,
        ends_at=end,
        gpu_hours=body.gpu_hours,
        tokens=body.tokens,
    )
    session.add(row)
    audit_log.record(
        session,
        caller,
        "budget.create",
        "budget",
        row.id,
        stream=member.id,
        now=utcnow(),
        details={"period": row.period, "gpu_hours": row.gpu_hours, "tokens": row.tokens},
    )
    session.commit()
    return row


def list_budgets(
    session: Session, caller: Principal, limit: int, cursor: str | None, member: str | None
) -> tuple[Sequence[Budget], str | None]:
    stmt = lookup.scoped(select(Budget), Budget.member_id, caller)
    if member:
        stmt = stmt.where(Budget.member_id == lookup.member(session, member, caller).id)
    return paging.page(session, stmt, Budget.id, limit, cursor)


def get_budget(session: Session, caller: Principal, budget_id: str) -> Budget:
    return lookup.owned(session, caller, Budget, budget_id, "budget")


def update_budget(
    session: Session, caller: Principal, budget_id: str, body: schemas.BudgetUpdate, now: datetime
) -> Budget:
    row = get_budget(session, caller, budget_id)
    caller.require_platform_admin()
    changes = body.model_dump(include=body.model_fields_set & {"gpu_hours", "tokens"})
    if changes.get("gpu_hours", 0) is None:
        raise InvalidRequest("gpu_hours cannot be null", details={"field": "gpu_hours"})
    for name, value in changes.items():
        setattr(row, name, value)
    row.updated_at = now
    session.add(row)
    audit_log.record(
        session,
        caller,
        "budget.update",
        "budget",
        row.id,
        stream=row.member_id,
        now=now,
        details=changes,
    )
    session.commit()
    return row
