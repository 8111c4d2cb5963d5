"""Group commit of submissions: concurrent POST /v1/jobs share a transaction, and nothing
about each one changes: its own job, first event and audit event, a valid chain, and
Idempotency-Key semantics, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.audit.store import verify_db
from controlplane.db.models import AuditEvent, AuditHead, Job, JobEvent
from controlplane.services import group_commit
from tests.conftest import World, bearer

LORA = {"kind": "lora", "model": "axk1-tiny", "gpus": 8, "inputs": ["alpha-corpus"]}


def engine_of(w: World) -> Engine:
    engine: Engine = w.client.app.state.engine  # type: ignore[attr-defined]
    return engine


@contextmanager
def writes_held(engine: Engine, member_id: str) -> Iterator[None]:
    """Hold what a batch needs (SQLite's write lock, PostgreSQL's audit head row of the
    member) so the first submission's batch waits and the others queue up behind it."""
    if engine.dialect.name == "sqlite":
        db = sqlite3.connect(str(engine.url.database), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("COMMIT")
            db.close()
        return
    with engine.connect() as conn:
        conn.execute(select(AuditHead.seq).where(AuditHead.stream == member_id).with_for_update())
        yield
        conn.commit()


def submit_together(w: World, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on threads while writes are held, release once all but the first are
    queued (so they commit in one batch), and return the responses in call order."""
    engine = engine_of(w)
    writer = group_commit.writer_for(engine)
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    with writes_held(engine, w.a.member["id"]):
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while writer.queued < len(calls) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.queued == len(calls) - 1
    for t in threads:
        t.join(60)
    return results


def post(w: World, body: dict[str, Any], key: str | None = None) -> Callable[[], Any]:
    headers = bearer(w.a.user_token)
    if key is not None:
        headers["Idempotency-Key"] = key
    return lambda: w.client.post("/v1/jobs", headers=headers, json=body)


def audit_submits(w: World) -> list[AuditEvent]:
    with Session(engine_of(w)) as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(AuditEvent.stream == w.a.member["id"], AuditEvent.action == "job.submit")
                .order_by(col(AuditEvent.seq))
            ).all()
        )


def chain_is_valid(w: World) -> None:
    with Session(engine_of(w)) as s:
        report = verify_db(s, None, None)
    assert report.ok, report.to_dict()


def test_parallel_submissions_each_get_a_job_an_event_and_an_audit_event(world: World) -> None:
    w = world
    before = audit_submits(w)
    n = 12
    responses = submit_together(w, [post(w, {**LORA, "name": f"p{i}"}) for i in range(n)])
    assert [r.status_code for r in responses] == [201] * n, [r.text for r in responses]
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == n
    with Session(engine_of(w)) as s:
        jobs = s.exec(select(Job).where(col(Job.id).in_(ids))).all()
        assert {j.id: j.name for j in jobs} == {ids[i]: f"p{i}" for i in range(n)}
        assert all(j.status == "QUEUED" for j in jobs)
        events = s.exec(select(JobEvent).where(col(JobEvent.job_id).in_(ids))).all()
        assert sorted(e.job_id for e in events) == sorted(ids)
        assert {e.type for e in events} == {"submitted"}
        if s.get_bind().dialect.name == "postgresql":
            # All but the first were written by one transaction.
            xids = s.exec(
                text("SELECT count(DISTINCT xmin::text) FROM job WHERE id = ANY(:ids)"),  # type: ignore[call-overload]
                params={"ids": ids},
            ).one()[0]
            assert xids == 2
    after = audit_submits(w)
    new = after[len(before) :]
    assert sorted(str(e.resource_id) for e in new) == sorted(ids)
    # Contiguous sequence numbers, each event chained to the one before it.
    seqs = [e.seq for e in new]
    assert seqs == list(range(seqs[0], seqs[0] + n))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(new))
    chain_is_valid(w)
    # Each audit event names its own request's job and details.
    by_job = {e.resource_id: e for e in new}
    for r in responses:
        assert by_job[r.json()["id"]].details["gpus"] == 8


def test_one_key_in_one_batch_makes_one_job_and_the_other_body_is_409(world: World) -> None:
    w = world
    with Session(engine_of(w)) as s:
        jobs_before = len(s.exec(select(Job)).all())
    audit_before = len(audit_submits(w))
    a_body = {**LORA, "name": "body-a"}
    b_body = {**LORA, "name": "body-b"}
    calls = [
        post(w, a_body, key="k1"),
        post(w, {**LORA, "name": "free-1"}),
        post(w, a_body, key="k1"),
        post(w, b_body, key="k1"),
        post(w, a_body, key="k1"),
        post(w, {**LORA, "name": "free-2"}),
        post(w, b_body, key="k1"),
        post(w, a_body, key="k1"),
        post(w, {**LORA, "name": "free-3"}),
    ]
    responses = submit_together(w, calls)
    keyed = [responses[i] for i in (0, 2, 3, 4, 6, 7)]
    free = [responses[i] for i in (1, 5, 8)]
    assert [r.status_code for r in free] == [201] * 3, [r.text for r in free]
    assert [r.status_code for r in keyed].count(201) == 1, [r.text for r in keyed]
    winner = next(r.json() for r in keyed if r.status_code == 201)
    for r in keyed:
        if r.status_code == 409:
            assert set(r.json()) == {"code", "message", "details"}
            assert r.json()["details"]["job_id"] == winner["id"]
            assert r.json()["code"] == "idempotency_conflict"
        else:
            assert r.status_code in (200, 201)
            assert r.json()["id"] == winner["id"] and r.json()["name"] == winner["name"]
            if r.status_code == 200:
                assert r.headers["Idempotent-Replayed"] == "true"
    # The losers of each body are exactly the other body's submissions.
    losing_name = "body-b" if winner["name"] == "body-a" else "body-a"
    bodies = [a_body, a_body, b_body, a_body, b_body, a_body]
    for body, r in zip(bodies, keyed, strict=True):
        assert (r.status_code == 409) == (body["name"] == losing_name)
    # Nothing half-written: one job per accepted submission, one audit event each.
    with Session(engine_of(w)) as s:
        assert len(s.exec(select(Job)).all()) == jobs_before + 4
    assert len(audit_submits(w)) == audit_before + 4
    chain_is_valid(w)
