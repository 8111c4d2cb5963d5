"""Training throughput of a tiny A.X K1 preset: DeepSpeed (ZeRO-2) versus a plain torch loop.

Both runs go through the real job path (``workers.runtime.run_job``: same model, data,
optimizer, LR schedule and gradient clipping), interleaved in one process so they see the same
machine. Reports the median tokens/s over the steps after warm-up, and the ratio.

    python bench/worker_throughput.py [--preset axk1-tiny] [--steps 30] [--rounds 2]

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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Imported after the environment is set: DeepSpeed reads DS_ACCELERATOR on import.
from workers.runtime import run_job
from workers.spec import JobSpec

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "birds"]


def _corpus(path: Path) -> None:
    rng = random.Random(0)
    lines = (" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(400))
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))


def _measure(
    engine: str, preset: str, steps: int, warmup: int, work: Path, round_: int
) -> tuple[float, float]:
    """Median (tokens per wall second, tokens per CPU second) after warm-up."""
    out = work / f"{engine}-{round_}"
    spec = JobSpec.from_dict(
        {
            "job_id": f"bench-{engine}-{round_}",
            "kind": "pretrain",
            "output_dir": str(out),
            "model": {"name": preset},
            "data": {"path": str(work / "corpus.jsonl")},
            "seq_len": 128,
            "micro_batch": 8,
            "steps": steps,
            "engine": engine,
            "zero_stage": 2,
            "resume": False,
        }
    )
    result = run_job(spec)
    if result.status != "succeeded":
        raise SystemExit(f"{engine} run failed: {result.error}")
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    steps_ = [e for e in events if e["type"] == "metrics" and e["step"] > warmup]
    wall = statistics.median(e["tokens_per_s"] for e in steps_)
    cpu = statistics.median(e["tokens_per_s"] * e["step_time_s"] / e["cpu_time_s"] for e in steps_)
    return wall, cpu


def main() -> None:
    """Run the comparison and print one line per engine plus the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="axk1-tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"torch": [], "deepspeed": []}
    cpu_rates: dict[str, list[float]] = {"torch": [], "deepspeed": []}
    started = time.time()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _corpus(work / "corpus.jsonl")
        for round_ in range(args.rounds):
            for engine in ("torch", "deepspeed"):
                wall, cpu = _measure(engine, args.preset, args.steps, args.warmup, work, round_)
                rates[engine].append(wall)
                cpu_rates[engine].append(cpu)
    torch_rate = statistics.median(rates["torch"])
    ds_rate = statistics.median(rates["deepspeed"])
    torch_cpu = statistics.median(cpu_rates["torch"])
    ds_cpu = statistics.median(cpu_rates["deepspeed"])
    result = {
        "preset": args.preset,
        "steps": args.steps,
        "rounds": args.rounds,
        "tokens_per_s": {"torch": torch_rate, "deepspeed": ds_rate},
        "per_round": rates,
        "deepspeed_over_torch": ds_rate / torch_rate,
        # Tokens per CPU-second of the training process: hardly moved by other processes.
        "tokens_per_cpu_s": {"torch": torch_cpu, "deepspeed": ds_cpu},
        "per_round_cpu": cpu_rates,
        "deepspeed_over_torch_cpu": ds_cpu / torch_cpu,
        "seconds": round(time.time() - started, 1),
        # Wall-clock rates on a shared machine: record how busy it was.
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
    }
    print(f"preset {args.preset}, seq 128 x micro-batch 8, median over steps > {args.warmup}")
    print(f"plain torch loop : {torch_rate:10.0f} tokens/s")
    print(f"DeepSpeed ZeRO-2 : {ds_rate:10.0f} tokens/s")
    print(f"DeepSpeed / torch: {ds_rate / torch_rate:10.3f}")
    print(
        f"per CPU-second   : torch {torch_cpu:.0f}, DeepSpeed {ds_cpu:.0f} tokens, "
        f"ratio {ds_cpu / torch_cpu:.3f}"
    )
    print(f"per round: {rates}; load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "worker_throughput.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
