"""Issue 17 item 8: kill -9 the control plane at random moments while jobs are submitted with
idempotency keys, admitted, run and preempted, on PostgreSQL, in both deployment modes.

After the last restart every job must reach a terminal state, and then:

* each idempotency key names exactly one job (the one every retry of it was answered with);
* no job FAILED (nothing in the workload can fail but the control plane or Ray), and no
  attempt ended but by success or preemption (Ray outlives the control plane);
* sampled from the database every ~0.5 s, the GPUs held by ADMITTED/RUNNING/PREEMPTING jobs
  never exceed the pool's capacity nor a member's nominal + borrowing limit;
* each attempt that ran has one closed usage record of exactly its run time x GPUs: from its
  RUNNING transition to the last thing its workers reported, within ``BILLING_SLACK_S``;
* the audit chain verifies, and every stream has a signed checkpoint;
* Ray holds no placement group, and stopping the deployment (`nuri down` for `nuri up`)
  leaves no process of it running.

Bounded: ``JOBS`` (14) jobs and ``KILLS`` (3) kills per mode: 42-61 s each on the quiet 2-core
VM (2026-12-06), ~2 min for the module; several minutes under a heavy neighbour load.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controlplane.audit import signing
from controlplane.audit.store import verify_db
from controlplane.db.engine import make_engine
from controlplane.db.models import Job, JobEvent, JobLog, JobMetric, Member, UsageRecord
from controlplane.jobstate import TERMINAL
from tests.integration.crash.harness import (
    GPUS_PER_NODE,
    MEMBERS,
    NODES,
    POOL,
    PREEMPTION_GRACE_S,
    Deployment,
    Processes,
    SingleHost,
    Split,
    ray_probe,
    setup_client,
    setup_world,
    short_home,
    synthetic_job,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.timeout(600)]

SEED = 17
# alpha: preemptible research jobs that borrow; beta: non-preemptible training that reclaims.
ALPHA_JOBS, BETA_JOBS = 9, 5
JOBS = ALPHA_JOBS + BETA_JOBS
JOB_GPUS = 4
KILLS = 3
SUBMIT_WINDOW_S = 25.0  # submissions spread over this many seconds
KILL_WINDOW_S = (4.0, 40.0)  # kills at seeded moments in this range (after start)
# How long the killed part stays down: with its restart, longer than BILLING_SLACK_S, so an
# attempt that ends during the outage shows whether it is billed to its end or to its notice.
DOWN_S = (2.0, 4.0)
SAMPLE_EVERY_S = 0.5
# An attempt is billed from its RUNNING transition to the last thing its workers reported (a
# preempted one: at least to the end of its grace), give or take one scheduler cycle and a
# status call (the heartbeat granularity).
BILLING_SLACK_S = 5.0
WAIT_TERMINAL_S = 300.0
HELD = ("ADMITTED", "RUNNING", "PREEMPTING")
# Both deployments preempt within the test (NURI_MIN_RUNTIME_S=0, NURI_PREEMPTION_GRACE_S=5).
MUST_PREEMPT = {"split": True, "single-host": True}


@dataclass(frozen=True)
class Submission:
    key: str
    member: str
    at: float
    body: dict[str, Any]


def workload(rng: random.Random) -> list[Submission]:
    subs = [
        Submission(
            f"crash-a-{i}",
            "alpha",
            0.0 if i < 3 else rng.uniform(0, SUBMIT_WINDOW_S),
            synthetic_job(JOB_GPUS, 16, "research"),
        )
        for i in range(ALPHA_JOBS)
    ]
    subs += [
        Submission(
            f"crash-b-{i}",
            "beta",
            rng.uniform(3, SUBMIT_WINDOW_S),
            synthetic_job(JOB_GPUS, 8, "training"),
        )
        for i in range(BETA_JOBS)
    ]
    return sorted(subs, key=lambda s: s.at)


def kill_plan(rng: random.Random, parts: tuple[str, ...]) -> list[tuple[float, str, float]]:
    """(moment, part, seconds down) per kill; every part at least once where KILLS allows."""
    chosen = list(parts)[:KILLS] + [rng.choice(parts) for _ in range(KILLS - len(parts))]
    rng.shuffle(chosen)
    moments = sorted(rng.uniform(*KILL_WINDOW_S) for _ in range(KILLS))
    return [(at, part, rng.uniform(*DOWN_S)) for at, part in zip(moments, chosen, strict=True)]


@dataclass
class Client:
    """Submits each job through the REST API, retrying with the same key until answered."""

    url: str
    tokens: dict[str, str]
    subs: list[Submission]
    answered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list)
    retries: int = 0

    def run(self, t0: float) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as http:
            for sub in self.subs:
                time.sleep(max(0.0, t0 + sub.at - time.monotonic()))
                self._submit(http, sub)
                # A second, deliberate replay of every key: still the same job.
                self._submit(http, sub)

    def _submit(self, http: httpx.Client, sub: Submission) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[sub.member]}", "Idempotency-Key": sub.key}
        deadline = time.monotonic() + WAIT_TERMINAL_S
        while time.monotonic() < deadline:
            try:
                resp = http.post("/v1/jobs", json=sub.body, headers=headers)
            except httpx.TransportError:
                self.retries += 1
                time.sleep(0.3)  # the API is down: retry with the same key
                continue
            if resp.status_code in (200, 201):
                self.answered[sub.key].add(resp.json()["id"])
                return
            if resp.status_code >= 500 or resp.status_code == 429:
                self.retries += 1
                time.sleep(0.3)
                continue
            self.errors.append(f"{sub.key}: HTTP {resp.status_code} {resp.text[:300]}")
            return
        self.errors.append(f"{sub.key}: never answered")


@dataclass
class Sampler:
    """GPUs held per pool and per member, read from the database every SAMPLE_EVERY_S."""

    engine: Engine
    limits: dict[str, int]  # member id -> nominal + borrowing
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        capacity = GPUS_PER_NODE * len(NODES)
        while not self.stop.wait(SAMPLE_EVERY_S):
            with Session(self.engine) as s:
                rows = s.exec(
                    select(Job.pool, Job.member_id, func.sum(Job.gpus))
                    .where(col(Job.status).in_(HELD))
                    .group_by(Job.pool, Job.member_id)
                ).all()
            self.samples += 1
            per_pool: dict[str | None, int] = defaultdict(int)
            for pool, member, gpus in rows:
                per_pool[pool] += int(gpus)
                if int(gpus) > self.limits[member]:
                    self.violations.append(f"member {member} holds {gpus} > {self.limits[member]}")
            for pool, gpus in per_pool.items():
                if pool != POOL or gpus > capacity:
                    self.violations.append(f"pool {pool} holds {gpus} of {capacity} GPUs")


@pytest.fixture(params=["split", "single-host"])
def deployment(request: pytest.FixtureRequest, pg_database: str) -> Iterator[Deployment]:
    home = short_home()
    (home / "logs").mkdir()
    procs = Processes(home, pg_database, home / "logs")
    dep: Deployment = Split(procs) if request.param == "split" else SingleHost(procs)
    try:
        yield dep
    finally:
        dep.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_control_plane_killed_at_random_loses_nothing(deployment: Deployment) -> None:
    started = time.monotonic()
    rng = random.Random(f"{SEED}-{deployment.name}")
    engine = make_engine(deployment.procs.db_url)
    tokens = setup_world(setup_client(engine, deployment.procs.home))
    with Session(engine) as s:
        ids = {m.name: m.id for m in s.exec(select(Member)).all()}
    limits = {ids[name]: nominal + borrowing for name, nominal, borrowing in MEMBERS}

    deployment.start()
    deployment.wait_healthy()
    subs = workload(rng)
    client = Client(deployment.url, tokens, subs)
    sampler = Sampler(engine, limits)
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=client.run, args=(t0,), daemon=True),
        threading.Thread(target=sampler.run, daemon=True),
    ]
    for t in threads:
        t.start()
    kills = kill_plan(rng, deployment.parts)
    for at, part, down in kills:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        deployment.kill(part)
        time.sleep(down)
        deployment.restart(part)
        deployment.wait_healthy()
    threads[0].join(WAIT_TERMINAL_S)
    assert not threads[0].is_alive(), "the client never finished submitting"

    def all_terminal() -> bool:
        with Session(engine) as s:
            left = s.exec(
                select(func.count()).where(col(Job.status).not_in([t.value for t in TERMINAL]))
            ).one()
            total = s.exec(select(func.count()).select_from(Job)).one()
        return left == 0 and total >= len(subs)

    try:
        wait_until(all_terminal, WAIT_TERMINAL_S, "every job terminal", poll=0.5)
    finally:
        sampler.stop.set()
        threads[1].join(10)
    run_s = time.monotonic() - started

    problems: list[str] = []
    problems += client.errors
    problems += check_keys(engine, client, subs)
    problems += check_outcomes(engine, MUST_PREEMPT[deployment.name])
    problems += [f"overcommitted: {v}" for v in sampler.violations[:10]]
    if sampler.samples < 20:
        problems.append(f"only {sampler.samples} capacity samples")
    problems += check_usage(engine)
    problems += check_audit(engine, deployment.procs.home)
    probe = ray_probe(deployment.ray_address(), deployment.procs.env())
    if probe["left"]:
        problems.append(f"placement groups left in Ray: {probe['left']}")
    summary = (
        f"{deployment.name}: {len(subs)} jobs, kills {[(round(a, 1), p) for a, p, _ in kills]}, "
        f"{client.retries} client retries, {sampler.samples} samples, {run_s:.0f}s"
    )
    engine.dispose()
    left = deployment.stop()  # `nuri down` for the single host
    if left:
        problems.append(f"still running after the stop: {left}")
    print(summary, *problems, sep="\n  ")
    assert not problems, summary + "\n" + "\n".join(problems) + "\n" + deployment.logs()[-6000:]


def check_keys(engine: Engine, client: Client, subs: list[Submission]) -> list[str]:
    out = []
    with Session(engine) as s:
        jobs = s.exec(select(Job)).all()
    by_key: dict[str | None, list[str]] = defaultdict(list)
    for job in jobs:
        by_key[job.idempotency_key].append(job.id)
    for sub in subs:
        stored, seen = by_key.get(sub.key, []), client.answered.get(sub.key, set())
        if len(stored) != 1 or seen != set(stored):
            out.append(f"key {sub.key}: jobs {stored}, answered {sorted(seen)}")
    if len(jobs) != len(subs):
        out.append(f"{len(jobs)} jobs for {len(subs)} keys")
    return out


def check_outcomes(engine: Engine, must_preempt: bool) -> list[str]:
    out = []
    with Session(engine) as s:
        jobs = s.exec(select(Job)).all()
        requeues: dict[str, list[str]] = defaultdict(list)
        for ev in s.exec(
            select(JobEvent).where(
                JobEvent.to_status == "QUEUED", col(JobEvent.from_status).is_not(None)
            )
        ).all():
            requeues[ev.job_id].append(f"attempt {ev.attempt}: {ev.message}")
    for job in jobs:
        if job.status != "SUCCEEDED":
            out.append(
                f"job {job.idempotency_key} {job.status} (attempt {job.attempt}): {job.reasons}"
            )
        # Ray outlives the control plane: an attempt ends by finishing or by preemption,
        # never because the control plane went away (issue 17 items 1 and 3).
        lost = job.attempt - 1 - job.times_preempted
        if lost > 0:
            out.append(
                f"job {job.idempotency_key}: {lost} attempt(s) lost with the control plane: "
                + "; ".join(requeues.get(job.id, []))
            )
    preempted = sum(j.times_preempted for j in jobs)
    if must_preempt and preempted == 0:
        out.append("no job was preempted")
    return out


def check_usage(engine: Engine) -> list[str]:
    """One closed record per attempt that ran, of exactly its run time x GPUs."""
    out = []
    with Session(engine) as s:
        jobs = {j.id: j for j in s.exec(select(Job)).all()}
        ran = {
            (e.job_id, e.attempt): e.at
            for e in s.exec(select(JobEvent).where(JobEvent.to_status == "RUNNING")).all()
        }
        last: dict[tuple[str, int], datetime] = {}
        for table in (JobLog, JobMetric):
            rows = s.exec(
                select(table.job_id, table.attempt, func.max(table.at)).group_by(
                    col(table.job_id), col(table.attempt)
                )
            ).all()
            for job_id, attempt, at in rows:
                key = (job_id, attempt)
                last[key] = max(at, last.get(key, at))
        # A preempted attempt holds its GPUs until its ranks stop or its grace ends: ranks
        # still starting when the notice came report nothing more, and are stopped then.
        noticed = {
            (e.job_id, e.attempt): e.at
            for e in s.exec(select(JobEvent).where(JobEvent.to_status == "PREEMPTING")).all()
        }
        records = s.exec(select(UsageRecord)).all()
    by_attempt: dict[tuple[str, int], list[UsageRecord]] = defaultdict(list)
    for rec in records:
        by_attempt[(rec.job_id, rec.attempt)].append(rec)
    for key in sorted(set(ran) | set(by_attempt)):
        name = f"{jobs[key[0]].idempotency_key} attempt {key[1]}"
        recs = by_attempt.get(key, [])
        if key not in ran:
            out.append(f"{name}: billed but never RUNNING")
            continue
        if len(recs) != 1 or recs[0].ended_at is None:
            out.append(f"{name}: {len(recs)} usage records, open: {[r.ended_at for r in recs]}")
            continue
        rec = recs[0]
        assert rec.ended_at is not None
        if rec.gpus != jobs[key[0]].gpus:
            out.append(f"{name}: billed for {rec.gpus} GPUs")
        if abs((rec.ended_at - rec.started_at).total_seconds() * rec.gpus - rec.gpu_seconds) > 1e-3:
            out.append(f"{name}: {rec.gpu_seconds} GPU-s is not its span x GPUs")
        if abs((rec.started_at - ran[key]).total_seconds()) > 1.0:
            out.append(f"{name}: billed from {rec.started_at}, RUNNING at {ran[key]}")
        end = last.get(key, rec.started_at)
        latest = end  # what may be billed at most (give or take the slack)
        if key in noticed:
            latest = max(end, noticed[key] + timedelta(seconds=PREEMPTION_GRACE_S))
        if (rec.ended_at - latest).total_seconds() > BILLING_SLACK_S or (
            rec.ended_at - end
        ).total_seconds() < -1.0:
            out.append(
                f"{name}: billed until {rec.ended_at:%H:%M:%S.%f}, last reported "
                f"{end:%H:%M:%S.%f}, billable until {latest:%H:%M:%S.%f}"
            )
    return out


def check_audit(engine: Engine, home: Path) -> list[str]:
    key = signing.load_public(
        signing.public_pem(signing.load_or_create(home / "audit-signing-key.pem"))
    )
    with Session(engine) as s:
        report = verify_db(s, key, None)
    out = [] if report.ok else [f"audit chain broken: {report.to_dict()}"]
    unsigned = [r.stream for r in report.streams if r.checkpoints == 0]
    if unsigned:
        out.append(f"audit streams never checkpointed: {unsigned}")
    return out
