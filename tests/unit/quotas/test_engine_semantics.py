"""Table-driven semantics of one admission cycle (issue 3, semantics 1-9)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from engine_builders import ClusterBuilder, cluster, make_job, make_running

from quotas import decisions as codes
from quotas.decisions import Decisions
from quotas.engine import admit
from quotas.snapshot import Budget, Quota, Snapshot, SnapshotError

NOW = 10_000.0


def run(builder: ClusterBuilder, now: float = NOW) -> Decisions:
    return admit(builder.obj(), now)


def admitted(decisions: Decisions) -> dict[str, tuple[tuple[str, int], ...]]:
    return {a.job_id: a.assignments for a in decisions.admitted}


def first_reason(decisions: Decisions, job_id: str) -> str:
    return decisions.pending_by_id()[job_id].reasons[0].code


# -- 1. gang and topology fit -----------------------------------------------------------


PLACEMENT_CASES = [
    pytest.param(
        # free: h200-0 -> 8, h200-1 -> 3, h200-2 -> 2: a 2-GPU job best-fits the fullest node.
        [("h200-1", 5), ("h200-2", 6)],
        make_job("a").gpus(2),
        {"a": (("h200-2", 2),)},
        id="single-node best fit keeps whole nodes free",
    ),
    pytest.param(
        [("h200-1", 5), ("h200-2", 6)],
        make_job("a").gpus(3),
        {"a": (("h200-1", 3),)},
        id="best fit exact",
    ),
    pytest.param(
        [],
        make_job("a").gpus(16),
        {"a": (("h200-0", 8), ("h200-1", 8))},
        id="multi-node takes whole nodes",
    ),
    pytest.param(
        [("h200-0", 1), ("h200-1", 1)],
        make_job("a").gpus(16),
        {"a": (("h200-2", 8), ("h200-3", 8))},
        id="multi-node skips partly used nodes",
    ),
    pytest.param(
        [("h200-0", 1), ("h200-1", 1), ("h200-2", 1)],
        make_job("a").gpus(16),
        {},
        id="gang all or nothing: one whole node is not half a job",
    ),
    pytest.param(
        [("h200-0", 4)],
        make_job("a").gpus(5),
        {"a": (("h200-1", 5),)},
        id="never more GPUs than a node has free",
    ),
]


@pytest.mark.parametrize(("busy", "job", "expected"), PLACEMENT_CASES)
def test_placement(busy: list[tuple[str, int]], job, expected) -> None:  # type: ignore[no-untyped-def]
    builder = cluster().pool(nodes=4).member("m1", nominal=32).member("other", nominal=0)
    for n, (node, gpus) in enumerate(busy):
        builder.running(make_running(f"r{n}", "other").on(node, gpus))
    assert admitted(run(builder.pending(job))) == expected


def test_same_domain_picks_the_domain_that_holds_the_job() -> None:
    builder = (
        cluster()
        .pool(nodes=4, nodes_per_domain=2)
        .member("m1", nominal=32)
        .running(make_running("r", "m1").on("h200-0", 1))
        .pending(make_job("a").gpus(16).same_domain())
    )
    assert admitted(run(builder)) == {"a": (("h200-2", 8), ("h200-3", 8))}


def test_same_domain_refuses_to_span_domains_but_plain_multi_node_spans() -> None:
    def build(same: bool) -> ClusterBuilder:
        job = make_job("a").gpus(16)
        if same:
            job.same_domain()
        return (
            cluster()
            .pool(nodes=4, nodes_per_domain=2)
            .member("m1", nominal=32)
            .running(
                make_running("r0", "m1").on("h200-0", 1), make_running("r2", "m1").on("h200-2", 1)
            )
            .pending(job)
        )

    decisions = run(build(True))
    assert decisions.admitted == ()
    pending = decisions.pending_by_id()["a"]
    assert pending.reasons[0].code == codes.FRAGMENTED
    assert "16 x H200 (2 whole nodes) in one NVLink domain" in pending.reasons[0].message
    assert admitted(run(build(False))) == {"a": (("h200-1", 8), ("h200-3", 8))}


def test_multi_node_best_fits_the_smallest_domain_that_suffices() -> None:
    builder = (
        cluster()
        .pool(nodes=6, nodes_per_domain=4)  # d0: nodes 0-3, d1: nodes 4-5
        .member("m1", nominal=48)
        .pending(make_job("a").gpus(16).same_domain())
    )
    assert admitted(run(builder)) == {"a": (("h200-4", 8), ("h200-5", 8))}


def test_dead_nodes_are_never_used_and_shapes_that_can_never_fit_say_so() -> None:
    builder = (
        cluster()
        .pool(nodes=2, dead=(1,))
        .member("m1", nominal=16)
        .pending(make_job("a").gpus(16), make_job("b").gpus(9), make_job("c").gpus(8))
    )
    decisions = run(builder)
    assert admitted(decisions) == {"c": (("h200-0", 8),)}
    assert first_reason(decisions, "a") == codes.SHAPE_UNSATISFIABLE
    assert first_reason(decisions, "b") == codes.SHAPE_UNSATISFIABLE
    assert decisions.pending_by_id()["a"].eta is None


# -- 2. quota tree ------------------------------------------------------------------------


QUOTA_CASES = [
    # (name, members [(name, nominal, borrowing, lending)], jobs [(id, member, gpus)],
    #  admitted ids, {pending id: first reason})
    pytest.param(
        [("m1", 8, 0, None), ("m2", 24, None, None)],
        [("a", "m1", 8), ("b", "m1", 8)],
        {"a"},
        {"b": codes.QUOTA_EXCEEDED},
        id="no borrowing limit headroom: nominal is the cap",
    ),
    pytest.param(
        [("m1", 8, 8, None), ("m2", 24, None, None)],
        [("a", "m1", 8), ("b", "m1", 8), ("c", "m1", 8)],
        {"a", "b"},
        {"c": codes.QUOTA_EXCEEDED},
        id="borrowing stops at nominal + borrowing limit",
    ),
    pytest.param(
        [("m1", 8, None, None), ("m2", 16, None, 8), ("m3", 8, None, 0)],
        [("a", "m1", 8), ("b", "m1", 8), ("c", "m1", 8)],
        {"a", "b"},
        {"c": codes.COHORT_EXHAUSTED},
        id="lenders lend at most their lending limit",
    ),
]


@pytest.mark.parametrize(("members", "jobs", "admitted_ids", "pending_reasons"), QUOTA_CASES)
def test_quota(members, jobs, admitted_ids, pending_reasons) -> None:  # type: ignore[no-untyped-def]
    builder = cluster().pool(nodes=8)
    for name, nominal, borrow, lend in members:
        builder.member(name, nominal, borrow, lend)
    for n, (job_id, member, gpus) in enumerate(jobs):
        builder.pending(make_job(job_id, member).gpus(gpus).submitted(n))
    decisions = run(builder)
    assert set(admitted(decisions)) == admitted_ids
    for job_id, code in pending_reasons.items():
        assert first_reason(decisions, job_id) == code


def test_admit_marks_borrowing() -> None:
    builder = (
        cluster()
        .pool(nodes=4)
        .member("m1", nominal=8)
        .member("m2", nominal=24)
        .pending(make_job("a").gpus(8).submitted(0), make_job("b").gpus(8).submitted(1))
    )
    flags = {a.job_id: a.borrowing for a in run(builder).admitted}
    assert flags == {"a": False, "b": True}


def test_sub_cohort_borrowing_limit_caps_what_the_sub_cohort_takes_from_the_root() -> None:
    builder = (
        cluster()
        .pool(nodes=8)
        .cohort("universities", h200=Quota(0, borrowing_limit=8))
        .member("u1", nominal=8, cohort="universities")
        .member("telco", nominal=56)
        .pending(*(make_job(f"u{i}", "u1").gpus(8).submitted(i) for i in range(4)))
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"u0", "u1"}
    assert first_reason(decisions, "u2") == codes.COHORT_EXHAUSTED


def test_snapshot_errors_carry_a_code() -> None:
    snapshot = cluster().pool().member("m1", nominal=8).obj()
    bad = replace(snapshot, nodes=(replace(snapshot.nodes[0], pool="nowhere"),))
    with pytest.raises(SnapshotError) as err:
        admit(bad, NOW)
    assert err.value.code == "invalid_snapshot"


# -- 3. quota guarantee -------------------------------------------------------------------


def test_in_nominal_job_goes_before_an_older_borrowing_job() -> None:
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=8)
        .member("m2", nominal=8)
        .running(make_running("r", "m2").on("h200-0", 8))
        .pending(
            make_job("old", "m2").gpus(8).submitted(0), make_job("new", "m1").gpus(8).submitted(5)
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"new"}
    assert first_reason(decisions, "old") == codes.COHORT_EXHAUSTED


def reclaim_cluster() -> ClusterBuilder:
    # m2 borrows the whole pool: three jobs, nominal 8 each for m1 and m2.
    return (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=8)
        .member("m2", nominal=8)
        .running(
            make_running("cheap", "m2")
            .on("h200-0", 4)
            .priority("research")
            .started(0)
            .checkpoint(9_000),
            make_running("costly", "m2")
            .on("h200-0", 4)
            .priority("research")
            .started(0)
            .checkpoint(1_000),
            make_running("keep", "m2").on("h200-1", 8).priority("training").started(0),
        )
    )


def test_reclaim_preempts_the_borrower_losing_least_work_with_a_grace_period() -> None:
    decisions = run(reclaim_cluster().pending(make_job("mine", "m1").gpus(4)))
    assert decisions.admitted == ()
    (preempt,) = decisions.preempted
    assert preempt.victims == ("cheap",)
    assert preempt.reason == codes.RECLAIM
    assert preempt.for_job == "mine"
    assert preempt.grace_deadline == NOW + 120.0
    pending = decisions.pending_by_id()["mine"]
    assert pending.reasons[0].code == codes.WAITING_FOR_PREEMPTION
    assert pending.eta == NOW + 120.0


def test_reclaim_takes_the_fewest_victims_and_never_below_the_victims_nominal() -> None:
    decisions = run(reclaim_cluster().pending(make_job("mine", "m1").gpus(8)))
    (preempt,) = decisions.preempted
    # Lowest priority first: both research jobs (one node), never the training job that is
    # m2's nominal share once the research jobs are gone.
    assert sorted(preempt.victims) == ["cheap", "costly"]


def test_victims_already_leaving_are_reused_instead_of_preempting_more() -> None:
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=4)
        .member("m2", nominal=4)
        .running(
            make_running("going", "m2").on("h200-0", 4).leaving(NOW + 60),
            make_running("stay", "m2").on("h200-0", 4),
        )
        .pending(make_job("mine", "m1").gpus(4))
    )
    decisions = run(builder)
    assert decisions.preempted == ()
    pending = decisions.pending_by_id()["mine"]
    assert pending.reasons[0].code == codes.WAITING_FOR_PREEMPTION
    assert pending.eta == NOW + 60


# -- 4. priorities and non-preemptible work ----------------------------------------------------


def test_non_preemptible_work_only_inside_nominal() -> None:
    builder = (
        cluster()
        .pool(nodes=4)
        .member("m1", nominal=8)
        .member("m2", nominal=24)
        .pending(
            make_job("p1").gpus(8).priority("production-inference").submitted(0),
            make_job("p2").gpus(8).priority("production-inference").submitted(1),
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"p1"}
    assert first_reason(decisions, "p2") == codes.NON_PREEMPTIBLE_OVER_NOMINAL


def test_non_preemptible_jobs_are_never_victims() -> None:
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=8)
        .member("m2", nominal=0)
        .running(make_running("prod", "m2").on("h200-0", 8).priority("production-inference"))
        .pending(make_job("mine", "m1").gpus(8))
    )
    decisions = run(builder)
    assert decisions.preempted == ()
    assert decisions.admitted == ()


def test_inside_a_member_higher_priority_first_then_fifo() -> None:
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=16, borrowing_limit=0)
        .pending(
            make_job("research-old").gpus(8).priority("research").submitted(0),
            make_job("train-late").gpus(8).priority("training").submitted(9),
            make_job("train-early").gpus(8).priority("training").submitted(5),
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"train-early", "train-late"}
    assert decisions.pending_by_id()["research-old"].position == 1


def test_higher_priority_preempts_its_own_members_lower_priority_work() -> None:
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=8, borrowing_limit=0)
        .running(make_running("low", "m1").on("h200-0", 8).priority("research"))
        .pending(make_job("high").gpus(8).priority("training"))
    )
    (preempt,) = run(builder).preempted
    assert (preempt.victims, preempt.reason) == (("low",), codes.PRIORITY)


# -- 5. fair share --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "running_m1", "winner"),
    [
        pytest.param((0.0, 0.0), 0, "a", id="tie breaks on submit time"),
        pytest.param((5e6, 0.0), 0, "b", id="decayed history yields to the lighter user"),
        pytest.param((0.0, 0.0), 8, "b", id="current dominant share yields too"),
    ],
)
def test_fair_share_orders_borrowers(history, running_m1, winner) -> None:  # type: ignore[no-untyped-def]
    builder = (
        cluster()
        .pool(nodes=3)
        .member("m1", nominal=0, history=history[0])
        .member("m2", nominal=0, history=history[1])
        .member("owner", nominal=24)
    )
    # Exactly one node stays free for the two borrowers.
    if running_m1:
        builder.running(make_running("r", "m1").on("h200-2", running_m1))
    else:
        builder.running(make_running("o2", "owner").on("h200-2", 8))
    builder.pending(
        make_job("a", "m1").gpus(8).submitted(0), make_job("b", "m2").gpus(8).submitted(1)
    )
    builder.running(make_running("o", "owner").on("h200-1", 8))
    decisions = run(builder)
    assert set(admitted(decisions)) == {winner}


# -- 6. backfill ------------------------------------------------------------------------------


def backfill_cluster() -> ClusterBuilder:
    # Two nodes; node 0 busy until NOW + 1000 (declared). The head needs both nodes.
    return (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=64)  # quota is no obstacle: only GPUs are
        .running(make_running("r", "m1").on("h200-0", 8).started(NOW - 100).runtime(1100))
        .pending(make_job("head").gpus(16).submitted(0))
    )


def test_short_job_backfills_and_long_job_may_not_delay_the_head() -> None:
    decisions = run(
        backfill_cluster().pending(
            make_job("long").gpus(8).submitted(1).runtime(5000),
            make_job("short").gpus(8).submitted(2).runtime(500),
        )
    )
    assert set(admitted(decisions)) == {"short"}
    assert [a.backfilled for a in decisions.admitted] == [True]  # nuri_backfilled_jobs_total
    (reservation,) = decisions.reservations
    assert (reservation.job_id, reservation.start) == ("head", NOW + 1000)
    assert decisions.pending_by_id()["head"].eta == NOW + 1000
    assert first_reason(decisions, "long") == codes.RESERVED_FOR_HEAD


def test_an_admission_with_no_reservation_held_is_no_backfill() -> None:
    decisions = run(cluster().pool(nodes=2).member("m1", nominal=64).pending(make_job("a").gpus(8)))
    assert [(a.job_id, a.backfilled) for a in decisions.admitted] == [("a", False)]


def test_long_job_backfills_where_the_head_will_not_need_the_gpus() -> None:
    builder = (
        cluster()
        .pool(nodes=3)
        .member("m1", nominal=64)
        .running(
            make_running("r", "m1").on("h200-0", 8).started(NOW - 100).runtime(1100),
            make_running("s", "m1").on("h200-2", 4).started(NOW - 100).runtime(90_000),
        )
        .pending(
            make_job("head").gpus(16).submitted(0),
            make_job("long").gpus(4).submitted(1).runtime(50_000),
        )
    )
    decisions = run(builder)
    assert admitted(decisions) == {"long": (("h200-2", 4),)}
    assert decisions.reservations[0].assignments == (("h200-0", 8), ("h200-1", 8))


# -- 7. budgets -------------------------------------------------------------------------------


def test_budget_blocks_admissions_never_running_work() -> None:
    budget = Budget(0.0, NOW + 86_400, limit_gpu_hours=20.0, used_gpu_hours=4.0)
    builder = (
        cluster()
        .pool(nodes=4)
        .member("m1", nominal=32, budget=budget)
        # Running: 1 GPU with 1h left -> 1 GPU-hour committed; headroom 15.
        .running(make_running("r").on("h200-3", 1).started(NOW - 3600).runtime(7200))
        .pending(
            make_job("fits").gpus(8).runtime(3600).submitted(0),  # 8 GPU-hours
            make_job("overruns").gpus(8).runtime(3600).submitted(1),  # 16 > 7 left
            make_job("small").gpus(1).runtime(3600).submitted(2),  # 1 more
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"fits", "small"}
    assert decisions.preempted == ()
    pending = decisions.pending_by_id()["overruns"]
    assert pending.reasons[0].code == codes.BUDGET_EXHAUSTED
    assert pending.eta is None  # not refilled within the period; the next one is unknown


# -- 8. no thrash -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("started", "times_preempted", "preempted"),
    [
        pytest.param(NOW - 10, 0, False, id="younger than the minimum runtime"),
        pytest.param(NOW - 5000, 3, False, id="preempted too often"),
        pytest.param(NOW - 5000, 2, True, id="eligible"),
    ],
)
def test_no_thrash(started: float, times_preempted: int, preempted: bool) -> None:
    builder = (
        cluster()
        .config(min_runtime=600.0, max_preemptions=3)
        .pool(nodes=1)
        .member("m1", nominal=8)
        .member("m2", nominal=0)
        .running(
            make_running("v", "m2").on("h200-0", 8).started(started).preempted(times_preempted)
        )
        .pending(make_job("mine", "m1").gpus(8))
    )
    assert bool(run(builder).preempted) is preempted


# -- 9. explanations ---------------------------------------------------------------------------


def test_every_pending_job_has_ranked_reasons_position_and_eta() -> None:
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=8, borrowing_limit=8)
        .member("m2", nominal=8, borrowing_limit=0)
        .running(make_running("r", "m2").on("h200-1", 8).started(NOW - 100).runtime(600))
        .pending(
            make_job("a", "m1").gpus(8).submitted(0),
            make_job("b", "m1").gpus(8).submitted(1),
            make_job("c", "m2").gpus(4).submitted(2),
            make_job("ghost", "nobody").gpus(1),
            make_job("nowhere", "m1").pools(),
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"a"}
    pending = decisions.pending_by_id()
    assert sorted(p.position for p in pending.values()) == list(range(1, len(pending) + 1))
    for p in pending.values():
        assert p.reasons[-1].code == codes.QUEUE_POSITION
        assert all(r.message for r in p.reasons)
    assert pending["c"].reasons[0].code == codes.QUOTA_EXCEEDED
    assert "8/8 in use" in pending["c"].reasons[0].message
    assert pending["b"].eta == NOW + 500  # r ends at its declared max runtime
    assert pending["ghost"].reasons[0].code == codes.INVALID_REQUEST
    assert pending["nowhere"].reasons[0].code == codes.NO_ALLOWED_POOL


# -- determinism and baselines -------------------------------------------------------------------


def test_decisions_do_not_depend_on_input_order() -> None:
    snapshot = (
        reclaim_cluster()
        .pending(
            *(
                make_job(f"j{i}", f"m{1 + i % 2}").gpus(1 + i % 8).submitted(i % 3)
                for i in range(20)
            )
        )
        .obj()
    )
    baseline = admit(snapshot, NOW)
    rng = random.Random(7)
    for _ in range(3):
        shuffled: Snapshot = replace(
            snapshot,
            nodes=tuple(rng.sample(snapshot.nodes, len(snapshot.nodes))),
            members=tuple(rng.sample(snapshot.members, len(snapshot.members))),
            running=tuple(rng.sample(snapshot.running, len(snapshot.running))),
            pending=tuple(rng.sample(snapshot.pending, len(snapshot.pending))),
        )
        assert admit(shuffled, NOW) == baseline


def test_fifo_blocks_behind_its_head_and_drf_serves_the_smaller_share() -> None:
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=8)
        .member("m2", nominal=8)
        .running(make_running("r", "m1").on("h200-0", 4))
        .pending(
            make_job("big", "m1").gpus(16).submitted(0),
            make_job("small", "m1").gpus(4).submitted(1),
            make_job("other", "m2").gpus(4).submitted(2),
        )
    )
    fifo = run(builder.config(policy="fifo"))
    assert fifo.admitted == ()
    assert first_reason(fifo, "small") == codes.BLOCKED_BY_HEAD
    drf = run(builder.config(policy="drf"))
    # m1 already holds 4 GPUs, so m2's job goes first; m1's small job still fits after it.
    assert [a.job_id for a in drf.admitted] == ["other", "small"]


def test_a_borrowers_reservation_yields_to_a_reclaim_within_nominal() -> None:
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=12)
        .member("m2", nominal=4)  # borrows 8 below
        .member("lender", nominal=16)
        .running(
            make_running("r0", "m2").on("h200-0", 8).started(NOW - 5000).runtime(6000),
            make_running("r1", "m2").on("h200-1", 4).started(NOW - 5000).runtime(6000),
        )
        .pending(
            make_job("big", "m1").gpus(16).submitted(0),  # borrows: gets the reservation
            make_job("small", "m1").gpus(4).submitted(1),  # inside m1's nominal quota
        )
    )
    decisions = run(builder)
    assert [r.job_id for r in decisions.reservations] == ["big"]
    (preempt,) = decisions.preempted
    assert (preempt.for_job, preempt.reason) == ("small", codes.RECLAIM)


def test_a_job_over_budget_says_so_even_behind_a_job_that_failed_like_it() -> None:
    """Jobs asking the same shape share a failure memo; one whose runtime overruns the budget
    must still be told about the budget (that is what its submitter has to change)."""
    budget = Budget(0.0, NOW + 86_400, limit_gpu_hours=100.0)
    builder = (
        cluster()
        .pool(nodes=1)
        .member("m1", nominal=8, budget=budget)
        .member("m2", nominal=8)
        .running(make_running("r", member="m2").on("h200-0", 8).started(NOW).runtime(7200))
        .pending(
            make_job("first").gpus(8).runtime(3 * 3600).submitted(0),  # holds the reservation
            make_job("short").gpus(8).runtime(3 * 3600).submitted(1),  # fails: the memo
            make_job("long").gpus(8).runtime(50 * 3600).submitted(2),  # 400 > 100 GPU-hours
        )
    )
    decisions = run(builder)
    assert admitted(decisions) == {}
    assert [r.job_id for r in decisions.reservations] == ["first"]
    pending = decisions.pending_by_id()
    assert pending["short"].reasons[0].code != codes.BUDGET_EXHAUSTED
    assert pending["long"].reasons[0].code == codes.BUDGET_EXHAUSTED
    assert pending["long"].eta is None


def test_a_job_is_charged_only_what_it_may_burn_before_the_period_ends() -> None:
    """Usage is recorded per period: a long job submitted near the end of the month costs
    this month's budget only up to the month's end (the rest is next month's)."""
    budget = Budget(0.0, NOW + 3600, limit_gpu_hours=10.0)
    builder = (
        cluster()
        .pool(nodes=2)
        .member("m1", nominal=16, budget=budget)
        .pending(
            make_job("long").gpus(8).runtime(10 * 3600).submitted(0),  # 8 GPU-hours this period
            make_job("more").gpus(8).runtime(10 * 3600).submitted(1),  # 8 more: over the 10
        )
    )
    decisions = run(builder)
    assert set(admitted(decisions)) == {"long"}
    assert first_reason(decisions, "more") == codes.BUDGET_EXHAUSTED
    assert "up to 8.0" in decisions.pending_by_id()["more"].reasons[0].message
