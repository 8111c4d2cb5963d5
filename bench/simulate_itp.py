"""Benchmark: the whole ITP trace (69,351 jobs, 10 clusters) replayed per policy.

Reads ``../shared/traces/elasticflow-itp/raw-traces.tar.gz`` (relative to the repository; pass
``--trace`` for another path), derives the cluster and quotas as documented in
``quotas/replay_setup.py`` and replays it through ``quotas.admit`` for nuri, fifo and drf.
Prints, per policy, the metrics and the replay's wall seconds and CPU seconds (summed over
pools), then a Markdown table for bench/README.md. The ten clusters are independent, so their
replays run in ``--workers`` processes (default: one per CPU). The issue's target is a whole
replay under 60 s.

Usage: ``.venv/bin/python bench/simulate_itp.py [--policies nuri,fifo,drf]
[--capacity-scale 1.0] [--cycle-interval 0] [--limit N] [--workers N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quotas.replay_setup import ReplayCluster, build_cluster
from quotas.simulator import PoolReplay, SimulationConfig, SimulationResult, combine, replay_pool
from quotas.snapshot import POLICIES
from quotas.traces import TraceJob, read_itp_archive

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "elasticflow-itp" / "raw-traces.tar.gz"


def row(result: SimulationResult, wall: float, cpu: float) -> str:
    """One Markdown table row (times in hours)."""
    h = 3600.0
    return (
        f"| {result.policy} | {result.completed}/{result.jobs} | {result.utilisation:.3f} | "
        f"{result.mean_jct / h:.2f} | {result.p95_jct / h:.1f} | {result.mean_wait / h:.2f} | "
        f"{result.p95_wait / h:.1f} | {result.jain_fairness:.3f} | "
        f"{result.quota_violations}/{result.in_quota_jobs} | {result.preemptions} | "
        f"{result.gpu_hours_lost:.0f} | {wall:.1f} | {cpu:.1f} |"
    )


def timed_replay(
    jobs: list[TraceJob], cluster: ReplayCluster, pool: str, config: SimulationConfig
) -> tuple[PoolReplay, float]:
    """One pool's replay and the CPU seconds it took (in whichever process ran it)."""
    start = time.process_time()
    result = replay_pool(jobs, cluster, pool, config)
    return result, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--capacity-scale", type=float, default=1.0)
    parser.add_argument("--cycle-interval", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes replaying pools in parallel (pools are independent); 1 = in-process",
    )
    args = parser.parse_args()
    if not args.trace.is_file():
        sys.exit(f"trace not found: {args.trace}")
    started = time.perf_counter()
    with args.trace.open("rb") as stream:
        jobs = read_itp_archive(stream)
    jobs.sort(key=lambda j: (j.submit_time, j.job_id))
    if args.limit:
        jobs = jobs[: args.limit]
    cluster = build_cluster(jobs, capacity_scale=args.capacity_scale)
    gpus = sum(cluster.capacity(p.name) for p in cluster.pools)
    print(
        f"{len(jobs)} jobs, {len(cluster.pools)} pools, {gpus} GPUs; "
        f"parsed in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    rows, dump = [], []
    pools = sorted({j.pool for j in jobs})
    # Largest pools first so the slowest replays start at once.
    pools.sort(key=lambda p: -sum(1 for j in jobs if j.pool == p))
    executor = ProcessPoolExecutor(args.workers) if args.workers > 1 else None
    for policy in args.policies.split(","):
        config = SimulationConfig(policy=policy, cycle_interval=args.cycle_interval)  # type: ignore[arg-type]
        wall0 = time.perf_counter()
        if executor is None:
            parts = [timed_replay(jobs, cluster, pool, config) for pool in pools]
        else:
            mine = {p: [j for j in jobs if j.pool == p] for p in pools}
            futures = [executor.submit(timed_replay, mine[p], cluster, p, config) for p in pools]
            parts = [f.result() for f in futures]
        result = combine(config, [part for part, _ in parts])
        wall, cpu = time.perf_counter() - wall0, sum(seconds for _, seconds in parts)
        print(
            f"{policy}: wall {wall:.1f}s, CPU {cpu:.1f}s summed over pools "
            f"({args.workers} workers), {result.cycles} cycles",
            flush=True,
        )
        rows.append(row(result, wall, cpu))
        item = asdict(result)
        item["per_member"] = {name: asdict(m) for name, m in result.per_member}
        item["wall_seconds"], item["cpu_seconds"] = round(wall, 1), round(cpu, 1)
        dump.append(item)
    print()
    print(
        "| policy | jobs done | util | mean JCT h | p95 JCT h | mean wait h | p95 wait h | "
        "Jain | quota viol. | preempt. | GPU-h lost | wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    if executor is not None:
        executor.shutdown()
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2))


if __name__ == "__main__":
    main()
