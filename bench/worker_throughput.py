"""Training throughput of a tiny A.X K1 preset: the Nuri job path against a plain torch loop.

Three runs per round, interleaved in one process so they all see the same machine load:

* **plain loop**: a hand-written torch loop, no Nuri job path and no DeepSpeed: the model
  built by ``workers.presets.resolve_model`` / ``load_model`` (same preset, same seed, same
  weights), ``torch.optim.AdamW`` with the engines' hyper-parameters (lr, betas, weight decay,
  LR schedule, gradient clipping) and forward / backward / step over the very same token
  batches the job sees (prepared before the clock starts);
* **job path, torch engine**: ``workers.runtime.run_job`` with ``engine: torch``;
* **job path, DeepSpeed ZeRO-2**: the same job with ``engine: deepspeed`` (``--no-deepspeed``
  leaves it out).

Rates: tokens per CPU-second of this process (``time.process_time``; the job's ``metrics``
events carry the step's ``cpu_time_s``; less sensitive to other load on a shared machine than
wall time, not immune) and tokens per wall second, medians over the steps after warm-up, then
over rounds. A ratio to the plain loop is the median over rounds of the ratio within a round.
The headline is job path / plain loop per CPU-second, against the target >= 0.9. The job path
is also timed from one ``metrics`` event to the next (clocks read by a wrapper around the
job's reporter): that interval adds what the loop does between steps (reducing and reporting
the metrics, the preemption check), which the step's own ``cpu_time_s`` leaves out. The plain
loop's losses are compared with the torch-engine job's, step by step: they match when both
ran the same model on the same batches with the same optimizer.

All runs use ``--threads`` torch threads (default 1: on a shared 2-core VM, two threads
spin-wait on each other whenever another process takes a core, and a step's CPU time grows
many times over). ``--max-seconds`` (default 150) stops starting new rounds.

    python bench/worker_throughput.py [--preset axk1-tiny] [--steps 30] [--rounds 5] [--threads 1]

Results also go to bench/results/worker_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Imported after the environment is set: DeepSpeed reads DS_ACCELERATOR on import.
import torch

from workers.data import BatchStream, build_examples, read_records
from workers.engines import BETAS, GRADIENT_CLIPPING, lr_lambda
from workers.presets import load_model, resolve_model
from workers.reporting import Reporter, reporter_for
from workers.runtime import run_job
from workers.spec import JobSpec
from workers.tokenizer import load_tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "birds"]
TARGET = 0.9  # job path / plain loop, tokens per CPU-second
SEQ_LEN = 128
MICRO_BATCH = 8

RUNS = {
    "plain": "plain torch loop",
    "torch": "job path, torch engine",
    "deepspeed": "job path, DeepSpeed ZeRO-2",
}


def _corpus(path: Path) -> None:
    rng = random.Random(0)
    lines = (" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(400))
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))


def _spec(engine: str, preset: str, steps: int, work: Path, tag: str) -> JobSpec:
    return JobSpec.from_dict(
        {
            "job_id": f"bench-{tag}",
            "kind": "pretrain",
            "output_dir": str(work / tag),
            "model": {"name": preset},
            "data": {"path": str(work / "corpus.jsonl")},
            "seq_len": SEQ_LEN,
            "micro_batch": MICRO_BATCH,
            "steps": steps,
            "engine": engine,
            "zero_stage": 2,
            "resume": False,
            "device": "cpu",
        }
    )


class ClockedReporter:
    """Passes events on to the job's own reporter and reads both clocks at each ``metrics``."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.clocks: dict[int, tuple[float, float]] = {}  # step -> (wall, CPU) after reporting

    def report(self, event: dict[str, Any]) -> None:
        self.inner.report(event)
        if event.get("type") == "metrics" and "tokens_per_s" in event:  # not an evaluation
            self.clocks[int(event["step"])] = (time.perf_counter(), time.process_time())

    def close(self) -> None:
        self.inner.close()


def _rates(rows: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Median (tokens per wall second, tokens per CPU second) of (tokens, wall_s, cpu_s) rows."""
    wall = statistics.median(n / w for n, w, _ in rows)
    cpu = statistics.median(n / c for n, _, c in rows)
    return wall, cpu


def _job(engine: str, preset: str, steps: int, warmup: int, work: Path, tag: str) -> dict[str, Any]:
    """One run through ``run_job``; rates from its metrics events and from the clocked reporter."""
    spec = _spec(engine, preset, steps, work, tag)
    reporter = ClockedReporter(reporter_for(spec, 0))
    result = run_job(spec, reporter=reporter)
    if result.status != "succeeded":
        raise SystemExit(f"{tag} failed: {result.error}")
    lines = (Path(spec.output_dir) / "events.jsonl").read_text().splitlines()
    # Training steps only (evaluations of a held-out split are metrics events too).
    metrics = [e for e in map(json.loads, lines) if e["type"] == "metrics" and "tokens_per_s" in e]
    # Tokens of the step (world size 1): the event's own count when it carries one.
    tokens = {
        e["step"]: int(e.get("tokens") or round(e["tokens_per_s"] * e["step_time_s"]))
        for e in metrics
    }
    kept = [e for e in metrics if e["step"] > warmup]
    wall, cpu = _rates([(tokens[e["step"]], e["step_time_s"], e["cpu_time_s"]) for e in kept])
    clocks = reporter.clocks
    between = [
        (tokens[s], clocks[s][0] - clocks[s - 1][0], clocks[s][1] - clocks[s - 1][1])
        for s in sorted(clocks)
        if s > warmup and s - 1 in clocks
    ]
    wall_between, cpu_between = _rates(between)
    return {
        "wall": wall,
        "cpu": cpu,
        "wall_between": wall_between,
        "cpu_between": cpu_between,
        "losses": [e["loss"] for e in metrics],
    }


def _batches(spec: JobSpec) -> list[dict[str, torch.Tensor]]:
    """The batches the job's rank 0 draws, in order (same tokenizer, seed and stream)."""
    assert spec.data is not None
    source = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    tokenizer = load_tokenizer(source.tokenizer, source.weights_dir)
    records = read_records(spec.data.path, spec.data.format, spec.data.text_field)
    examples = build_examples(records, tokenizer, spec.seq_len, spec.system_prompt)
    stream = BatchStream(examples, spec.micro_batch, spec.seed)
    return [stream.next_batch() for _ in range(spec.steps * spec.grad_accum)]


def _plain(preset: str, steps: int, warmup: int, work: Path, tag: str) -> dict[str, Any]:
    """The hand-written loop: model, AdamW, forward / backward / step; nothing else."""
    spec = _spec("torch", preset, steps, work, tag)  # only read for hyper-parameters
    batches = _batches(spec)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    source = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    model = load_model(source, dtype=torch.float32, seed=spec.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=BETAS, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(spec.warmup_steps, spec.steps)
    )
    rows: list[tuple[int, float, float]] = []
    losses: list[float] = []
    for step, batch in enumerate(batches, 1):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIPPING)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach().item()))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if step > warmup:
            rows.append((tokens[step - 1], wall, cpu))
    wall, cpu = _rates(rows)
    # Each step is timed whole, so "between steps" is the step itself here.
    return {"wall": wall, "cpu": cpu, "wall_between": wall, "cpu_between": cpu, "losses": losses}


def _met(ratio: float) -> str:
    return "met" if ratio >= TARGET else "NOT met"


def main() -> None:
    """Run the rounds, print the table and the ratios, write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="axk1-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-deepspeed", action="store_true", help="skip the DeepSpeed run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for every run (default 1: with two, a neighbour taking a "
        "core makes them spin-wait on each other and inflates CPU time many times over)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="start no new round after this many seconds (the first round always runs)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup by at least 2")
    names = ["plain", "torch"] + ([] if args.no_deepspeed else ["deepspeed"])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started, cpu_started = time.time(), time.process_time()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _corpus(work / "corpus.jsonl")
        for round_ in range(args.rounds):
            if round_ and time.time() - started > args.max_seconds:
                print(f"stopping after {round_} rounds: --max-seconds {args.max_seconds:.0f}")
                break
            # Rotate the order so no run always follows the same neighbour.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                tag = f"{name}-{round_}"
                if name == "plain":
                    run = _plain(args.preset, args.steps, args.warmup, work, tag)
                else:
                    run = _job(name, args.preset, args.steps, args.warmup, work, tag)
                runs[name].append(run)
                print(
                    f"round {round_ + 1}/{args.rounds} {RUNS[name]:<27}"
                    f" {run['cpu']:8.0f} tokens/CPU-s {run['wall']:8.0f} tokens/s",
                    flush=True,
                )

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    def paired(name: str, key: str, plain_key: str) -> list[float]:
        """``name`` / plain loop within each round (both ran under the same load)."""
        return [r[key] / p[plain_key] for r, p in zip(runs[name], runs["plain"], strict=True)]

    loss_diff = max(
        abs(a - b)
        for p, t in zip(runs["plain"], runs["torch"], strict=True)
        for a, b in zip(p["losses"], t["losses"], strict=True)
    )
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        per_round = paired(name, "cpu", "cpu")
        summary[name] = {
            "tokens_per_cpu_s": med(name, "cpu"),
            "tokens_per_s": med(name, "wall"),
            "tokens_per_cpu_s_step_to_step": med(name, "cpu_between"),
            "tokens_per_s_step_to_step": med(name, "wall_between"),
            # Ratios to the plain loop: the median over rounds of the ratio within each round,
            # so a burst of other load during one run does not move the figure much.
            "over_plain_cpu": statistics.median(per_round),
            "over_plain_wall": statistics.median(paired(name, "wall", "wall")),
            "over_plain_cpu_step_to_step": statistics.median(paired(name, "cpu_between", "cpu")),
            "over_plain_cpu_per_round": per_round,
        }
    load_end = os.getloadavg()[0]
    rounds = len(runs["plain"])
    print()
    print(
        f"preset {args.preset}, seq {SEQ_LEN} x micro-batch {MICRO_BATCH}, {args.steps} steps, "
        f"median over steps > {args.warmup}, median of {rounds} interleaved rounds, "
        f"{torch.get_num_threads()} torch threads"
    )
    header = (
        f"{'run':<28}{'tokens/CPU-s':>13}{'tokens/s':>10}{'/plain CPU':>12}{'/plain wall':>12}"
        f"{'step-to-step tokens/CPU-s':>27}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        s = summary[name]
        print(
            f"{RUNS[name]:<28}{s['tokens_per_cpu_s']:13.0f}{s['tokens_per_s']:10.0f}"
            f"{s['over_plain_cpu']:12.3f}{s['over_plain_wall']:12.3f}"
            f"{s['tokens_per_cpu_s_step_to_step']:17.0f} ({s['over_plain_cpu_step_to_step']:.3f})"
        )
    print()
    for name in names[1:]:
        s = summary[name]
        each = ", ".join(f"{x:.3f}" for x in s["over_plain_cpu_per_round"])
        print(
            f"{RUNS[name]} / plain loop per CPU-second: {s['over_plain_cpu']:.3f} "
            f"(target >= {TARGET}: {_met(s['over_plain_cpu'])}; per round {each}; "
            f"step-to-step {s['over_plain_cpu_step_to_step']:.3f}: "
            f"{_met(s['over_plain_cpu_step_to_step'])})"
        )
    if "deepspeed" in summary:
        ds_cpu, torch_cpu = (summary[n]["tokens_per_cpu_s"] for n in ("deepspeed", "torch"))
        ds_over_torch = ds_cpu / torch_cpu
        print(f"DeepSpeed / torch engine per CPU-second: {ds_over_torch:.3f}")
    print(f"plain loop vs torch-engine job: largest loss difference {loss_diff:.2e}")
    print(f"load average {load_start:.1f} -> {load_end:.1f}; {time.time() - started:.0f} s wall")

    result: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "preset": args.preset,
        "seq_len": SEQ_LEN,
        "micro_batch": MICRO_BATCH,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": len(runs["plain"]),
        "rounds_requested": args.rounds,
        "target_over_plain_cpu": TARGET,
        "summary": summary,
        "headline": {
            name: {
                "over_plain_cpu": summary[name]["over_plain_cpu"],
                "met": summary[name]["over_plain_cpu"] >= TARGET,
            }
            for name in names[1:]
        },
        "tokens_per_s": {name: summary[name]["tokens_per_s"] for name in names},
        "tokens_per_cpu_s": {name: summary[name]["tokens_per_cpu_s"] for name in names},
        "per_round": {name: [r["wall"] for r in runs[name]] for name in names},
        "per_round_cpu": {name: [r["cpu"] for r in runs[name]] for name in names},
        "max_loss_diff_plain_vs_torch_engine": loss_diff,
        "seconds": round(time.time() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        # Wall-clock rates on a shared machine: record how busy it was.
        "load_average_1m": {"start": load_start, "end": load_end},
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if "deepspeed" in summary:
        result["deepspeed_over_torch_cpu"] = ds_over_torch
        result["deepspeed_over_torch"] = (
            summary["deepspeed"]["tokens_per_s"] / summary["torch"]["tokens_per_s"]
        )
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "worker_throughput.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
