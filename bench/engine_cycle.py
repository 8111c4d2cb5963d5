"""Benchmark: one admission cycle (``quotas.admit``) at consortium scale.

Cluster: 1,000 nodes x 8 GPUs (8,000 GPUs) in two pools (600 H200 nodes, 400 H100 nodes),
interconnect domains of 16 nodes; 100 members in two sub-cohorts with nominal quota
proportional to Zipf-like weights (borrowing unlimited); about 70 % of the GPUs already busy
with running jobs; N pending jobs of 1-64 GPUs (multi-node ones as whole nodes, half of them
asking for one domain), four priority classes, some members with GPU-hour budgets.
Two cycles per size: the *decision* cycle (``explain=False``: admissions, preemptions,
reservations -- what the control plane runs every tick once more than 2,000 jobs wait) and
the *explained* cycle (the same decisions plus ranked reasons, position and ETA of every
waiting job -- every tick below 2,000 waiting jobs, at most every 10 s above).

Prints the median wall and CPU time of ``admit`` over several repeats per size (CPU time is
the figure to trust on a shared machine).
Usage: ``.venv/bin/python bench/engine_cycle.py [--sizes 1000,10000,50000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quotas import (
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
    admit,
)

NOW = 1_750_000_000.0
CLASSES = (
    PriorityClass("production-inference", 1000, preemptible=False),
    PriorityClass("training", 100),
    PriorityClass("research", 50),
    PriorityClass("best-effort", 0),
)
SIZES = (1, 1, 1, 2, 4, 8, 8, 16, 32, 64)


def build(pending: int, members: int = 100, nodes: int = 1000, seed: int = 1) -> Snapshot:
    """A deterministic synthetic snapshot of the given size."""
    rng = random.Random(seed)
    pools = (Pool("h200", "H200", 8, 141.0), Pool("h100", "H100", 8, 80.0))
    split = {"h200": nodes * 6 // 10, "h100": nodes - nodes * 6 // 10}
    free: dict[str, int] = {}
    node_list: list[tuple[str, str, str]] = []
    for pool, count in split.items():
        for i in range(count):
            name = f"{pool}-{i:04d}"
            node_list.append((name, pool, f"{pool}-rack{i // 16:02d}"))
            free[name] = 8
    weights = [1.0 / (k + 1) ** 0.8 for k in range(members)]
    total_w = sum(weights)
    member_objs = []
    for k in range(members):
        quotas = {
            pool: Quota(int(split[pool] * 8 * weights[k] / total_w), None, None) for pool in split
        }
        budget = Budget(NOW - 30 * 86400, NOW + 60 * 86400, 500_000.0, 100_000.0) if k % 7 else None
        member_objs.append(
            Member(
                f"member-{k:03d}",
                "universities" if k % 2 else "industry",
                quotas,
                None,
                budget,
                rng.uniform(0, 1e8),
            )
        )
    names = [m.name for m in member_objs]
    running: list[RunningWorkload] = []
    by_pool = {p: [n for n, pool, _ in node_list if pool == p] for p in split}
    busy_target = int(0.7 * nodes * 8)
    busy = 0
    j = 0
    while busy < busy_target:
        pool = rng.choice(list(split))
        size = rng.choice(SIZES)
        if size >= 8:
            whole = [n for n in by_pool[pool] if free[n] == 8][: size // 8]
            if len(whole) < size // 8:
                continue
            assignments = tuple((n, 8) for n in whole)
        else:
            node = rng.choice(by_pool[pool])
            if free[node] < size:
                continue
            assignments = ((node, size),)
        for n, g in assignments:
            free[n] -= g
        busy += size
        started = NOW - rng.uniform(0, 86400)
        running.append(
            RunningWorkload(
                f"run-{j:06d}",
                rng.choices(names, weights)[0],
                pool,
                rng.choice(CLASSES).name,
                assignments,
                started,
                rng.choice([3600.0, 4 * 3600.0, 24 * 3600.0, 72 * 3600.0]),
                started + rng.uniform(0, 1800),
            )
        )
        j += 1
    node_objs = tuple(Node(n, p, d, 8, free[n]) for n, p, d in node_list)
    jobs = []
    for i in range(pending):
        size = rng.choice(SIZES)
        allowed = rng.choice((("h200",), ("h100",), ("h200", "h100")))
        jobs.append(
            PendingWorkload(
                f"job-{i:06d}",
                rng.choices(names, weights)[0],
                size,
                rng.choice(CLASSES).name,
                NOW - rng.uniform(0, 7 * 86400),
                rng.choice([1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0]),
                allowed,
                same_domain=size > 8 and rng.random() < 0.5,
            )
        )
    cohorts = (
        Cohort("consortium"),
        Cohort("universities", "consortium"),
        Cohort("industry", "consortium"),
    )
    return Snapshot(
        pools,
        node_objs,
        cohorts,
        tuple(member_objs),
        CLASSES,
        tuple(running),
        tuple(jobs),
        EngineConfig(),
    )


def measure(snapshot: Snapshot, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``admit`` per repeat (CPU time is robust to a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        admit(snapshot, NOW)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'pending':>8} {'cycle':>9} {'admitted':>9} {'preempt':>8} {'explained':>9} "
        f"{'median wall ms':>15} {'median CPU ms':>14} {'min CPU ms':>11}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        explained = build(size)
        quiet = replace(explained, config=replace(explained.config, explain=False))
        for name, snapshot in (("decision", quiet), ("explained", explained)):
            decisions = admit(snapshot, NOW)  # warm-up, and the figures to print
            wall, cpu = measure(snapshot, args.repeats)
            print(
                f"{size:>8} {name:>9} {len(decisions.admitted):>9} "
                f"{len(decisions.preempted):>8} {len(decisions.pending):>9} "
                f"{statistics.median(wall) * 1000:>15.1f} "
                f"{statistics.median(cpu) * 1000:>14.1f} {min(cpu) * 1000:>11.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
