"""What members without a quota row may do in a pool (``Pool.default_borrowing_limit``).

Properties over random clusters driven through many cycles by the real engine: a member
with no quota row in a pool never holds more than the pool's default there, a default of 0
never admits it there, and the reasons of the jobs it keeps waiting say which rule did it.
Plus the wording: members by name (their label), and the budget left quoted with what
running jobs reserve.
"""

from __future__ import annotations

import random
from dataclasses import replace

from engine_builders import cluster, make_job, make_running
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import PROPERTY, World, jobs

from quotas import decisions as codes
from quotas.budgets import budget_left
from quotas.engine import admit
from quotas.snapshot import Budget, EngineConfig, Member, Node, Pool, Quota, Snapshot, SnapshotError

LIMITS = st.one_of(st.none(), st.integers(0, 12))
QUOTA_CODES = (
    codes.QUOTA_EXCEEDED,
    codes.COHORT_EXHAUSTED,
    codes.NON_PREEMPTIBLE_OVER_NOMINAL,
)
FEW = settings(PROPERTY, max_examples=30)


@st.composite
def open_worlds(draw: st.DrawFn) -> World:
    """Pools with a drawn default; members with a quota row in some pools and none in others."""
    pools: list[Pool] = []
    nodes: dict[str, Node] = {}
    for p in range(draw(st.integers(1, 2))):
        per_node = draw(st.sampled_from([4, 8]))
        pool = Pool(f"p{p}", "H200", per_node, default_borrowing_limit=draw(LIMITS))
        pools.append(pool)
        for n in range(draw(st.integers(1, 5))):
            node = Node(f"{pool.name}-{n}", pool.name, f"{pool.name}-d{n}", per_node, per_node)
            nodes[node.name] = node
    # m0 owns idle nominal GPUs in every pool and m1 has no quota row anywhere, so members
    # without a row always have something to borrow; the others have rows in some pools.
    members = [
        Member("m0", "root", {p.name: Quota(draw(st.integers(8, 16)), None, None) for p in pools}),
        Member("m1", "root", {}),
    ]
    for m in range(2, draw(st.integers(2, 4))):
        quotas = {
            pool.name: Quota(draw(st.integers(0, 16)), draw(LIMITS), None)
            for pool in pools
            if draw(st.booleans())
        }
        members.append(Member(f"m{m}", "root", quotas))
    config = EngineConfig(min_runtime=draw(st.sampled_from([0.0, 300.0])), grace_period=60.0)
    world = World(tuple(pools), nodes, tuple(members), config)
    for j in range(draw(st.integers(1, 20))):
        world.pending[f"j{j:02d}"] = draw(jobs(f"j{j:02d}", tuple(pools), members, False))
    return world


def held(world: World, member: str, pool: str) -> int:
    return sum(j.gpus for j in world.running.values() if j.member == member and j.pool == pool)


def without_row(world: World) -> list[tuple[Member, Pool]]:
    return [(m, p) for m in world.members for p in world.pools if p.name not in m.quotas]


@FEW
@given(open_worlds(), st.integers(0, 1000))
def test_a_member_without_quota_never_holds_more_than_the_pool_default(
    world: World, seed: int
) -> None:
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(4):
        decisions = admit(world.snapshot(), now)
        pending = dict(world.pending)
        for adm in decisions.admitted:
            job = pending[adm.job_id]
            member = next(m for m in world.members if m.name == job.member)
            pool = next(p for p in world.pools if p.name == adm.pool)
            if adm.pool not in member.quotas and pool.default_borrowing_limit == 0:
                raise AssertionError(f"{job.job_id} admitted in {pool.name}, whose default is 0")
            world.actual[adm.job_id] = job.max_runtime * rng.uniform(0.2, 1)
        for waiting in decisions.pending:
            job = pending[waiting.job_id]
            member = next(m for m in world.members if m.name == job.member)
            closed = [
                p
                for p in world.pools
                if p.name in job.allowed_pools
                and p.name not in member.quotas
                and p.default_borrowing_limit == 0
            ]
            quota_refusals = [r for r in waiting.reasons if r.code in QUOTA_CODES]
            if closed and len(closed) == len(job.allowed_pools) and quota_refusals:
                # Refused by the quota tree in a closed pool: the reason names the rule.
                text = " ".join(r.message for r in quota_refusals)
                assert any(f"has no quota in {p.name}" in text for p in closed), text
                assert "members without quota may not run there" in text, text
        world.apply(decisions, now)
        for member, pool in without_row(world):
            limit = pool.default_borrowing_limit
            if limit is not None:
                used = held(world, member.name, pool.name)
                assert used <= limit, f"{member.name} holds {used} in {pool.name} above {limit}"
        now += rng.choice([30.0, 300.0, 1800.0])
        world.advance(now)


def test_zero_keeps_members_without_quota_out_and_says_so() -> None:
    snap = (
        cluster()
        .pool("h200", nodes=2)
        .member("owner", nominal=8)
        .member("guest", quotas={})
        .pending(make_job("g1", "guest").gpus(1).priority("research"))
        .obj()
    )
    snap = replace(snap, pools=(replace(snap.pools[0], default_borrowing_limit=0),))
    decisions = admit(snap, 1000.0)
    assert not decisions.admitted
    (waiting,) = decisions.pending
    assert waiting.reasons[0].code == codes.QUOTA_EXCEEDED
    assert waiting.reasons[0].message.startswith(
        "member guest has no quota in h200; members without quota may not run there"
    )
    assert waiting.eta is None
    # The same cluster with unlimited borrowing (None) admits it: today's behaviour.
    open_pool = replace(snap, pools=(replace(snap.pools[0], default_borrowing_limit=None),))
    assert [a.job_id for a in admit(open_pool, 1000.0).admitted] == ["g1"]


def test_n_lets_members_without_quota_borrow_up_to_n_and_names_them() -> None:
    snap = (
        cluster()
        .pool("h200", nodes=4)
        .member("owner", nominal=32)
        .member("guest", quotas={})
        .running(make_running("r1", "guest").on("h200-0", 2).priority("research"))
        .pending(
            make_job("small", "guest").gpus(2).priority("research").submitted(1),
            make_job("big", "guest").gpus(4).priority("research").submitted(2),
        )
        .obj()
    )
    members = tuple(replace(m, label=f"{m.name}-univ") for m in snap.members)
    snap = replace(
        snap,
        pools=(replace(snap.pools[0], default_borrowing_limit=4),),
        members=members,
    )
    decisions = admit(snap, 1000.0)
    assert [a.job_id for a in decisions.admitted] == ["small"]  # 2 held + 2 = the limit of 4
    (waiting,) = decisions.pending
    first = waiting.reasons[0]
    assert first.code == codes.QUOTA_EXCEEDED
    assert (
        "member guest-univ has no quota in h200; members without quota may borrow up to 4 GPUs"
        in first.message
    )
    assert "no estimate: it needs more than the 4 GPUs" not in first.message  # 4 <= 4
    assert waiting.eta is not None  # when r1 and small end, the limit frees


def test_a_negative_default_is_a_snapshot_error() -> None:
    snap = cluster().pool("h200").member("m1", nominal=8).obj()
    bad = replace(snap, pools=(replace(snap.pools[0], default_borrowing_limit=-1),))
    try:
        admit(bad, 0.0)
    except SnapshotError as exc:
        assert exc.code == "invalid_snapshot"
    else:
        raise AssertionError("a negative default borrowing limit was accepted")


def test_budget_reason_quotes_the_budget_left_with_what_running_jobs_reserve() -> None:
    budget = Budget(0.0, 100_000.0, limit_gpu_hours=10.0, used_gpu_hours=4.0)
    running = make_running("r1", "m1").on("h200-0", 2).started(0.0).runtime(7200.0).obj()
    snap: Snapshot = (
        cluster()
        .pool("h200")
        .member("m1", nominal=16, budget=budget)
        .running(running)
        .pending(make_job("j1", "m1").gpus(2).runtime(3 * 3600.0))
        .obj()
    )
    now = 3600.0
    left = budget_left(budget, [running], now)
    assert (left.used_gpu_hours, left.reserved_gpu_hours, left.left_gpu_hours) == (4.0, 2.0, 4.0)
    (waiting,) = admit(snap, now).pending
    assert waiting.reasons[0].code == codes.BUDGET_EXHAUSTED
    assert left.describe() in waiting.reasons[0].message
    assert "4.0 of 10.0 GPU-h left this period (4.0 used, 2.0 reserved by running jobs)" in (
        waiting.reasons[0].message
    )
