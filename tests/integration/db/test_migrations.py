"""Alembic migrations reach head on SQLite and PostgreSQL, and agree with the models."""

from __future__ import annotations

import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

import controlplane.db.models  # noqa: F401
from controlplane.db.engine import alembic_config, make_engine, migrate


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, SQLModel.metadata))


def test_upgrade_head_matches_the_models(empty_engine: Engine) -> None:
    engine = empty_engine
    assert inspect(engine).get_table_names() == []
    migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert {
        "member",
        "user",
        "apitoken",
        "pool",
        "node",
        "quota",
        "budget",
        "priorityclass",
        "dataset",
        "artifact",
        "job",
        "jobevent",
        "usagerecord",
    } <= tables
    assert _diff(engine) == []
    with engine.connect() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert head == "0012"


def test_migrate_is_idempotent_and_reversible(empty_engine: Engine) -> None:
    engine = empty_engine
    migrate(engine)
    migrate(engine)  # a second start changes nothing
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "job" not in inspect(engine).get_table_names()
    migrate(engine)
    assert _diff(engine) == []


def test_sqlite_runs_in_wal_mode(sqlite_engine: Engine) -> None:
    migrate(sqlite_engine)
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1


@pytest.mark.postgres
def test_replicas_starting_together_migrate_once(pg_empty_database: str) -> None:
    """Four processes' worth of engines migrate one empty PostgreSQL database at once (as API
    replicas and schedulers do when a release starts): all succeed, the schema is at head."""
    engines = [make_engine(pg_empty_database) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine: Engine) -> None:
        barrier.wait()
        try:
            migrate(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        assert _diff(engines[0]) == []
        with engines[0].connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [v for (v,) in versions] == ["0012"]
    finally:
        for e in engines:
            e.dispose()
