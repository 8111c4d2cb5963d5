"""``nuri simulate``: replay a job trace through the admission engine, policy by policy.

The command only does the I/O: it opens the trace (and the optional quota YAML), hands the
bytes to :mod:`quotas.traces`, runs :func:`quotas.simulator.simulate` with a progress bar and
prints a table (or JSON). Everything it reports is computed by the pure engine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from quotas import simulator
from quotas.replay_setup import MemberPlan, ReplayCluster, build_cluster, parse_quota_mapping
from quotas.simulator import PoolReplay, SimulationConfig, SimulationResult
from quotas.snapshot import POLICIES, Policy
from quotas.traces import TraceError, TraceJob, read_generic_csv, read_itp_archive

FORMATS = ("itp", "csv")


def simulate(
    trace: Annotated[
        Path, typer.Option("--trace", help="trace file: the ITP raw-traces.tar.gz or a CSV")
    ],
    trace_format: Annotated[
        str, typer.Option("--format", help="itp (ElasticFlow ITP tar.gz) or csv")
    ] = "itp",
    policy: Annotated[
        str, typer.Option(help="nuri, fifo or drf; comma-separate several to compare")
    ] = "nuri",
    capacity_scale: Annotated[
        float, typer.Option(help="multiply every pool's derived node count")
    ] = 1.0,
    quotas: Annotated[
        Path | None, typer.Option(help="YAML quota file (default: quotas follow demand)")
    ] = None,
    cluster: Annotated[
        list[str] | None,
        typer.Option(help="replay only this pool, e.g. cluster04 or 4 (repeatable)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="replay only the first N jobs by submit time")
    ] = None,
    cycle_interval: Annotated[
        float, typer.Option(help="scheduler period in simulated seconds (0: every event)")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of the tenant derivation (ITP)")] = 0,
    members: Annotated[bool, typer.Option(help="also print per-member tables")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="processes replaying pools in parallel (pools are independent, the results "
            "are the same); 0 = one per CPU, 1 = in this process"
        ),
    ] = 0,
) -> None:
    """Replay a job trace through the admission engine in simulated time and compare policies.

    Reports utilisation, JCT and queueing delay (mean, p95; per member), Jain's fairness over
    members' normalised service, quota-guarantee violations, preemptions and GPU-hours lost.
    """
    out = Console(stderr=as_json)
    policies = _policies(policy, out)
    if trace_format not in FORMATS:
        _fail(out, f"unknown --format {trace_format!r}; use one of: {', '.join(FORMATS)}")
    jobs = _load_trace(trace, trace_format, seed, out)
    if cluster:
        wanted = {_pool_name(c) for c in cluster}
        jobs = [j for j in jobs if j.pool in wanted]
    jobs.sort(key=lambda j: (j.submit_time, j.job_id))
    if limit is not None:
        jobs = jobs[: max(0, limit)]
    if not jobs:
        _fail(out, "the trace (after --cluster / --limit) has no jobs")
    plans = _load_quotas(quotas, out) if quotas is not None else None
    if capacity_scale <= 0:
        _fail(out, "--capacity-scale must be positive")
    if workers < 0:
        _fail(out, "--workers must be 0 (one per CPU) or more")
    setup = build_cluster(jobs, capacity_scale=capacity_scale, plans=plans)
    pools = sorted({j.pool for j in jobs})
    processes = min(len(pools), workers or os.cpu_count() or 1)
    results: list[tuple[SimulationResult, float]] = []
    for name in policies:
        config = SimulationConfig(policy=name, cycle_interval=cycle_interval)
        started = time.perf_counter()
        if processes > 1:
            result = _replay_in_processes(jobs, setup, config, pools, processes, out, as_json)
        else:
            with _progress(name, out, as_json) as bar:
                task = bar.add_task(name, total=len(jobs))

                def advance(
                    done: int, _total: int, bar: Progress = bar, task: TaskID = task
                ) -> None:
                    bar.update(task, completed=done)

                result = simulator.simulate(jobs, setup, config, progress=advance)
        results.append((result, time.perf_counter() - started))
    if as_json:
        payload: list[dict[str, Any]] = []
        for result, wall in results:
            item = asdict(result)
            item["per_member"] = {name: asdict(m) for name, m in result.per_member}
            item["wall_seconds"] = round(wall, 2)
            payload.append(item)
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    out.print(_summary(results, len(setup.pools), sum(setup.capacity(p.name) for p in setup.pools)))
    if members:
        for result, _ in results:
            out.print(_member_table(result))


def _progress(name: str, out: Console, transient: bool) -> Progress:
    return Progress(
        TextColumn(f"[bold]{name:>4}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=transient,
    )


def _replay_in_processes(
    jobs: list[TraceJob],
    setup: ReplayCluster,
    config: SimulationConfig,
    pools: list[str],
    processes: int,
    out: Console,
    transient: bool,
) -> SimulationResult:
    """One replay per pool in worker processes (largest pools first, so the slowest start at
    once), combined in pool order exactly as :func:`quotas.simulator.simulate` does."""
    by_pool: dict[str, list[TraceJob]] = {p: [] for p in pools}
    for job in jobs:
        by_pool[job.pool].append(job)
    done: dict[str, PoolReplay] = {}
    # Fork before the progress bar starts its refresh thread; workers only compute.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context) as executor:
        futures = {
            executor.submit(simulator.replay_pool, by_pool[p], setup, p, config): p
            for p in sorted(pools, key=lambda p: -len(by_pool[p]))
        }
        with _progress(config.policy, out, transient) as bar:
            task = bar.add_task(config.policy, total=len(jobs))
            for future in as_completed(futures):
                pool = futures[future]
                done[pool] = future.result()
                bar.advance(task, len(by_pool[pool]))
    return simulator.combine(config, [done[p] for p in pools])


def _policies(text: str, out: Console) -> list[Policy]:
    chosen: list[Policy] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = next((p for p in POLICIES if p == part), None)
        if match is None:
            _fail(out, f"unknown --policy {part!r}; use nuri, fifo or drf")
        else:
            chosen.append(match)
    if not chosen:
        _fail(out, "--policy is empty")
    return chosen


def _pool_name(text: str) -> str:
    # ASCII digits only: "²".isdigit() is true, yet int() refuses it.
    return f"cluster{int(text):02d}" if text.isascii() and text.isdigit() else text


def _load_trace(path: Path, trace_format: str, seed: int, out: Console) -> list[TraceJob]:
    if not path.is_file():
        _fail(out, f"trace file not found: {path}")
    try:
        if trace_format == "itp":
            with path.open("rb") as stream:
                return read_itp_archive(stream, seed)
        with path.open(encoding="utf-8", newline="") as text:
            return read_generic_csv(text)
    except TraceError as exc:
        _fail(out, f"cannot read {path} as {trace_format} ({exc.code}): {exc.message}")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(out, f"cannot read {path}: {exc}")
    return []  # unreachable: _fail raises


def _load_quotas(path: Path, out: Console) -> list[MemberPlan]:
    if not path.is_file():
        _fail(out, f"quota file not found: {path}")
    try:
        return parse_quota_mapping(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        _fail(out, f"{path} is not valid YAML: {exc}")
    except TraceError as exc:
        _fail(out, f"{path}: {exc.message}")
    return []  # unreachable: _fail raises


def _fail(out: Console, message: str) -> None:
    out.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=2)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def _summary(results: list[tuple[SimulationResult, float]], pools: int, gpus: int) -> Table:
    table = Table(title=f"Trace replay: {pools} pools, {gpus} GPUs (times in hours)")
    for column in (
        "policy",
        "jobs done",
        "util",
        "mean JCT",
        "p95 JCT",
        "mean wait",
        "p95 wait",
        "Jain",
        "quota viol.",
        "preempt.",
        "GPU-h lost",
        "cycles",
        "wall s",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for r, wall in results:
        table.add_row(
            r.policy,
            f"{r.completed}/{r.jobs}",
            f"{r.utilisation:.3f}",
            _hours(r.mean_jct),
            _hours(r.p95_jct),
            _hours(r.mean_wait),
            _hours(r.p95_wait),
            f"{r.jain_fairness:.3f}",
            f"{r.quota_violations}/{r.in_quota_jobs}",
            str(r.preemptions),
            f"{r.gpu_hours_lost:.0f}",
            str(r.cycles),
            f"{wall:.1f}",
        )
    return table


def _member_table(result: SimulationResult) -> Table:
    table = Table(title=f"{result.policy}: per member (times in hours)")
    for column in (
        "member",
        "jobs",
        "GPU-h",
        "mean JCT",
        "p95 JCT",
        "mean wait",
        "p95 wait",
        "service",
        "quota viol.",
    ):
        table.add_column(column, justify="left" if column == "member" else "right")
    for name, m in result.per_member:
        table.add_row(
            name,
            str(m.jobs),
            f"{m.gpu_hours:.0f}",
            _hours(m.mean_jct),
            _hours(m.p95_jct),
            _hours(m.mean_wait),
            _hours(m.p95_wait),
            f"{m.normalised_service:.3f}",
            str(m.quota_violations),
        )
    return table
