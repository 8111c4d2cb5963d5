"""ETAs of jobs held back by quota or budget (issue 16, item 7).

A job the quota tree refuses gets the time its member's quota frees (running work ending at
its declared max runtime), combined with the pool's capacity, or no estimate with the reason
saying so; a job over its GPU-hour budget gets no estimate. Neither drifts as ``now``
advances over an unchanged snapshot, and computing them never changes a decision.
Table-driven cases first, then property tests over the worlds of test_engine_properties.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import test_engine_properties as props
from engine_builders import ClusterBuilder, cluster, make_job, make_running
from hypothesis import given
from hypothesis import strategies as st

from quotas import decisions as codes
from quotas.decisions import Decisions, Pending
from quotas.engine import admit
from quotas.snapshot import Budget, Quota, Snapshot

NOW = 10_000.0

# -- table-driven cases ------------------------------------------------------------------------


def _limited(gpus: int, priority: str = "training") -> ClusterBuilder:
    """m1 may hold 8 GPUs (nominal 4 + borrowing 4) and holds them: 4 until NOW + 500, 4
    until NOW + 2000; plenty of free GPUs, so only its quota holds ``j`` back."""
    return (
        cluster()
        .pool(nodes=4)
        .member("m1", nominal=4, borrowing_limit=4)
        .member("m2", nominal=28)
        .running(
            make_running("r-early").on("h200-0", 4).started(NOW - 100).runtime(600),
            make_running("r-late").on("h200-1", 4).started(NOW - 100).runtime(2100),
        )
        .pending(make_job("j").gpus(gpus).priority(priority))
    )


def _nominal_only() -> ClusterBuilder:
    """m1's non-preemptible work fills its nominal 8 until NOW + 700 and NOW + 3000."""
    return (
        cluster()
        .pool(nodes=4)
        .member("m1", nominal=8)
        .member("m2", nominal=24)
        .running(
            make_running("p1")
            .on("h200-0", 2)
            .priority("production-inference")
            .started(NOW)
            .runtime(700),
            make_running("p2")
            .on("h200-1", 6)
            .priority("production-inference")
            .started(NOW)
            .runtime(3000),
        )
    )


def _capacity_later() -> ClusterBuilder:
    """m1's quota frees at NOW + 100, but the pool has 4 GPUs for it only at NOW + 5000."""
    return (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=2, borrowing_limit=2)
        .member("m2", nominal=14)  # the cohort has room: only m1's own limit and the pool
        .running(
            make_running("mine").on("h200-0", 2).started(NOW).runtime(100),
            make_running("theirs", "m2").on("h200-0", 6).started(NOW).runtime(5000),
        )
        .pending(make_job("j").gpus(4))
    )


def _cohort() -> ClusterBuilder:
    """m1 has no quota of its own; m2 uses all the cohort's until NOW + 3000."""
    return (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=0)
        .member("m2", nominal=8)
        .running(make_running("r2", "m2").on("h200-0", 8).started(NOW).runtime(3000))
        .pending(make_job("j").gpus(4))
    )


ETA_CASES = [
    pytest.param(
        _limited(4),
        codes.QUOTA_EXCEEDED,
        NOW + 500,
        ("4 of the member's GPUs in h200", "job r-early"),
        id="borrowing limit: frees with the member's earliest ending job",
    ),
    pytest.param(
        _limited(8),
        codes.QUOTA_EXCEEDED,
        NOW + 2000,
        ("8 of the member's GPUs in h200", "job r-late"),
        id="borrowing limit: needs both of its jobs to end",
    ),
    pytest.param(
        _limited(16),
        codes.QUOTA_EXCEEDED,
        None,
        ("no estimate", "nominal quota + borrowing limit"),
        id="larger than nominal + borrowing limit: no estimate",
    ),
    pytest.param(
        _nominal_only().pending(make_job("j").gpus(4).priority("production-inference")),
        codes.NON_PREEMPTIBLE_OVER_NOMINAL,
        NOW + 3000,
        ("8 of the member's GPUs in h200", "job p2"),
        id="non-preemptible: when enough of its nominal frees",
    ),
    pytest.param(
        _nominal_only().pending(make_job("j").gpus(16).priority("production-inference")),
        codes.NON_PREEMPTIBLE_OVER_NOMINAL,
        None,
        ("no estimate", "more than the nominal 8"),
        id="non-preemptible larger than nominal: no estimate",
    ),
    pytest.param(
        _capacity_later(),
        codes.QUOTA_EXCEEDED,
        NOW + 5000,
        ("job mine",),
        id="quota frees first, capacity later: the later of the two",
    ),
    pytest.param(
        _cohort(),
        codes.COHORT_EXHAUSTED,
        NOW + 3000,
        ("release 8 GPUs (0 of them the member's)", "job r2"),
        id="cohort exhausted: when the borrowed quota comes back",
    ),
]


@pytest.mark.parametrize(("builder", "code", "eta", "says"), ETA_CASES)
def test_quota_blocked_eta(
    builder: ClusterBuilder, code: str, eta: float | None, says: tuple[str, ...]
) -> None:
    snapshot = builder.obj()
    decisions = admit(snapshot, NOW)
    assert decisions.admitted == () and decisions.preempted == ()
    pending = decisions.pending_by_id()["j"]
    assert pending.reasons[0].code == code
    assert pending.eta == eta
    for text in says:
        assert text in pending.reasons[0].message
    # The same snapshot a little later: the ETA does not move.
    later = admit(snapshot, NOW + 90).pending_by_id()["j"]
    assert later.eta == eta


def test_budget_blocked_job_has_no_estimate_and_says_why() -> None:
    budget = Budget(0.0, NOW + 86_400, limit_gpu_hours=10.0)
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=8, budget=budget)
        .pending(make_job("j").gpus(8).runtime(7200))  # 16 GPU-hours > 10
    )
    pending = admit(builder.obj(), NOW).pending_by_id()["j"]
    assert pending.reasons[0].code == codes.BUDGET_EXHAUSTED
    assert pending.eta is None
    message = pending.reasons[0].message
    assert "no estimate" in message and "next period" in message and "in 24.0h" in message


def test_jobs_behind_a_quota_blocked_job_keep_their_capacity_eta() -> None:
    """A job held back by its quota takes no GPUs in the fluid schedule of the others."""
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=0, borrowing_limit=0)
        .member("m2", nominal=8)
        .running(make_running("r", "m2").on("h200-0", 8).started(NOW).runtime(1000))
        .pending(
            make_job("blocked", "m1").gpus(8).submitted(0),
            make_job("next", "m2").gpus(8).submitted(1),
        )
    )
    pending = admit(builder.obj(), NOW).pending_by_id()
    assert pending["blocked"].eta is None  # nominal 0, no borrowing: never
    assert "no estimate" in pending["blocked"].reasons[0].message
    assert pending["next"].eta == NOW + 1000


# -- properties ---------------------------------------------------------------------------------


@st.composite
def quota_worlds(draw: st.DrawFn) -> props.World:
    """A world of test_engine_properties with tight borrowing limits, warmed up by a few
    cycles (jobs run their whole max runtime) so members hold work up to their limits."""
    world = draw(props.worlds())
    members = []
    for member in world.members:
        quotas = {
            pool: replace(q, borrowing_limit=draw(st.sampled_from([0, 1, 2, 4, None])))
            for pool, q in member.quotas.items()
        }
        members.append(replace(member, quotas=quotas))
    world.members = tuple(members)
    now = 1000.0
    for _ in range(draw(st.integers(0, 3))):
        decisions = admit(world.snapshot(), now)
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime
        world.apply(decisions, now)
        now += 300.0
        world.advance(now)
    for j in range(draw(st.integers(0, 10))):
        job_id = f"late{j:02d}"
        job = draw(props.jobs(job_id, world.pools, list(world.members), False))
        world.pending[job_id] = job
    return world


QUOTA_CODES = (codes.QUOTA_EXCEEDED, codes.NON_PREEMPTIBLE_OVER_NOMINAL)
NOW_P = 2000.0


def _quota_held(
    snapshot: Snapshot, decisions: Decisions, held_by: tuple[str, ...] = QUOTA_CODES
) -> list[tuple[Pending, str]]:
    """Waiting single-pool jobs the quota tree holds back (``held_by``), with that code."""
    jobs = {j.job_id: j for j in snapshot.pending}
    reserved = {r.job_id for r in decisions.reservations}
    found = []
    for p in decisions.pending:
        job = jobs.get(p.job_id)
        if job is None or len(job.allowed_pools) != 1 or p.job_id in reserved:
            continue
        held = [r.code for r in p.reasons if r.code in held_by]
        if held and not any(
            r.code in (codes.WAITING_FOR_PREEMPTION, codes.BUDGET_EXHAUSTED) for r in p.reasons
        ):
            found.append((p, held[0]))
    return found


def _earliest_room(snapshot: Snapshot, decisions: Decisions, now: float, job_id: str) -> float:
    """The earliest time the job's member could be under its limit for it: its own work in
    the pool (running, started this cycle, preempted this cycle) ending, earliest first.
    ``inf`` when even all of it ending is not enough."""
    job = next(j for j in snapshot.pending if j.job_id == job_id)
    pool = job.allowed_pools[0]
    member = next(m for m in snapshot.members if m.name == job.member)
    quota = member.quotas.get(pool, Quota(0))
    pending = decisions.pending_by_id()[job_id]
    code = next(r.code for r in pending.reasons if r.code in QUOTA_CODES)
    limit = quota.nominal
    if code == codes.QUOTA_EXCEEDED:
        assert quota.borrowing_limit is not None
        limit += quota.borrowing_limit
    leaving = {v: pre.grace_deadline for pre in decisions.preempted for v in pre.victims}
    ends: list[tuple[float, int]] = []
    for r in snapshot.running:
        if r.member == job.member and r.pool == pool:
            end = r.preempting_until or max(now, r.started_at + r.max_runtime)
            ends.append((min(end, leaving.get(r.job_id, end)), r.gpus))
    by_id = {j.job_id: j for j in snapshot.pending}
    for adm in decisions.admitted:
        started = by_id[adm.job_id]
        if started.member == job.member and adm.pool == pool:
            ends.append((now + started.max_runtime, started.gpus))
    deficit = sum(g for _, g in ends) + job.gpus - limit
    freed = 0
    for end, gpus in sorted(ends):
        if freed >= deficit:
            break
        freed += gpus
        if freed >= deficit:
            return max(now, end)
    return now if deficit <= 0 else float("inf")


@props.PROPERTY
@given(quota_worlds())
def test_quota_etas_never_precede_the_members_room_and_change_no_decision(
    world: props.World,
) -> None:
    now = NOW_P
    for _ in range(3):
        snapshot = world.snapshot()
        full = admit(snapshot, now)
        quiet = admit(replace(snapshot, config=replace(snapshot.config, explain=False)), now)
        assert (quiet.admitted, quiet.preempted, quiet.reservations) == (
            full.admitted,
            full.preempted,
            full.reservations,
        )
        for p in full.pending:
            assert p.eta is None or p.eta >= now
            if p.reasons[0].code == codes.BUDGET_EXHAUSTED:
                assert p.eta is None
                assert "no estimate" in p.reasons[0].message
        for p, code in _quota_held(snapshot, full):
            room = _earliest_room(snapshot, full, now, p.job_id)
            message = next(r.message for r in p.reasons if r.code == code)
            if p.eta is None:
                continue  # no estimate (never fits the quota, or the pool never has room)
            assert p.eta >= room, (p, room)
            assert "no estimate" not in message
            assert "quota frees when" in message
        for adm in full.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime
        world.apply(full, now)
        now += 600.0
        world.advance(now)


@props.PROPERTY
@given(quota_worlds(), st.integers(1, 7200))
def test_quota_etas_do_not_drift_while_nothing_changes(world: props.World, delay: int) -> None:
    """Once a cycle decides nothing, the same snapshot later (before the ETA) gives the same
    ETA to every job its member's quota holds back, and no estimate stays no estimate."""
    now = NOW_P
    for _ in range(6):  # settle: apply decisions until a cycle admits and preempts nothing
        decisions = admit(world.snapshot(), now)
        if not decisions.admitted and not decisions.preempted:
            break
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime
        world.apply(decisions, now)
    else:
        return
    snapshot = world.snapshot()
    later = now + delay
    again = admit(snapshot, later)
    if again.admitted or again.preempted or again.reservations != decisions.reservations:
        return  # the world did change (a minimum runtime passed, a budget window shrank ...)
    after = again.pending_by_id()
    for p, _ in _quota_held(snapshot, decisions, (*QUOTA_CODES, codes.COHORT_EXHAUSTED)):
        if p.eta is None:
            assert after[p.job_id].eta is None
        elif later < p.eta:
            assert after[p.job_id].eta == p.eta, (p, after[p.job_id])
