"""Engines and sessions for SQLite (WAL) and PostgreSQL, and schema migration to head."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    # WAL lets readers proceed while the scheduler writes; NORMAL is durable across app
    # crashes in WAL mode; a busy timeout turns writer contention into waiting, not errors.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# The API's thread pool runs up to 40 requests at once. A pool smaller than the usual
# concurrency closes each connection it cannot keep on return and opens a new one on the next
# checkout: a forked backend on PostgreSQL, a connect plus the pragmas on SQLite, per request.
POOL_SIZE = 20
MAX_OVERFLOW = 20


def make_engine(url: str) -> Engine:
    """Create an engine with the right pragmas / pool settings for the backend."""
    if url.startswith("sqlite"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            engine = create_engine(
                url, connect_args={"check_same_thread": False}, poolclass=StaticPool
            )
        else:
            path = url.split("///", 1)[1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 10},
                pool_size=POOL_SIZE,
                max_overflow=MAX_OVERFLOW,
            )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)
    _ping_when_idle(engine)
    return engine


# A pooled connection idle this long is pinged before it is handed out (a restarted server or
# a dropped link is found there, and the pool replaces it); one in use more recently than that
# is not: SQLAlchemy's ``pool_pre_ping`` pings at *every* checkout, a round trip that cost a
# tenth of a job submission on PostgreSQL. A busy connection that did die fails its request
# with a 503 and makes the pool replace every connection older than the failure.
PING_IDLE_S = 5.0


def _ping_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["nuri_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("nuri_idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return  # new (just connected) or recently in use
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure means: not usable
            raise DisconnectionError("pooled connection failed its ping") from exc


# pg_advisory_xact_lock key of schema migrations ("NURI" in ASCII).
MIGRATION_LOCK = 0x4E555249


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to head. Runs on the given engine's connection (works for :memory:)."""
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several replicas start at once (API pods, schedulers): one migrates, the others
            # wait here and then find the schema at head. The lock ends with the transaction,
            # which holds the whole upgrade (DDL is transactional on PostgreSQL).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
