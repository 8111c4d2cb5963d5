"""One scheduler leader at a time: a lease row with a fencing token (SQLite and PostgreSQL).

``acquire`` takes or renews the lease; ``fence`` is the first statement of every scheduler
write transaction. It renews the lease only if the caller still holds it *with its token*;
zero rows updated means another instance took over, and the whole transaction is refused.
On PostgreSQL the UPDATE holds the lease row's lock until commit, so a new leader cannot take
over in the middle of a stale leader's transaction; on SQLite the database write lock does
the same.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.db.models import SchedulerLease

LEASE = "scheduler"


class NotLeader(Exception):
    """This instance does not (or no longer) hold the scheduler lease."""


def acquire(session: Session, holder: str, now: datetime, ttl_s: float) -> int | None:
    """Take or renew the lease; returns the fencing token, or None while another leads."""
    expires = now + timedelta(seconds=ttl_s)
    row = session.get(SchedulerLease, LEASE)
    if row is None:
        session.add(SchedulerLease(name=LEASE, holder=holder, token=1, expires_at=expires))
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return None
        return 1
    if row.holder == holder and row.expires_at > now:
        token = row.token
        session.rollback()
        try:
            fence(session, holder, token, now, ttl_s)
        except NotLeader:
            session.rollback()
            return None
        session.commit()
        return token
    if row.expires_at > now:
        session.rollback()
        return None
    # Expired: compare-and-set on the old token so two contenders cannot both win.
    old = row.token
    result = session.execute(
        update(SchedulerLease)
        .where(col(SchedulerLease.name) == LEASE, col(SchedulerLease.token) == old)
        .values(holder=holder, token=old + 1, expires_at=expires)
    )
    session.commit()
    return old + 1 if result.rowcount == 1 else None  # type: ignore[attr-defined]


def fence(session: Session, holder: str, token: int, now: datetime, ttl_s: float) -> None:
    """Renew inside the caller's transaction, or raise NotLeader (the caller rolls back)."""
    result = session.execute(
        update(SchedulerLease)
        .where(
            col(SchedulerLease.name) == LEASE,
            col(SchedulerLease.holder) == holder,
            col(SchedulerLease.token) == token,
        )
        .values(expires_at=now + timedelta(seconds=ttl_s))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise NotLeader(f"{holder} lost the scheduler lease (token {token})")


def release(session: Session, holder: str, token: int, now: datetime) -> None:
    """Step down cleanly so a standby takes over without waiting for expiry."""
    session.execute(
        update(SchedulerLease)
        .where(
            col(SchedulerLease.name) == LEASE,
            col(SchedulerLease.holder) == holder,
            col(SchedulerLease.token) == token,
        )
        .values(expires_at=now)
    )
    session.commit()


def current(session: Session) -> SchedulerLease | None:
    return session.exec(select(SchedulerLease).where(SchedulerLease.name == LEASE)).first()
