"""GPU check of the worker job path: tiny real runs on one CUDA GPU, tokens/s and MFU.

For a machine with a CUDA GPU (an H100 or H200; a few minutes). Every run goes through
``workers.runtime.run_job``, exactly as a job does, in bf16 on ``cuda``:

1. finetune of ``axk1-mini`` with DeepSpeed ZeRO-2 (one device);
2. the same finetune with the plain torch engine;
3. distillation of ``student-mini`` from ``axk1-mini`` (DeepSpeed, ZeRO stage from the plan);
4. ranks per device: the finetune with 2 ranks, one per GPU (``LOCAL_RANK`` 0 and 1, NCCL),
   each rank in its own process; only when ``torch.cuda.device_count() >= 2`` (NCCL does not
   run two ranks of one group on the same GPU), otherwise the script says it skipped it.

It prints the device, torch / CUDA / NCCL / DeepSpeed / transformers versions, and per run the
median tokens/s and model FLOPs utilisation (the loop's ``mfu`` metric: PaLM FLOPs per token
over the dense bf16 peak of ``workers.training.PEAK_BF16_FLOPS``) over the steps after
warm-up, the step time, peak GPU memory and the first and last loss; results go to
bench/results/gpu_check.json. Exit 0 when every run succeeded, 1 otherwise.

Without a CUDA device it prints "no CUDA device: skipped" and exits 0 at once (``make bench``
runs every bench/*.py). ``--cpu`` runs the same checks on CPU instead (fp32, no MFU, 2 ranks
over gloo), to test the script itself on a machine without a GPU; it writes
bench/results/gpu_check_cpu_test.json.

    python bench/gpu_check.py [--steps 30] [--warmup 5] [--seq-len 512] [--micro-batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_check.json"
# --cpu (testing the script) writes elsewhere so it never replaces a GPU machine's results.
CPU_TEST_RESULTS = ROOT / "bench" / "results" / "gpu_check_cpu_test.json"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "birds"]
CHILD_MARK = "GPU_CHECK_RANK_RESULT "
RANK_TIMEOUT_S = 300


def _corpus(path: Path, lines: int = 2000) -> None:
    rng = random.Random(0)
    text = (" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(lines))
    path.write_text("".join(json.dumps({"text": line}) + "\n" for line in text))


def _spec(name: str, work: Path, args: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    return {
        "job_id": f"gpu-check-{name}",
        "kind": "finetune",
        "output_dir": str(work / name),
        "model": {"name": "axk1-mini"},
        "data": {"path": str(work / "corpus.jsonl")},
        "precision": "bf16",
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "lr": 1e-3,
        "resume": False,
        "device": "cpu" if args.cpu else "cuda",
        **fields,
    }


def _summarise(events_path: Path, warmup: int) -> dict[str, Any]:
    """Medians over the steps after warm-up, from the job's own events."""
    if not events_path.exists():
        return {}
    events = [json.loads(x) for x in events_path.read_text().splitlines() if x.strip()]
    # Training steps only (evaluations of a held-out split are metrics events too).
    metrics = [e for e in events if e["type"] == "metrics" and "tokens_per_s" in e]
    kept = [e for e in metrics if e["step"] > warmup] or metrics
    out: dict[str, Any] = {"steps": len(metrics)}
    if kept:
        out["tokens_per_s"] = statistics.median(e["tokens_per_s"] for e in kept)
        out["step_time_ms"] = 1e3 * statistics.median(e["step_time_s"] for e in kept)
        mfu = [e["mfu"] for e in kept if "mfu" in e]
        out["mfu"] = statistics.median(mfu) if mfu else None
        out["loss_first"], out["loss_last"] = metrics[0]["loss"], metrics[-1]["loss"]
    for e in events:
        if e["type"] == "engine":
            out["engine"] = e.get("engine")
            out["zero_stage"] = e.get("zero_stage")
        if e["type"] == "plan":
            out["plan_gpus"] = e["plan"].get("gpus")
            out["plan_zero_stage"] = e["plan"].get("zero_stage")
        if e["type"] == "status" and e.get("status") == "running":
            out["world_size"] = e.get("world_size")
    return out


def _in_process(name: str, raw: dict[str, Any], warmup: int, cuda: bool) -> dict[str, Any]:
    """One job in this process through run_job."""
    import torch

    from workers.runtime import run_job
    from workers.spec import JobSpec

    spec = JobSpec.from_dict(raw)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run_job(spec)
    out: dict[str, Any] = {
        "status": result.status,
        "error": result.error,
        "seconds": round(time.perf_counter() - started, 1),
        **_summarise(Path(spec.output_dir) / "events.jsonl", warmup),
    }
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _two_ranks(raw: dict[str, Any], warmup: int, work: Path) -> dict[str, Any]:
    """The job with 2 ranks, one process each, LOCAL_RANK = rank (one GPU per rank)."""
    from workers.runtime import free_port

    spec_path = work / "two-ranks.json"
    spec_path.write_text(json.dumps(raw))
    port = free_port()
    started = time.perf_counter()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        cmd = [sys.executable, __file__, "--rank-child", str(spec_path)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    ranks: list[dict[str, Any]] = []
    for rank, proc in enumerate(procs):
        try:
            text = proc.communicate(timeout=RANK_TIMEOUT_S)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            text = proc.communicate()[0].decode(errors="replace")
            text += f"\nrank {rank}: killed after {RANK_TIMEOUT_S} s"
        marked = [x for x in text.splitlines() if x.startswith(CHILD_MARK)]
        if marked:
            ranks.append(json.loads(marked[-1][len(CHILD_MARK) :]))
        else:
            ranks.append({"status": "failed", "error": text[-2000:], "rc": proc.returncode})
    ok = all(r["status"] == "succeeded" for r in ranks)
    devices = [r.get("device") for r in ranks]
    # On GPU every rank must sit on its own device (--cpu: both on the CPU, nothing to check).
    gpus = [d for d in devices if d and d.startswith("cuda")]
    one_per_device = len(set(gpus)) == len(gpus)
    errors = [f"rank {i}: {r['error']}" for i, r in enumerate(ranks) if r.get("error")]
    if ok and not one_per_device:
        errors.append(f"ranks shared a device: {devices}")
    return {
        "status": "succeeded" if ok and one_per_device else "failed",
        "error": "; ".join(errors) or None,
        "seconds": round(time.perf_counter() - started, 1),
        "ranks": ranks,
        "devices": devices,
        **_summarise(Path(raw["output_dir"]) / "events.jsonl", warmup),
    }


def _rank_child(spec_path: str) -> int:
    """Run one rank (in a process of its own) and print its outcome for the parent."""
    import torch

    from workers.runtime import run_job
    from workers.spec import JobSpec

    spec = JobSpec.from_file(spec_path)
    result = run_job(spec)
    on_gpu = spec.device == "cuda" and torch.cuda.is_available()
    out = {
        "rank": int(os.environ["RANK"]),
        "status": result.status,
        "error": result.error,
        "device": f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu",
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
    }
    print(CHILD_MARK + json.dumps(out), flush=True)
    return 0 if result.status == "succeeded" else 1


def _environment(cuda: bool) -> dict[str, Any]:
    import deepspeed
    import torch
    import transformers

    from workers.training import peak_flops

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "device_count": torch.cuda.device_count() if cuda else 0,
        "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
        "nvcc": shutil.which("nvcc"),
        "ninja": shutil.which("ninja"),
    }
    try:
        from deepspeed.git_version_info import installed_ops

        env["fused_adam_prebuilt"] = bool(installed_ops.get("fused_adam"))
    except ImportError:
        env["fused_adam_prebuilt"] = None
    if cuda:
        device = torch.device("cuda", 0)
        env["device"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        # A tuple (older torch: an int).
        nccl: Any = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]
        env["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        env["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        env["peak_bf16_flops"] = peak_flops(device)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device"] = "cpu (--cpu test mode)"
    return env


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    """Run the checks (or skip without CUDA); print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--cpu", action="store_true", help="test the script on CPU instead")
    parser.add_argument("--rank-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    if args.rank_child:
        return _rank_child(args.rank_child)

    import torch

    cuda = not args.cpu and torch.cuda.is_available()
    if not cuda and not args.cpu:
        print("no CUDA device: skipped (bench/gpu_check.py needs one CUDA GPU; --cpu tests it)")
        return 0
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    if cuda and os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
        # A shell set up for the CPU tests would make DeepSpeed ignore the GPU.
        print(f"DS_ACCELERATOR={os.environ['DS_ACCELERATOR']} ignored: using cuda")
        os.environ["DS_ACCELERATOR"] = "cuda"
    if not cuda:
        os.environ["DS_ACCELERATOR"] = "cpu"

    started = time.perf_counter()
    env = _environment(cuda)
    print(
        f"device {env['device']} x{env['device_count']}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, NCCL {env.get('nccl')}, DeepSpeed {env['deepspeed']}, "
        f"transformers {env['transformers']}, driver {env.get('driver')}"
    )
    if cuda:
        peak = env["peak_bf16_flops"]
        print(
            f"MFU against {peak / 1e12:.0f} TFLOP/s dense bf16"
            if peak
            else "MFU: this GPU is not in workers.training.PEAK_BF16_FLOPS (no mfu metric)"
        )
        if not env["fused_adam_prebuilt"]:
            print(
                "DeepSpeed's FusedAdam is not prebuilt: the first DeepSpeed run JIT-compiles it "
                f"(needs nvcc and ninja: nvcc {env['nvcc']}, ninja {env['ninja']})"
            )
    print(
        f"axk1-mini, bf16, seq {args.seq_len} x micro-batch {args.micro_batch}, "
        f"{args.steps} steps, medians over steps > {args.warmup}",
        flush=True,
    )

    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _corpus(work / "corpus.jsonl")
        plans = {
            "finetune, DeepSpeed ZeRO-2": _spec(
                "finetune-ds", work, args, engine="deepspeed", zero_stage=2
            ),
            "finetune, torch engine": _spec("finetune-torch", work, args, engine="torch"),
            "distill student-mini <- axk1-mini": _spec(
                "distill",
                work,
                args,
                kind="distill",
                model={"name": "student-mini"},
                teacher={"name": "axk1-mini"},
                engine="deepspeed",
                distill={"temperature": 2.0, "hard_label_weight": 0.1},
            ),
        }
        for name, raw in plans.items():
            print(f"-- {name} ...", flush=True)
            runs[name] = _in_process(name, raw, args.warmup, cuda)
            print(f"   {runs[name]['status']} in {runs[name]['seconds']} s", flush=True)
        two = "finetune, 2 ranks (one per device)"
        count = torch.cuda.device_count() if cuda else 2
        if count >= 2:
            print(f"-- {two} ...", flush=True)
            raw = _spec("two-ranks", work, args, engine="deepspeed", zero_stage=2)
            runs[two] = _two_ranks(raw, args.warmup, work)
            print(f"   {runs[two]['status']} in {runs[two]['seconds']} s", flush=True)
            ranks_check = f"2 ranks on devices {runs[two]['devices']}: {runs[two]['status']}"
        else:
            ranks_check = (
                f"skipped: {count} CUDA device; 2 ranks need 2 devices (one rank per GPU, "
                "NCCL does not run two ranks of a group on one GPU)"
            )

    print()
    header = (
        f"{'run':<36}{'status':>10}{'tokens/s':>11}{'MFU':>8}{'step ms':>9}"
        f"{'GiB':>7}{'ZeRO':>6}{'loss first -> last':>21}{'s':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, r in runs.items():
        mfu = None if r.get("mfu") is None else f"{100 * r['mfu']:.2f}%"
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-"
        print(
            f"{name:<36}{r['status']:>10}{_fmt(r.get('tokens_per_s'), ',.0f'):>11}"
            f"{mfu or '-':>8}"
            f"{_fmt(r.get('step_time_ms'), '.1f'):>9}{_fmt(r.get('peak_memory_gib'), '.2f'):>7}"
            f"{_fmt(r.get('zero_stage'), 'd'):>6}{loss:>21}{r['seconds']:>7}"
        )
    print(f"ranks per device: {ranks_check}")
    failed = [name for name, r in runs.items() if r["status"] != "succeeded"]
    for name in failed:
        print(f"FAILED {name}: {runs[name]['error']}")
    elapsed = time.perf_counter() - started
    print(f"{len(runs) - len(failed)}/{len(runs)} runs succeeded in {elapsed:.0f} s")
    print(f"results: {RESULTS if cuda else CPU_TEST_RESULTS}")

    target = RESULTS if cuda else CPU_TEST_RESULTS
    target.parent.mkdir(exist_ok=True)
    target.write_text(
        json.dumps(
            {
                "date": datetime.now().isoformat(timespec="seconds"),
                "mode": "cuda" if cuda else "cpu (test mode)",
                "environment": env,
                "model": "axk1-mini",
                "seq_len": args.seq_len,
                "micro_batch": args.micro_batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "runs": runs,
                "ranks_per_device": ranks_check,
                "seconds": round(elapsed, 1),
                "ok": not failed,
            },
            indent=2,
            default=str,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
