"""Benchmark: residency and access policy decisions per second (``policies.PolicyEngine``).

A decision is one ``Decision`` returned: "may this job run on this pool" (a job's inputs all
checked against one pool) or "may this caller do this". Workload: a catalogue of labelled
datasets and models over six regions in four jurisdictions, jobs with three inputs (the base
model and two datasets), 20 pools on 10 sites (region x clearance), seeded.

Scenarios (each run ``--repeats`` times; medians printed, with min / max):

- ``placement batched``: ``allowed_pools_for_jobs`` for all jobs at once — uncached (cache
  off), cached (warm), and worst case (every job's inputs have labels never seen before);
- ``placement single``: one ``placement(inputs, pool)`` call per decision, uncached / cached;
- ``access``: ``authorize`` per call (uncached / cached) and ``authorize_batch``.

Rates are per wall-clock second and per CPU second of this process (the machine is shared,
so CPU-time rates are the steadier figure). ``cedar req/s`` counts Cedar requests evaluated
(identical (labels, site) pairs are evaluated once per batch).
Usage: ``.venv/bin/python bench/policy_decisions.py [--jobs 1000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import (
    AccessRequest,
    Action,
    ArtifactFacts,
    ArtifactKind,
    AuditStream,
    Caller,
    Classification,
    JobFacts,
    Labels,
    PolicyEngine,
    PoolFacts,
    Role,
)

SITES = (
    ("kr-seoul", "KR"),
    ("kr-daejeon", "KR"),
    ("kr-busan", "KR"),
    ("jp-tokyo", "JP"),
    ("us-east-1", "US"),
)
REGIONS = (*(region for region, _ in SITES), "eu-west-1")
COUNTRIES = ("KR", "KR", "KR", "JP", "US", "IE")


def random_labels(rnd: random.Random) -> Labels:
    personal = rnd.random() < 0.3
    return Labels(
        jurisdiction=rnd.choice(COUNTRIES),
        allowed_regions=frozenset(rnd.sample(REGIONS, rnd.randint(1, 4))),
        classification=Classification(rnd.choice((0, 0, 1, 1, 2))),
        personal_info=personal,
        transfer_basis=rnd.choice((None, "consent")) if personal else None,
    )


def build_pools() -> list[PoolFacts]:
    pools = []
    for index, (region, country) in enumerate(SITES * 4):
        clearance = Classification.CLASSIFIED if index % 2 else Classification.SENSITIVE
        pools.append(PoolFacts(f"pool-{index:02d}", region, country, clearance))
    return pools


def build_jobs(count: int, rnd: random.Random, catalogue: int) -> dict[str, list[ArtifactFacts]]:
    datasets = [
        ArtifactFacts(f"ds-{i}", random_labels(rnd), ArtifactKind.DATASET, f"m-{i % 40}")
        for i in range(catalogue)
    ]
    models = [
        ArtifactFacts(f"model-{i}", random_labels(rnd), ArtifactKind.MODEL) for i in range(20)
    ]
    return {f"job-{i}": [rnd.choice(models), *rnd.sample(datasets, 2)] for i in range(count)}


def measure(
    name: str, repeats: int, setup: Callable[[], Callable[[], int]], cedar: Callable[[], int]
) -> None:
    """Run ``setup()`` then the returned workload ``repeats`` times; print median rates."""
    wall_rates, cpu_rates, cedar_rates = [], [], []
    for _ in range(repeats):
        workload = setup()
        before = cedar()
        wall, cpu = time.perf_counter(), time.process_time()
        decisions = workload()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        wall_rates.append(decisions / wall)
        cpu_rates.append(decisions / max(cpu, 1e-9))
        cedar_rates.append((cedar() - before) / wall)
    print(
        f"{name:<38} {statistics.median(wall_rates):>10,.0f}/s "
        f"(min {min(wall_rates):>9,.0f}, max {max(wall_rates):>9,.0f})  "
        f"cpu {statistics.median(cpu_rates):>10,.0f}/s  "
        f"cedar req/s {statistics.median(cedar_rates):>9,.0f}"
    )


ENGINES: list[PolicyEngine] = []


def engine(cache_size: int) -> PolicyEngine:
    """A shipped-policy engine, remembered so that its Cedar requests can be counted."""
    ENGINES.append(PolicyEngine.shipped(cache_size=cache_size))
    return ENGINES[-1]


def cedar_requests() -> int:
    return sum(e.cedar_requests for e in ENGINES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--catalogue", type=int, default=300, help="distinct datasets")
    parser.add_argument("--single", type=int, default=2000, help="calls per single run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rnd = random.Random(7)
    pools = build_pools()
    jobs = build_jobs(args.jobs, rnd, args.catalogue)
    per_batch = len(jobs) * len(pools)
    counted = cedar_requests
    print(
        f"policy decisions: {len(jobs)} jobs x {len(pools)} pools = {per_batch} decisions per "
        f"batch, 3 inputs per job, {args.repeats} repeats, medians"
    )

    def batched(cache_size: int, warm: bool) -> Callable[[], Callable[[], int]]:
        def setup() -> Callable[[], int]:
            subject = engine(cache_size)
            if warm:
                subject.allowed_pools_for_jobs(jobs, pools)
            return lambda: sum(len(d) for d in subject.allowed_pools_for_jobs(jobs, pools).values())

        return setup

    def fresh_labels() -> Callable[[], int]:
        subject = engine(0)
        unseen = build_jobs(args.jobs, random.Random(rnd.random()), args.jobs * 3)
        return lambda: sum(len(d) for d in subject.allowed_pools_for_jobs(unseen, pools).values())

    measure("placement batched, uncached", args.repeats, batched(0, False), counted)
    measure("placement batched, cached", args.repeats, batched(65_536, True), counted)
    measure("placement batched, all labels new", args.repeats, fresh_labels, counted)

    pairs = [(jobs[f"job-{i % len(jobs)}"], pools[i % len(pools)]) for i in range(args.single)]

    def single(cache_size: int, warm: bool) -> Callable[[], Callable[[], int]]:
        def setup() -> Callable[[], int]:
            subject = engine(cache_size)
            if warm:
                for inputs, pool in pairs:
                    subject.placement(inputs, pool)

            def run() -> int:
                for inputs, pool in pairs:
                    subject.placement(inputs, pool)
                return len(pairs)

            return run

        return setup

    measure("placement single, uncached", args.repeats, single(0, False), counted)
    measure("placement single, cached", args.repeats, single(65_536, True), counted)

    roles = (Role.MEMBER_USER, Role.MEMBER_ADMIN, Role.AUDITOR, Role.PLATFORM_ADMIN)
    requests = []
    for i in range(args.single):
        role = roles[i % len(roles)]
        member = f"m-{i % 40}" if role in (Role.MEMBER_USER, Role.MEMBER_ADMIN) else None
        caller = Caller(f"u-{i % 200}", role, member)
        if i % 3 == 0:
            requests.append(AccessRequest(caller, Action.READ_AUDIT, AuditStream(f"m-{i % 37}")))
        else:
            action = Action.SUBMIT if i % 3 == 1 else Action.CANCEL
            requests.append(AccessRequest(caller, action, JobFacts(f"j-{i}", f"m-{i % 41}")))

    def access(cache_size: int, warm: bool, batch: bool) -> Callable[[], Callable[[], int]]:
        def setup() -> Callable[[], int]:
            subject = engine(cache_size)
            if warm:
                subject.authorize_batch(requests)

            def run() -> int:
                if batch:
                    return len(subject.authorize_batch(requests))
                for r in requests:
                    subject.authorize(r.caller, r.action, r.resource)
                return len(requests)

            return run

        return setup

    measure("access single, uncached", args.repeats, access(0, False, False), counted)
    measure("access single, cached", args.repeats, access(65_536, True, False), counted)
    measure("access batched, uncached", args.repeats, access(0, False, True), counted)


if __name__ == "__main__":
    main()
