"""Training engines: DeepSpeed (ZeRO from the plan) and a plain torch loop, one interface.

Both engines use the same AdamW hyper-parameters and the same LR schedule (linear warmup, then
cosine to 10%), so the throughput benchmark compares like with like and a job can fall back to
the plain loop for debugging. Call order per micro-batch is DeepSpeed's: ``backward(loss)``
then ``step()``; the engine applies the optimizer only at a gradient-accumulation boundary.

``exclude_frozen=True`` (LoRA) leaves frozen parameters out of checkpoints and of the export
state: a checkpoint holds the trainable weights with their optimizer state, and loading it
expects the frozen ones already in the module (loaded from the base again).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

BETAS = (0.9, 0.95)
GRADIENT_CLIPPING = 1.0


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base LR at an optimizer step: warmup, then cosine to 10%."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class TrainEngine(Protocol):
    """What the loops need from an engine."""

    module: torch.nn.Module

    def forward(self, **batch: torch.Tensor) -> Any:
        """Run the model."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss``."""
        ...

    def step(self) -> None:
        """End a micro-batch; applies the optimizer at accumulation boundaries."""
        ...

    def lr(self) -> float:
        """Current learning rate."""
        ...

    def save(self, directory: Path, tag: str) -> None:
        """Write model, optimizer and scheduler state (collective on every rank)."""
        ...

    def load(self, directory: Path, tag: str) -> None:
        """Restore what :meth:`save` wrote."""
        ...

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Complete weights for export on rank 0 (collective; None on other ranks); only the
        trainable ones when the engine excludes frozen parameters."""
        ...


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def frozen_names(module: torch.nn.Module) -> set[str]:
    """Names (as in ``state_dict``) of the parameters that do not train."""
    return {n for n, p in module.named_parameters() if not p.requires_grad}


def without_frozen(
    state: dict[str, torch.Tensor], module: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """``state`` less the frozen parameters of ``module``."""
    frozen = frozen_names(module)
    return {k: v for k, v in state.items() if k not in frozen}


class TorchEngine:
    """AdamW + LambdaLR in plain torch; DistributedDataParallel when world_size > 1."""

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
        grad_accum: int,
        exclude_frozen: bool = False,
    ) -> None:
        import torch.distributed as dist

        self.module = model
        self.exclude_frozen = exclude_frozen
        params = [p for p in model.parameters() if p.requires_grad]
        self._params = params
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=BETAS, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(warmup_steps, total_steps)
        )
        self.grad_accum = grad_accum
        self._micro = 0
        self._model: torch.nn.Module = model
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._model = torch.nn.parallel.DistributedDataParallel(model)

    def forward(self, **batch: torch.Tensor) -> Any:
        return self._model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        scaled: Any = loss / self.grad_accum  # torch's backward is untyped
        scaled.backward()

    def step(self) -> None:
        self._micro += 1
        if self._micro % self.grad_accum == 0:
            torch.nn.utils.clip_grad_norm_(self._params, GRADIENT_CLIPPING)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, directory: Path, tag: str) -> None:
        if _rank() != 0:
            return
        (directory / tag).mkdir(parents=True, exist_ok=True)
        model_state = self.module.state_dict()
        if self.exclude_frozen:
            model_state = without_frozen(model_state, self.module)
        state = {
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "micro": self._micro,
        }
        torch.save(state, directory / tag / "state.pt")

    def load(self, directory: Path, tag: str) -> None:
        state = torch.load(directory / tag / "state.pt", weights_only=False)
        if self.exclude_frozen:
            result = self.module.load_state_dict(state["model"], strict=False)
            missing = set(result.missing_keys) - frozen_names(self.module)
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"checkpoint {tag} does not match the model: missing {sorted(missing)[:5]}, "
                    f"unexpected {sorted(result.unexpected_keys)[:5]}"
                )
        else:
            self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro = int(state["micro"])

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if _rank() != 0:
            return None
        state = self.module.state_dict()
        return without_frozen(state, self.module) if self.exclude_frozen else state


class DeepSpeedTrainEngine:
    """A DeepSpeed engine built from a config dict (see :mod:`workers.deepspeed_config`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: dict[str, Any],
        warmup_steps: int,
        total_steps: int,
        exclude_frozen: bool = False,
    ) -> None:
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        factor = lr_lambda(warmup_steps, total_steps)

        def make_scheduler(optimizer: Any) -> Any:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

        self.config = config
        self.exclude_frozen = exclude_frozen
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=params, config=config, lr_scheduler=make_scheduler
        )
        self.module = self.engine.module
        self.zero_stage = int(config.get("zero_optimization", {}).get("stage", 0))

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path, tag: str) -> None:
        self.engine.save_checkpoint(
            str(directory), tag=tag, exclude_frozen_parameters=self.exclude_frozen
        )

    def load(self, directory: Path, tag: str) -> None:
        # Without the frozen parameters in the checkpoint, the module keeps its own (the base).
        path, _ = self.engine.load_checkpoint(
            str(directory), tag=tag, load_module_strict=not self.exclude_frozen
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag} in {directory}")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.zero_stage == 3:
            # Gathers the partitioned parameters; every rank must take part.
            state: dict[str, torch.Tensor] = self.engine._zero3_consolidated_16bit_state_dict(
                exclude_frozen_parameters=self.exclude_frozen
            )
            return state if _rank() == 0 else None
        if _rank() != 0:
            return None
        state = self.module.state_dict()
        return without_frozen(state, self.module) if self.exclude_frozen else state


def prepare_deepspeed_environment() -> None:
    """Pick DeepSpeed's CPU accelerator on machines without CUDA (before importing it)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
