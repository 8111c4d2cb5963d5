"""The audit log in the real databases: triggers, tampering, checkpoints, export, concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, select

from controlplane.audit import signing, store
from controlplane.db.models import AuditEvent
from tests.conftest import World, bearer, ok


def engine_of(w: World) -> Engine:
    return w.client.app.state.engine  # type: ignore[attr-defined, no-any-return]


def verify(w: World) -> dict[str, Any]:
    return ok(w.client.get("/v1/audit/verify", headers=bearer(w.auditor_token)))


def stream_report(w: World, stream: str) -> dict[str, Any]:
    report = verify(w)
    return next(s for s in report["streams"] if s["stream"] == stream)


def raw(engine: Engine, *statements: str) -> None:
    """Change the audit table as an attacker with database access would: triggers off."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE auditevent DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER auditevent_no_update"))
            conn.execute(text("DROP TRIGGER auditevent_no_delete"))
        for stmt in statements:
            conn.execute(text(stmt))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE auditevent ENABLE TRIGGER USER"))


# A job of member alpha on the world's dataset.
LORA = {"kind": "lora", "model": "axk1-tiny", "gpus": 8, "inputs": ["alpha-corpus"]}


def submit_jobs(w: World, n: int) -> None:
    for i in range(n):
        ok(
            w.client.post(
                "/v1/jobs",
                headers=bearer(w.a.user_token),
                json={**LORA, "gpus": 1, "name": f"a{i}"},
            ),
            201,
        )


def test_every_change_is_recorded_with_its_context(world: World) -> None:
    resp = world.client.post(
        "/v1/jobs",
        headers={
            **bearer(world.a.user_token),
            "X-Request-ID": "req-42",
            "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
        },
        json=LORA,
    )
    job = ok(resp, 201)
    ok(
        world.client.post(
            f"/v1/jobs/{job['id']}/cancel",
            headers=bearer(world.a.user_token),
            json={"reason": "oops"},
        )
    )
    events = ok(
        world.client.get(
            "/v1/audit/events", headers=bearer(world.auditor_token), params={"limit": 1000}
        )
    )["items"]
    actions = [e["action"] for e in events]
    for action in (
        "pool.create",
        "member.create",
        "user.create",
        "token.create",
        "quota.create",
        "budget.create",
        "dataset.create",
        "job.submit",
        "job.cancel",
        "auth.token_use",
    ):
        assert action in actions, action
    submit = next(
        e for e in events if e["action"] == "job.submit" and e["resource_id"] == job["id"]
    )
    assert submit["stream"] == world.a.member["id"]
    assert submit["actor"] == world.a.user["id"] and submit["actor_role"] == "member_user"
    assert submit["request_id"] == "req-42" and submit["trace_id"] == "ab" * 16
    assert submit["source_ip"] == "testclient"
    assert submit["details"]["gpus"] == 8
    # Reading the log is itself recorded.
    again = ok(
        world.client.get(
            "/v1/audit/events", headers=bearer(world.auditor_token), params={"limit": 1000}
        )
    )["items"]
    assert any(e["action"] == "audit.read" for e in again)
    assert verify(world)["ok"] is True


def test_sequences_are_contiguous_per_stream(world: World) -> None:
    submit_jobs(world, 5)
    with Session(engine_of(world)) as s:
        rows = s.exec(select(AuditEvent)).all()
    by: dict[str, list[int]] = {}
    for r in rows:
        by.setdefault(r.stream, []).append(r.seq)
    for stream, seqs in by.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), stream


def test_database_refuses_update_and_delete(world: World) -> None:
    eng = engine_of(world)
    ok(world.client.post("/v1/audit/checkpoints", headers=world.root))  # rows in both tables
    for stmt in (
        "UPDATE auditevent SET outcome = 'denied'",
        "DELETE FROM auditevent",
        "UPDATE auditcheckpoint SET seq = 0",
        "DELETE FROM auditcheckpoint",
    ):
        with pytest.raises(DBAPIError, match="append-only"), eng.begin() as conn:
            conn.execute(text(stmt))
    if eng.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), eng.begin() as conn:
            conn.execute(text("TRUNCATE auditevent"))
    assert verify(world)["ok"] is True


@pytest.mark.parametrize("op", ["modify", "delete", "reorder", "truncate"])
def test_tampering_names_the_first_bad_seq(world: World, op: str) -> None:
    submit_jobs(world, 6)
    stream = world.a.member["id"]
    ok(world.client.post("/v1/audit/checkpoints", headers=world.root))
    with Session(engine_of(world)) as s:
        seqs = sorted(s.exec(select(AuditEvent.seq).where(AuditEvent.stream == stream)).all())
    head, k = seqs[-1], seqs[-1] - 3
    where = f"stream = '{stream}'"
    if op == "modify":
        raw(
            engine_of(world),
            f"UPDATE auditevent SET details = '{{\"gpus\": 512}}' WHERE {where} AND seq = {k}",
        )
        expected = k
    elif op == "delete":
        raw(engine_of(world), f"DELETE FROM auditevent WHERE {where} AND seq = {k}")
        expected = k
    elif op == "reorder":
        raw(
            engine_of(world),
            f"UPDATE auditevent SET seq = -1 WHERE {where} AND seq = {k}",
            f"UPDATE auditevent SET seq = {k} WHERE {where} AND seq = {k + 1}",
            f"UPDATE auditevent SET seq = {k + 1} WHERE {where} AND seq = -1",
        )
        expected = k
    else:
        raw(engine_of(world), f"DELETE FROM auditevent WHERE {where} AND seq > {k}")
        expected = k + 1
    report = stream_report(world, stream)
    assert report["ok"] is False
    assert report["first_bad_seq"] == expected, report
    assert head >= expected
    # Other streams are unaffected.
    other = stream_report(world, world.b.member["id"])
    assert other["ok"] is True


def test_export_verifies_offline_and_detects_edits(world: World, tmp_path: Path) -> None:
    submit_jobs(world, 3)
    ok(world.client.post("/v1/audit/checkpoints", headers=world.root))
    resp = world.client.get("/v1/audit/export", headers=bearer(world.auditor_token))
    assert resp.status_code == 200 and resp.headers["content-type"] == store.MEDIA_TYPE
    files = store.write_export(resp.iter_bytes(), tmp_path / "export").paths
    assert {f.name for f in files} == {
        "events.jsonl",
        "checkpoints.jsonl",
        "public_key.pem",
        "manifest.json",
    }
    report = store.verify_export(tmp_path / "export")
    assert report.ok and len(report.streams) >= 3
    pub = signing.load_public((tmp_path / "export" / "public_key.pem").read_bytes())
    first_cp = (tmp_path / "export" / "checkpoints.jsonl").read_bytes().splitlines()[0]
    assert signing.key_id(pub) == json.loads(first_cp)["key_id"]
    lines = (tmp_path / "export" / "events.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"outcome": "success"', '"outcome": "denied"')
    (tmp_path / "export" / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert not store.verify_export(tmp_path / "export").ok


def test_concurrent_appends_keep_one_chain(world: World) -> None:
    errors: list[str] = []

    def go(i: int) -> None:
        r = world.client.post(
            "/v1/jobs",
            headers=bearer(world.a.user_token),
            json={**LORA, "gpus": 1, "name": f"c{i}"},
        )
        if r.status_code != 201:
            errors.append(r.text)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    report = stream_report(world, world.a.member["id"])
    assert report["ok"] is True, report
