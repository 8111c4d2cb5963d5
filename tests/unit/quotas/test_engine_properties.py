"""Property tests (hypothesis) of the engine's invariants over random clusters and queues.

The multi-cycle tests drive the real engine through a tiny world: decisions are applied,
jobs finish before their max runtime, preempted jobs leave at their grace deadline. So the
running state is always one the engine itself produced, and the invariants must hold after
every cycle, not just the first.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotas import decisions as codes
from quotas.budgets import headroom_gpu_hours, job_cost_gpu_hours
from quotas.cycle import CycleState
from quotas.decisions import Decisions, Reason
from quotas.engine import admit, run_cycle
from quotas.pause import pause
from quotas.placement import shape_for
from quotas.preemption import cannot_preempt, claim, plan_preemption
from quotas.snapshot import (
    Budget,
    Cohort,
    EngineConfig,
    Member,
    Node,
    PendingWorkload,
    Pool,
    PriorityClass,
    Quota,
    RunningWorkload,
    Snapshot,
)

CLASSES = (
    PriorityClass("prod", 1000, preemptible=False),
    PriorityClass("train", 100),
    PriorityClass("research", 10),
)
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@dataclass
class World:
    """A cluster whose running state only ever changes through the engine's decisions."""

    pools: tuple[Pool, ...]
    nodes: dict[str, Node]
    members: tuple[Member, ...]
    config: EngineConfig
    running: dict[str, RunningWorkload] = field(default_factory=dict)
    pending: dict[str, PendingWorkload] = field(default_factory=dict)
    actual: dict[str, float] = field(default_factory=dict)  # job -> actual runtime

    def snapshot(self) -> Snapshot:
        return Snapshot(
            pools=self.pools,
            nodes=tuple(self.nodes.values()),
            cohorts=(Cohort("root"),),
            members=self.members,
            priority_classes=CLASSES,
            running=tuple(self.running.values()),
            pending=tuple(self.pending.values()),
            config=self.config,
        )

    def release(self, job: RunningWorkload) -> None:
        for name, gpus in job.assignments:
            node = self.nodes[name]
            self.nodes[name] = replace(node, free_gpus=node.free_gpus + gpus)
        del self.running[job.job_id]

    def advance(self, now: float) -> None:
        for job in list(self.running.values()):
            if job.preempting_until is not None and job.preempting_until <= now:
                self.release(job)
                self.pending[job.job_id] = PendingWorkload(
                    job.job_id,
                    job.member,
                    job.gpus,
                    job.priority_class,
                    0.0,
                    job.max_runtime,
                    (job.pool,),
                    times_preempted=job.times_preempted + 1,
                )
            elif job.started_at + self.actual[job.job_id] <= now:
                self.release(job)

    def apply(self, decisions: Decisions, now: float) -> None:
        for adm in decisions.admitted:
            job = self.pending.pop(adm.job_id)
            for name, gpus in adm.assignments:
                node = self.nodes[name]
                assert node.pool == adm.pool and node.alive
                assert gpus <= node.free_gpus, "a node got more GPUs than it had free"
                self.nodes[name] = replace(node, free_gpus=node.free_gpus - gpus)
            self.running[job.job_id] = RunningWorkload(
                job.job_id,
                job.member,
                adm.pool,
                job.priority_class,
                adm.assignments,
                now,
                job.max_runtime,
                times_preempted=job.times_preempted,
            )
        for pre in decisions.preempted:
            for victim in pre.victims:
                self.running[victim] = replace(
                    self.running[victim], preempting_until=pre.grace_deadline
                )


@st.composite
def worlds(draw: st.DrawFn, whole_nodes: bool = False, preemption: bool = True) -> World:
    pools = []
    nodes: dict[str, Node] = {}
    for p in range(draw(st.integers(1, 2))):
        per_node = draw(st.sampled_from([4, 8]))
        name = f"p{p}"
        pools.append(Pool(name, "H200", per_node))
        count = draw(st.integers(1, 6))
        per_domain = draw(st.integers(1, 3))
        for n in range(count):
            alive = whole_nodes or draw(st.integers(0, 9)) > 0
            node = Node(
                f"{name}-{n}", name, f"{name}-d{n // per_domain}", per_node, per_node, alive
            )
            nodes[node.name] = node
    members = []
    for m in range(draw(st.integers(1, 4))):
        quotas = {}
        for pool in pools:
            borrow = draw(st.one_of(st.none(), st.integers(0, 16)))
            lend = None if whole_nodes else draw(st.one_of(st.none(), st.integers(0, 16)))
            quotas[pool.name] = Quota(draw(st.integers(0, 16)), borrow, lend)
        budget = None
        if draw(st.booleans()) and not whole_nodes:
            end = draw(st.sampled_from([1e9, 4000.0]))  # a period that ends mid-run
            budget = Budget(0.0, end, draw(st.floats(0, 200)), draw(st.floats(0, 20)))
        members.append(Member(f"m{m}", "root", quotas, None, budget, draw(st.floats(0, 1e6))))
    config = EngineConfig(
        min_runtime=draw(st.sampled_from([0.0, 300.0])) if preemption else 1e12,
        grace_period=draw(st.sampled_from([0.0, 60.0])),
        max_preemptions=draw(st.integers(1, 3)),
        history_weight=draw(st.floats(0, 1)),
    )
    world = World(tuple(pools), nodes, tuple(members), config)
    for j in range(draw(st.integers(0, 25))):
        world.pending[f"j{j:02d}"] = draw(jobs(f"j{j:02d}", tuple(pools), members, whole_nodes))
    return world


@st.composite
def jobs(
    draw: st.DrawFn, job_id: str, pools: tuple[Pool, ...], members: list[Member], whole: bool
) -> PendingWorkload:
    allowed = draw(st.lists(st.sampled_from([p.name for p in pools]), min_size=1, unique=True))
    per_node = {p.name: p.gpus_per_node for p in pools}[allowed[0]]
    if whole:
        gpus = per_node * draw(st.integers(1, 2))
        allowed = allowed[:1]
    else:
        gpus = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
    return PendingWorkload(
        job_id,
        draw(st.sampled_from([m.name for m in members])),
        gpus,
        draw(st.sampled_from([c.name for c in CLASSES])),
        float(draw(st.integers(0, 100))),
        float(draw(st.sampled_from([600, 3600, 7200]))),
        tuple(allowed),
        same_domain=draw(st.booleans()),
    )


def quota_of(member: Member, pool: str) -> Quota:
    return member.quotas.get(pool, Quota(0, None, None))


def usage(world: World) -> dict[tuple[str, str], int]:
    used: dict[tuple[str, str], int] = {}
    for job in world.running.values():
        key = (job.member, job.pool)
        used[key] = used.get(key, 0) + job.gpus
    return used


def check_quota_invariants(world: World) -> None:
    used = usage(world)
    for pool in world.pools:
        borrowed = lendable = 0
        for member in world.members:
            quota, u = quota_of(member, pool.name), used.get((member.name, pool.name), 0)
            if quota.borrowing_limit is not None:
                assert u <= quota.nominal + quota.borrowing_limit, "usage above nominal + limit"
            borrowed += max(0, u - quota.nominal)
            lend = quota.nominal if quota.lending_limit is None else quota.lending_limit
            lendable += min(lend, max(0, quota.nominal - u))
            non_preemptible = sum(
                j.gpus
                for j in world.running.values()
                if j.member == member.name and j.pool == pool.name and j.priority_class == "prod"
            )
            assert non_preemptible <= quota.nominal, "non-preemptible work above nominal"
        assert borrowed <= lendable, "lent more than the lenders' lending limits allow"


def check_gang_and_shape(world: World, decisions: Decisions) -> None:
    pools = {p.name: p for p in world.pools}
    for adm in decisions.admitted:
        job = world.pending[adm.job_id]
        per_node = pools[adm.pool].gpus_per_node
        names = [n for n, _ in adm.assignments]
        assert len(set(names)) == len(names)
        assert sum(g for _, g in adm.assignments) == job.gpus, "gang must get all its GPUs"
        if job.gpus > per_node:
            assert all(g == per_node for _, g in adm.assignments), "multi-node takes whole nodes"
            if job.same_domain:
                assert len({world.nodes[n].domain for n in names}) == 1
        else:
            assert len(names) == 1


def run_cycles(world: World, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(cycles):
        snapshot = world.snapshot()
        decisions = admit(snapshot, now)
        check_gang_and_shape(world, decisions)
        check_budget(snapshot, decisions, now)
        check_explanations(snapshot, decisions)
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime * rng.uniform(0.2, 1)
        world.apply(decisions, now)
        check_quota_invariants(world)
        now += rng.choice([30.0, 300.0, 1800.0])
        world.advance(now)


def check_budget(snapshot: Snapshot, decisions: Decisions, now: float) -> None:
    pending = {j.job_id: j for j in snapshot.pending}
    for member in snapshot.members:
        if member.budget is None:
            continue
        mine = [j for j in snapshot.running if j.member == member.name]
        headroom = headroom_gpu_hours(member.budget, mine, now)
        window = member.budget.period_end - now
        spent = sum(
            job_cost_gpu_hours(pending[a.job_id].gpus, pending[a.job_id].max_runtime, window)
            for a in decisions.admitted
            if pending[a.job_id].member == member.name
        )
        assert spent <= max(0.0, headroom) + 1e-6, "admissions overran the budget"


def check_explanations(snapshot: Snapshot, decisions: Decisions) -> None:
    decided = {a.job_id for a in decisions.admitted}
    waiting = {p.job_id for p in decisions.pending}
    assert decided | waiting == {j.job_id for j in snapshot.pending}
    assert not decided & waiting
    assert sorted(p.position for p in decisions.pending) == list(
        range(1, len(decisions.pending) + 1)
    )
    for p in decisions.pending:
        assert len(p.reasons) >= 2 and p.reasons[-1].code == codes.QUEUE_POSITION
        ranks = [codes.REASON_RANK[r.code] for r in p.reasons]
        assert ranks == sorted(ranks)


@PROPERTY
@given(worlds(), st.integers(0, 1000))
def test_invariants_hold_over_many_cycles(world: World, seed: int) -> None:
    """Capacity per node, gang, shape, quota limits, lending, non-preemptible, budget."""
    run_cycles(world, cycles=6, seed=seed)


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False))
def test_decisions_are_deterministic_whatever_the_input_order(
    world: World, rng: random.Random
) -> None:
    run_cycles(world, cycles=2, seed=1)
    snapshot = world.snapshot()
    shuffled = replace(
        snapshot,
        nodes=tuple(rng.sample(snapshot.nodes, len(snapshot.nodes))),
        members=tuple(rng.sample(snapshot.members, len(snapshot.members))),
        running=tuple(rng.sample(snapshot.running, len(snapshot.running))),
        pending=tuple(rng.sample(snapshot.pending, len(snapshot.pending))),
    )
    assert admit(shuffled, 5000.0) == admit(snapshot, 5000.0)


@PROPERTY
@given(worlds(preemption=False), st.integers(0, 1000))
def test_backfill_never_delays_the_reserved_head(world: World, seed: int) -> None:
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(4):
        snapshot = world.snapshot()
        decisions = admit(snapshot, now)
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime
        world.apply(decisions, now)
        for reservation in decisions.reservations:
            # Free at the reserved start if everything ends at its declared max runtime,
            # this cycle's admissions included.
            free = {n: node.free_gpus for n, node in world.nodes.items()}
            for job in world.running.values():
                if job.started_at + job.max_runtime <= reservation.start:
                    for name, gpus in job.assignments:
                        free[name] += gpus
            for name, gpus in reservation.assignments:
                assert free[name] >= gpus, f"backfill delayed {reservation.job_id} on {name}"
        now += rng.choice([60.0, 600.0])
        world.advance(now)


@PROPERTY
@given(worlds(whole_nodes=True), st.data())
def test_quota_guarantee_in_nominal_job_starts_or_reclaims(
    world: World, data: st.DataObject
) -> None:
    """Whole-node jobs (no fragmentation) and total nominal within capacity: a job that fits
    its member's unused nominal quota starts now or gets borrowers preempted for it."""
    pool = world.pools[0]
    capacity = sum(n.total_gpus for n in world.nodes.values() if n.pool == pool.name)
    nominal = [quota_of(m, pool.name).nominal for m in world.members]
    scale = min(1.0, capacity / sum(nominal)) if sum(nominal) else 1.0
    world.members = tuple(
        replace(m, quotas={pool.name: replace(quota_of(m, pool.name), nominal=int(n * scale))})
        for m, n in zip(world.members, nominal, strict=True)
    )
    world.pools = (pool,)
    world.nodes = {k: v for k, v in world.nodes.items() if v.pool == pool.name}
    world.pending = {
        k: replace(j, allowed_pools=(pool.name,), gpus=pool.gpus_per_node * (1 + j.gpus // 16))
        for k, j in world.pending.items()
    }
    world.config = replace(world.config, min_runtime=0.0, max_preemptions=1000)
    run_cycles(world, cycles=3, seed=data.draw(st.integers(0, 100)))
    # Now one new job from a member with unused nominal quota.
    used = usage(world)
    room = {
        m.name: quota_of(m, pool.name).nominal - used.get((m.name, pool.name), 0)
        for m in world.members
    }
    member = max(room, key=lambda m: (room[m], m))
    if room[member] < pool.gpus_per_node:
        return
    world.pending = {}
    job = PendingWorkload("vip", member, pool.gpus_per_node, "train", 0.0, 3600.0, (pool.name,))
    world.pending["vip"] = job
    decisions = admit(world.snapshot(), 50_000.0)
    admitted = any(a.job_id == "vip" for a in decisions.admitted)
    preempted_for = any(p.for_job == "vip" for p in decisions.preempted)
    waiting = any(
        p.job_id == "vip" and p.reasons[0].code == codes.WAITING_FOR_PREEMPTION
        for p in decisions.pending
    )
    assert admitted or preempted_for or waiting, decisions


@PROPERTY
@given(worlds(), st.integers(0, 1000))
def test_explanations_do_not_change_decisions(world: World, seed: int) -> None:
    """The simulator runs without explanations; it must decide exactly as the control plane."""
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(4):
        snapshot = world.snapshot()
        full = admit(snapshot, now)
        quiet = admit(replace(snapshot, config=replace(snapshot.config, explain=False)), now)
        assert quiet.pending == ()
        assert (quiet.admitted, quiet.preempted, quiet.reservations) == (
            full.admitted,
            full.preempted,
            full.reservations,
        )
        for adm in full.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime * rng.uniform(0.2, 1)
        world.apply(full, now)
        now += rng.choice([30.0, 300.0, 1800.0])
        world.advance(now)


@PROPERTY
@given(worlds(), st.integers(0, 2), st.integers(0, 1000))
def test_closed_world_shortcut_does_not_change_anything(
    world: World, attempts: int, seed: int
) -> None:
    """Once every pool refuses every request on quota and no victim search is left, the
    tournament settles the rest from memos (``_Cycle._run_closed``): the decisions,
    reasons, positions and ETAs must be exactly those of the full search."""
    world.config = replace(world.config, max_preemption_attempts=attempts)
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(3):
        snapshot = world.snapshot()
        eager = run_cycle(snapshot, now, closed_check=1)
        assert eager.decisions() == run_cycle(snapshot, now, closed_check=None).decisions()
        decisions = eager.decisions()
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime * rng.uniform(0.2, 1)
        world.apply(decisions, now)
        now += rng.choice([30.0, 300.0])
        world.advance(now)


def test_closed_world_is_found_and_settles_the_queue_like_the_full_search() -> None:
    """A saturated cohort (everything borrowed, no victim search left) with a long queue of
    mixed shapes, priorities and budgets: the shortcut kicks in and changes nothing."""
    pools = (Pool("a", "H200", 8), Pool("b", "H100", 8))
    nodes = {
        f"{p.name}-{i}": Node(f"{p.name}-{i}", p.name, f"{p.name}-d{i // 2}", 8, 8)
        for p in pools
        for i in range(4)
    }
    members = tuple(
        Member(
            f"m{i}",
            "root",
            {"a": Quota(8), "b": Quota(8)},
            budget=Budget(0.0, 1e9, 40.0) if i % 2 else None,
        )
        for i in range(4)
    )
    world = World(pools, nodes, members, EngineConfig(max_preemption_attempts=1))
    rng = random.Random(7)
    for j in range(400):
        world.pending[f"j{j:03d}"] = PendingWorkload(
            f"j{j:03d}",
            f"m{rng.randrange(4)}",
            rng.choice([1, 2, 4, 8, 16]),
            rng.choice([c.name for c in CLASSES]),
            float(j),
            float(rng.choice([600, 3600, 7200])),
            tuple(rng.sample(["a", "b"], rng.randint(1, 2))),
            same_domain=rng.random() < 0.5,
        )
    snapshot = world.snapshot()
    eager = run_cycle(snapshot, 1000.0)
    assert eager.closed_at is not None and eager.closed_at < 400 - 64
    decisions = eager.decisions()
    assert decisions == run_cycle(snapshot, 1000.0, closed_check=None).decisions()
    assert len(decisions.admitted) + len(decisions.pending) == 400
    assert {r.code for p in decisions.pending for r in p.reasons} >= {
        codes.COHORT_EXHAUSTED,
        codes.BUDGET_EXHAUSTED,
        codes.QUEUE_POSITION,
    }


def garbage_of_three_cycles() -> int:
    """Objects in reference cycles left by three ``admit`` cycles of a busy world, counted by
    the collector (which ``admit`` must leave paused, as it found it)."""
    world = World(
        (Pool("a", "H200", 8),),
        {f"a-{i}": Node(f"a-{i}", "a", f"d{i // 4}", 8, 8) for i in range(16)},
        tuple(Member(f"m{i}", "root", {"a": Quota(16)}) for i in range(4)),
        EngineConfig(max_preemption_attempts=4),
    )
    rng = random.Random(3)
    for j in range(300):
        world.pending[f"j{j:03d}"] = PendingWorkload(
            f"j{j:03d}", f"m{j % 4}", rng.choice([1, 4, 8, 16]), "train", float(j), 3600.0, ("a",)
        )
    now = 1000.0
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            decisions = admit(world.snapshot(), now)
            for adm in decisions.admitted:
                world.actual[adm.job_id] = 600.0
            world.apply(decisions, now)
            now += 700.0
            world.advance(now)
        assert not gc.isenabled(), "admit must restore the collector as it found it"
        return gc.collect()
    finally:
        gc.enable()
        admit(world.snapshot(), now)
        assert gc.isenabled()


def test_a_cycle_leaves_no_cyclic_garbage_and_restores_the_collector() -> None:
    """``admit`` pauses the cyclic garbage collector while it runs (see
    ``admit_validated``); that is only sound if a cycle creates no reference cycles. Counted
    in a fresh interpreter: in a test process other threads (pytest-xdist's, a test server's)
    make garbage of their own while the collector is paused."""
    probe = (
        "from tests.unit.quotas.test_engine_properties import garbage_of_three_cycles as g; "
        "print(g())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[3],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stdout


@PROPERTY
@given(worlds(), st.integers(0, 1000))
def test_preemption_bound_never_rejects_a_plan_the_search_finds(world: World, seed: int) -> None:
    """``cannot_preempt`` is only a shortcut: whenever it says no, the full victim search
    (without it) finds nothing either -- after claims made earlier in the cycle too."""
    rng = random.Random(seed)
    now = 1000.0
    for _ in range(3):
        snapshot = world.snapshot()
        state = CycleState(snapshot, now)
        classes = {c.name: c for c in CLASSES}
        for job in snapshot.pending:
            pclass = classes[job.priority_class]
            for pool in job.allowed_pools:
                shape = shape_for(job, state.pools[pool])
                if shape is None:
                    continue
                in_nominal = state.tree.unused_nominal(job.member, pool) >= shape.gpus
                args = (state, job, pool, shape, pclass.value, pclass.preemptible)
                if cannot_preempt(state, job.member, pool, shape.gpus, pclass.value, in_nominal):
                    assert plan_preemption(*args, bound=False) is None
                else:
                    plan = plan_preemption(*args)
                    if plan is not None and rng.random() < 0.5:
                        claim(state, pool, plan.victims)  # later jobs see fewer victims
        decisions = admit(snapshot, now)
        for adm in decisions.admitted:
            world.actual[adm.job_id] = world.pending[adm.job_id].max_runtime * rng.uniform(0.2, 1)
        world.apply(decisions, now)
        now += rng.choice([300.0, 900.0])
        world.advance(now)


@PROPERTY
@given(worlds(), st.integers(0, 1000), st.text(min_size=1, max_size=40))
def test_paused_placement_admits_and_preempts_nothing_and_says_why(
    world: World, seed: int, why: str
) -> None:
    """``quotas.pause``: the jobs the engine would admit wait at the front, in admission
    order; everyone else keeps their order and their own reasons, behind the pause; nothing
    runs, nobody is preempted and the cluster's state is unchanged over paused cycles."""
    run_cycles(world, cycles=2, seed=seed)
    snapshot = world.snapshot()
    full = admit(snapshot, 5000.0)
    paused = pause(full, why)
    assert paused.admitted == () and paused.preempted == () and paused.reservations == ()
    assert [p.job_id for p in paused.pending] == [a.job_id for a in full.admitted] + [
        p.job_id for p in sorted(full.pending, key=lambda p: p.position)
    ]
    assert [p.position for p in paused.pending] == list(range(1, len(paused.pending) + 1))
    before = {p.job_id: p.reasons for p in full.pending}
    for p in paused.pending:
        assert p.eta is None
        # First, unless the job could never run anyway (its own reason says so first).
        paused_reason = Reason(codes.PLACEMENT_PAUSED, f"placement is paused: {why}")
        at = p.reasons.index(paused_reason)
        assert all(
            codes.REASON_RANK[r.code] < codes.REASON_RANK[codes.PLACEMENT_PAUSED]
            for r in p.reasons[:at]
        )
        assert p.reasons[:at] + p.reasons[at + 1 :] == before.get(p.job_id, ())
        ranks = [codes.REASON_RANK[r.code] for r in p.reasons]
        assert ranks == sorted(ranks)
    # Idempotent: a second pause (another cycle's) changes nothing more.
    assert pause(paused, why) == paused
    # Paused cycles change nothing: the world after them is the world before.
    running, pending = dict(world.running), dict(world.pending)
    world.apply(paused, 5000.0)
    assert (world.running, world.pending) == (running, pending)
