"""The job state machine, exhaustively, on a real database with guarded writes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane.db.engine import migrate
from controlplane.db.models import Job, JobEvent, Member, User
from controlplane.errors import InvalidTransition, NotFound
from controlplane.jobstate import TERMINAL, TRANSITIONS, JobStatus, allowed, transition
from controlplane.services.inventory import ensure_priority_classes

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ALL = list(JobStatus)


def make_job(s: Session, status: JobStatus = JobStatus.QUEUED) -> str:
    member = s.exec(select(Member)).first()
    if member is None:
        ensure_priority_classes(s)
        member = Member(name="m", display_name="M")
        s.add(member)
        s.add(
            User(id="usr_t", member_id=member.id, email="u@m.example", name="U", role="member_user")
        )
        s.flush()
    job = Job(
        member_id=member.id,
        submitter_id="usr_t",
        name="j",
        kind="lora",
        model="axk1",
        gpus=8,
        nodes=1,
        gpus_per_node=8,
        priority_class="research",
        max_runtime_s=3600,
        preemptible=True,
        status=status.value,
    )
    s.add(job)
    s.commit()
    return job.id


@pytest.fixture
def db(engine: Engine) -> Engine:
    migrate(engine)
    return engine


def test_table_shape() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    for terminal in TERMINAL:
        assert TRANSITIONS[terminal] == frozenset(), "terminal states are absorbing"
    for src, dsts in TRANSITIONS.items():
        assert src not in dsts, "no self-loops"
    # Every non-terminal state can reach a terminal one.
    for src in set(JobStatus) - TERMINAL:
        assert TRANSITIONS[src] & TERMINAL or any(
            TRANSITIONS[d] & TERMINAL for d in TRANSITIONS[src]
        )


def test_every_pair_is_allowed_or_refused_exactly(db: Engine) -> None:
    with Session(db) as s:
        for src, dst in itertools.product(ALL, ALL):
            job_id = make_job(s, src)
            if allowed(src, dst):
                t = transition(s, job_id, expected=src, to=dst, now=NOW, actor="test")
                s.commit()
                job = s.get(Job, job_id)
                assert job is not None
                s.refresh(job)
                assert job.status == dst.value
                assert t.src is src and t.dst is dst
            else:
                with pytest.raises(InvalidTransition):
                    transition(s, job_id, expected=src, to=dst, now=NOW)
                s.rollback()
                job = s.get(Job, job_id)
                assert job is not None
                s.refresh(job)
                assert job.status == src.value, "a refused transition writes nothing"


def test_stale_expectation_is_refused(db: Engine) -> None:
    with Session(db) as s:
        job_id = make_job(s)
        transition(s, job_id, expected=JobStatus.QUEUED, to=JobStatus.ADMITTED, now=NOW)
        s.commit()
        # A second writer still believing the job is QUEUED loses, and learns the truth.
        with pytest.raises(InvalidTransition) as err:
            transition(s, job_id, expected=JobStatus.QUEUED, to=JobStatus.CANCELLED, now=NOW)
        assert err.value.details["status"] == "ADMITTED"
        s.rollback()
        with pytest.raises(NotFound):
            transition(s, "job_missing", expected=JobStatus.QUEUED, to=JobStatus.ADMITTED, now=NOW)


def test_requeue_increments_attempt_and_stamps_times(db: Engine) -> None:
    with Session(db) as s:
        job_id = make_job(s)
        path = [
            JobStatus.ADMITTED,
            JobStatus.RUNNING,
            JobStatus.PREEMPTING,
            JobStatus.QUEUED,
            JobStatus.ADMITTED,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
        ]
        src = JobStatus.QUEUED
        for i, dst in enumerate(path):
            transition(s, job_id, expected=src, to=dst, now=NOW + timedelta(minutes=i))
            src = dst
        s.commit()
        job = s.get(Job, job_id)
        assert job is not None
        s.refresh(job)
        assert job.attempt == 2
        assert job.finished_at == NOW + timedelta(minutes=6)
        assert job.started_at == NOW + timedelta(minutes=5)
        events = s.exec(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()  # type: ignore[arg-type]
        assert [e.to_status for e in events] == [p.value for p in path]
        assert [e.attempt for e in events] == [1, 1, 1, 2, 2, 2, 2]


def test_transition_refuses_unknown_fields(db: Engine) -> None:
    with Session(db) as s:
        job_id = make_job(s)
        with pytest.raises(ValueError, match="cannot set"):
            transition(
                s,
                job_id,
                expected=JobStatus.QUEUED,
                to=JobStatus.ADMITTED,
                now=NOW,
                member_id="mem_other",
            )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attempts=st.lists(st.sampled_from(ALL), min_size=1, max_size=12))
def test_random_walks_follow_the_table(sqlite_engine: Engine, attempts: list[JobStatus]) -> None:
    migrate(sqlite_engine)
    with Session(sqlite_engine) as s:
        job_id = make_job(s)
        status, applied, attempt = JobStatus.QUEUED, 0, 1
        for dst in attempts:
            try:
                transition(s, job_id, expected=status, to=dst, now=NOW)
                s.commit()
            except InvalidTransition:
                s.rollback()
                assert not allowed(status, dst)
                continue
            assert allowed(status, dst)
            if dst is JobStatus.QUEUED:
                attempt += 1
            status = dst
            applied += 1
        job = s.get(Job, job_id)
        assert job is not None
        s.refresh(job)
        assert job.status == status.value and job.attempt == attempt
        n = len(s.exec(select(JobEvent).where(JobEvent.job_id == job_id)).all())
        assert n == applied
