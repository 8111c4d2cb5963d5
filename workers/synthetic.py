"""A minimal real job for the scheduler: steps, progress, checkpoints, preemption, resume.

The scheduler's integration tests and the demo run this instead of a model when a job's
config says ``{"payload": "synthetic"}``: it exercises every path a training job takes
(report metrics and log lines, checkpoint periodically and on a stop request, resume from the
last checkpoint, fail on demand) in a fraction of a second per step and with no torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    # Defaults look like a short real job (five minutes of one-second steps) in the demo.
    steps: int = 300
    step_seconds: float = 1.0
    checkpoint_every: int = 5
    fail_at_step: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SyntheticConfig:
        fail = config.get("fail_at_step")
        d = cls()
        return cls(
            steps=int(config.get("steps", d.steps)),
            step_seconds=float(config.get("step_seconds", d.step_seconds)),
            checkpoint_every=max(1, int(config.get("checkpoint_every", d.checkpoint_every))),
            fail_at_step=int(fail) if fail is not None else None,
        )


def checkpoint_path(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank}.json"


def load_step(directory: Path, rank: int) -> int:
    path = checkpoint_path(directory, rank)
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["step"])


def save_step(directory: Path, rank: int, step: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, rank)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "rank": rank, "at": time.time()}))
    os.replace(tmp, path)  # a crash mid-write never leaves a torn checkpoint
    return path


def run(
    cfg: SyntheticConfig,
    checkpoint_dir: Path,
    rank: int,
    world_size: int,
    should_stop: Callable[[], bool],
    emit: Callable[[dict[str, Any]], None],
) -> str:
    """Run to completion; returns ``succeeded``, ``preempted`` or ``failed``."""
    step = load_step(checkpoint_dir, rank)
    emit({"type": "log", "line": f"rank {rank}/{world_size} starting at step {step}"})
    while step < cfg.steps:
        if should_stop():
            save_step(checkpoint_dir, rank, step)
            emit({"type": "checkpoint", "step": step, "uri": str(checkpoint_dir)})
            emit({"type": "log", "line": f"rank {rank} stopped for preemption at step {step}"})
            return "preempted"
        t0 = time.monotonic()
        time.sleep(cfg.step_seconds)
        step += 1
        if cfg.fail_at_step is not None and step == cfg.fail_at_step:
            emit({"type": "log", "line": f"rank {rank} failing at step {step} (as configured)"})
            return "failed"
        emit(
            {
                "type": "metric",
                "step": step,
                "values": {"loss": round(4.0 / step, 6), "step_time_s": time.monotonic() - t0},
            }
        )
        if step % cfg.checkpoint_every == 0:
            save_step(checkpoint_dir, rank, step)
            emit({"type": "checkpoint", "step": step, "uri": str(checkpoint_dir)})
    save_step(checkpoint_dir, rank, step)
    emit({"type": "log", "line": f"rank {rank} finished {step} steps"})
    return "succeeded"
