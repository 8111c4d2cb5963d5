"""Checkpoints and the preemption notice.

A checkpoint is a directory ``<checkpoint_dir>/step-<n>/`` holding the engine's state (model,
optimizer, LR scheduler: DeepSpeed's own layout, or one ``state.pt`` for the plain loop) plus
``client_state.pt`` with the data position and every RNG. ``<checkpoint_dir>/latest`` names the
newest complete one; it is written last, so a crash mid-save leaves the previous checkpoint
as the one a retry resumes from. :func:`prune_checkpoints` keeps only the newest few (never
the one ``latest`` names). A LoRA job's checkpoints hold the adapter and its optimizer state
only: the frozen base comes back from the base weights (or the seed) on resume.

The scheduler preempts a job by asking it to stop within a grace period. A job learns of it
through any of: SIGTERM / SIGUSR1 (Ray and Kubernetes send SIGTERM), a flag file appearing,
or a caller-supplied ``should_stop()``. Ranks agree on stopping with an all-reduce so every
rank checkpoints at the same step.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The layout (tags, the ``latest`` pointer) lives in a torch-free module the control plane
# reads too; re-exported here for the training loop.
from workers.checkpoint_layout import LATEST as LATEST
from workers.checkpoint_layout import checkpoint_tags as checkpoint_tags
from workers.checkpoint_layout import latest_tag as latest_tag
from workers.checkpoint_layout import mark_latest as mark_latest
from workers.checkpoint_layout import tag_for as tag_for


class PreemptionNotice:
    """Whether this job has been asked to stop; combines signals, a flag file and a callable."""

    def __init__(
        self,
        flag_file: str | Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1),
    ) -> None:
        self.flag_file = Path(flag_file) if flag_file else None
        self.should_stop = should_stop
        self._signalled = threading.Event()
        self._previous: dict[int, Any] = {}
        # Signal handlers can only be installed from the main thread (not in Ray actor threads).
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled.set()

    def requested(self) -> bool:
        """True once any source has asked the job to stop."""
        if self._signalled.is_set():
            return True
        if self.flag_file is not None and self.flag_file.exists():
            return True
        return bool(self.should_stop and self.should_stop())

    def close(self) -> None:
        """Restore the signal handlers this notice replaced."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def agree_to_stop(local: bool) -> bool:
    """True on every rank if any rank was asked to stop (one all-reduce when distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    flag = torch.tensor([1.0 if local else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def rng_state() -> dict[str, Any]:
    """Every RNG a step can draw from."""
    import numpy as np

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` captured."""
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints (0 keeps all); never the one ``latest``
    names. Returns the deleted tags. Call on one rank, after ``latest`` moved."""
    if keep <= 0:
        return []
    latest = latest_tag(checkpoint_dir)
    doomed = [t for t in checkpoint_tags(checkpoint_dir)[:-keep] if t != latest]
    for tag in doomed:
        shutil.rmtree(checkpoint_dir / tag, ignore_errors=True)
    return doomed


def save_client_state(directory: Path, state: dict[str, Any], rank: int) -> None:
    """Data position and RNGs of one rank (RNG streams differ per rank)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / f"client_state.rank{rank}.pt")


def load_client_state(directory: Path, rank: int) -> dict[str, Any]:
    """What :func:`save_client_state` wrote for ``rank``."""
    loaded: dict[str, Any] = torch.load(
        directory / f"client_state.rank{rank}.pt", weights_only=False
    )
    return loaded
