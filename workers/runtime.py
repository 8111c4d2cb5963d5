"""Running one job in one process: device, process group, reporter, plan, dispatch by kind.

:func:`run_job` is what ``python -m workers.run`` and the Ray actors call. It joins the
torch.distributed group described by the usual environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``) with gloo on CPU and NCCL on GPU, reports
``status`` events around the job, and turns any exception into a ``failed`` status.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.checkpoint import PreemptionNotice
from workers.reporting import JobEvents, Reporter, reporter_for
from workers.spec import JobSpec

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """Outcome of a job on one rank."""

    status: str  # succeeded | preempted | failed
    step: int = 0
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    manifest: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a Ray actor returns)."""
        return dict(self.__dict__)


@dataclass
class JobContext:
    """What every job kind receives."""

    spec: JobSpec
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype
    events: JobEvents
    notice: PreemptionNotice

    @property
    def is_main(self) -> bool:
        """Rank 0 writes artifacts and reports."""
        return self.rank == 0

    @property
    def output_dir(self) -> Path:
        """Where the job's artifacts go."""
        return Path(self.spec.output_dir)


def free_port() -> int:
    """A TCP port nothing listens on right now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(on_gpu: bool) -> tuple[int, int]:
    """Join (or create, for a single process) the default process group; (rank, world)."""
    import torch.distributed as dist

    # DeepSpeed always wants a process group, even for one process, and reads these.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    if dist.is_initialized():  # an earlier job in this process created it
        rank, world = dist.get_rank(), dist.get_world_size()
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        return rank, world
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
    backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world


def pick_device(choice: str) -> tuple[torch.device, torch.dtype]:
    """Device and compute dtype: bf16 on GPU, fp32 on CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        # A launcher that gives each rank its own device (Ray sets CUDA_VISIBLE_DEVICES to
        # the rank's GPU) leaves one visible: index 0. torchrun leaves the node's GPUs
        # visible: the rank's LOCAL_RANK picks its own.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        index = local if torch.cuda.device_count() > 1 else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index), torch.bfloat16
    return torch.device("cpu"), torch.float32


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (weights and data order derive from the spec's seed)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_rank(
    spec: JobSpec,
    rank: int,
    world_size: int,
    master: tuple[str, int],
    should_stop: Callable[[], bool] | None = None,
    reporter: Reporter | None = None,
) -> JobResult:
    """Run rank ``rank`` of ``world_size`` with rank 0's ``(address, port)`` as rendezvous.

    For a launcher that owns one process per rank (a Ray actor pinned to a placement-group
    bundle): every rank calls this with the same ``master``. Must not run in a process that
    already joined another job's process group.
    """
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": os.environ.get("LOCAL_RANK", "0"),
            "MASTER_ADDR": master[0],
            "MASTER_PORT": str(master[1]),
        }
    )
    return run_job(spec, should_stop=should_stop, reporter=reporter)


# Variables init_distributed fills in for a single-process job.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_job(
    spec: JobSpec,
    should_stop: Callable[[], bool] | None = None,
    reporter: Reporter | None = None,
) -> JobResult:
    """Run ``spec`` on this process's rank and return its outcome (never raises)."""
    saved = {key: os.environ.get(key) for key in DIST_ENV}
    try:
        return _run(spec, should_stop, reporter)
    except Exception as exc:  # setup failed before the job could report anything
        log.exception("job %s could not start", spec.job_id)
        return JobResult("failed", error=f"{type(exc).__name__}: {exc}")
    finally:
        # A job run inside a long-lived process (a supervisor, tests) must not leak its
        # rendezvous address into the processes that one starts later.
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(
    spec: JobSpec, should_stop: Callable[[], bool] | None, reporter: Reporter | None
) -> JobResult:
    from workers.engines import prepare_deepspeed_environment

    prepare_deepspeed_environment()
    device, dtype = pick_device(spec.device)
    rank, world = init_distributed(device.type == "cuda")
    reporter = reporter or reporter_for(spec, rank)
    events = JobEvents(spec.job_id, reporter)
    notice = PreemptionNotice(spec.preemption_flag, should_stop)
    ctx = JobContext(spec, rank, world, device, dtype, events, notice)
    try:
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        events.emit("status", status="running", kind=spec.kind, world_size=world, rank=rank)
        result = _dispatch(ctx)
    except Exception as exc:  # a job failure is reported, never a crashed supervisor
        log.exception("job %s failed", spec.job_id)
        result = JobResult("failed", error=f"{type(exc).__name__}: {exc}")
        events.emit("status", status="failed", error=result.error, trace=traceback.format_exc())
    else:
        events.emit("status", status=result.status, step=result.step, manifest=result.manifest)
    finally:
        notice.close()
        reporter.close()
    return result


def _dispatch(ctx: JobContext) -> JobResult:
    kind = ctx.spec.kind
    if kind in ("finetune", "pretrain", "lora"):
        from workers.training import run_training

        return run_training(ctx)
    if kind == "distill":
        from workers.distill import run_distill

        return run_distill(ctx)
    from workers.inference import run_inference

    return run_inference(ctx)
