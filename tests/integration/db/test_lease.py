"""Scheduler leader election with a fencing token, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controlplane.db.engine import migrate
from controlplane.scheduler import lease

T0 = datetime(2026, 11, 29, 12, tzinfo=UTC)


@pytest.fixture
def db(engine: Engine) -> Engine:
    migrate(engine)
    return engine


def acquire(db: Engine, holder: str, at: datetime, ttl: float = 10) -> int | None:
    with Session(db) as s:
        return lease.acquire(s, holder, at, ttl)


def test_one_leader_then_takeover_after_expiry(db: Engine) -> None:
    assert acquire(db, "a", T0) == 1
    assert acquire(db, "b", T0 + timedelta(seconds=1)) is None
    assert acquire(db, "a", T0 + timedelta(seconds=5)) == 1, "renewal keeps the token"
    # a stops renewing; its lease (renewed at +5 s) expires at +15 s.
    assert acquire(db, "b", T0 + timedelta(seconds=14)) is None
    assert acquire(db, "b", T0 + timedelta(seconds=16)) == 2
    # The old leader comes back: it is a standby now, and its token no longer fences.
    assert acquire(db, "a", T0 + timedelta(seconds=17)) is None
    with Session(db) as s, pytest.raises(lease.NotLeader):
        lease.fence(s, "a", 1, T0 + timedelta(seconds=17), 10)
    with Session(db) as s:
        lease.fence(s, "b", 2, T0 + timedelta(seconds=17), 10)
        s.commit()


def test_release_hands_over_at_once(db: Engine) -> None:
    assert acquire(db, "a", T0) == 1
    with Session(db) as s:
        lease.release(s, "a", 1, T0 + timedelta(seconds=1))
    assert acquire(db, "b", T0 + timedelta(seconds=1)) == 2


def test_contenders_race_and_exactly_one_wins(db: Engine) -> None:
    assert acquire(db, "old", T0) == 1
    later = T0 + timedelta(minutes=5)  # "old" expired long ago
    results: dict[str, int | None] = {}

    def go(name: str) -> None:
        try:
            results[name] = acquire(db, name, later)
        except Exception as exc:  # a lost race may surface as a lock error on SQLite
            results[name] = None
            assert "locked" in str(exc)

    threads = [threading.Thread(target=go, args=(f"c{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [n for n, tok in results.items() if tok is not None]
    assert len(winners) == 1, results
    assert results[winners[0]] == 2


def test_a_restarted_leader_with_the_same_name_takes_its_lease_back_at_once(db: Engine) -> None:
    """A scheduler killed while leading and restarted under the same holder name (kept under
    NURI_HOME) renews its own unexpired lease, same token, instead of waiting out its TTL;
    another holder still waits, and stale tokens stay fenced."""
    assert acquire(db, "host-a", T0, ttl=15) == 1
    # kill -9, restart two seconds later: the lease still has 13 s to run.
    assert acquire(db, "host-a", T0 + timedelta(seconds=2), ttl=15) == 1
    assert acquire(db, "standby", T0 + timedelta(seconds=3), ttl=15) is None
    # Restarted after the lease lapsed: taken back with a new token (as anyone would).
    assert acquire(db, "host-a", T0 + timedelta(seconds=60), ttl=15) == 2
    with Session(db) as s, pytest.raises(lease.NotLeader):
        lease.fence(s, "host-a", 1, T0 + timedelta(seconds=61), 15)
