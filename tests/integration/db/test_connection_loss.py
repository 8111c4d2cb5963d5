"""Losing PostgreSQL connections: the pool pings a connection that sat idle before handing it
out (and replaces a dead one, the caller never notices); a connection in recent use is not
pinged, so when it died the request it serves fails with a clean 503, the pool replaces every
connection older than the failure, and the next request works. Real server-side kills
(``pg_terminate_backend``), no mocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from controlplane.db import engine as db_engine
from controlplane.db.engine import make_engine
from tests.conftest import bearer, build_world, make_client, ok

pytestmark = pytest.mark.postgres

LORA = {"kind": "lora", "model": "axk1-tiny", "gpus": 8, "inputs": ["alpha-corpus"]}


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    eng = make_engine(pg_database)
    yield eng
    eng.dispose()


def kill_backends(url: str) -> int:
    """Terminate every server process connected to ``url``'s database; how many there were."""
    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                ).all()
            )
    finally:
        admin.dispose()


def backend_pid(eng: Engine) -> int:
    with eng.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_idle_connection_is_pinged_and_replaced(
    pg_engine: Engine, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = backend_pid(pg_engine)
    assert kill_backends(pg_database) == 1
    monkeypatch.setattr(db_engine, "PING_IDLE_S", 0.0)  # every pooled connection counts as idle
    # The pooled connection is dead; the ping finds out and the pool connects afresh.
    second = backend_pid(pg_engine)
    assert second != first
    assert backend_pid(pg_engine) == second  # the new one is kept and reused


def test_recently_used_connection_is_not_pinged(
    pg_engine: Engine, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_engine, "PING_IDLE_S", 3600.0)
    first = backend_pid(pg_engine)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    from sqlalchemy import event

    event.listen(pg_engine, "before_cursor_execute", seen)
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first
    # Only the statement itself reached the server: no ping before it.
    assert statements == ["SELECT pg_backend_pid()"]
    assert kill_backends(pg_database) == 1
    with pytest.raises(Exception) as failed, pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert getattr(failed.value, "connection_invalidated", False)
    assert backend_pid(pg_engine) != first  # replaced after the failure


def test_api_answers_503_then_recovers(
    pg_engine: Engine, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_engine, "PING_IDLE_S", 3600.0)  # the pooled connections look busy
    world = build_world(make_client(pg_engine))
    client, headers = world.client, bearer(world.a.user_token)
    before = ok(client.get("/v1/jobs", headers=headers))["items"]
    assert kill_backends(pg_database) >= 1
    lost = client.post("/v1/jobs", headers=headers, json=LORA)
    assert lost.status_code == 503, lost.text
    body = lost.json()
    assert body["code"] == "database_unavailable"
    assert set(body) == {"code", "message", "details"}
    assert lost.headers["Retry-After"] == "1"
    assert "Traceback" not in lost.text
    # The pool dropped the connections older than the failure: the retry goes through, and
    # it is the only new job.
    created = ok(client.post("/v1/jobs", headers=headers, json=LORA), 201)
    after = ok(client.get("/v1/jobs", headers=headers))["items"]
    assert {j["id"] for j in after} - {j["id"] for j in before} == {created["id"]}
    audit = ok(client.get("/v1/audit/verify", headers=bearer(world.auditor_token)))
    assert audit["ok"] is True, audit
