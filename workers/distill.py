"""Distillation: a frozen teacher (A.X K1 or a derivative) trains a smaller student.

Loss per target token: ``(1 - w) * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + w * CE``
where ``T`` is the temperature and ``w`` the hard-label weight (the ``T^2`` keeps gradient
scale independent of ``T``, Hinton et al. 2015). Teacher and student must share a vocabulary,
so their logits index the same tokens; the planner and this module both refuse a mismatch.

The teacher runs in eval mode under ``torch.no_grad`` on every rank; only the student is
trained. Under ZeRO-3 (what the planner picks for A.X K1 teachers) both are partitioned over
the ranks, the teacher in an optimizer-less DeepSpeed engine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers.data import IGNORE_INDEX
from workers.engines import TrainEngine
from workers.model_stats import model_stats
from workers.presets import ModelSource, load_model, resolve_model
from workers.runtime import JobContext, JobResult
from workers.spec import SpecError
from workers.tokenizer import load_tokenizer
from workers.training import (
    engine_config,
    export_model,
    finish,
    job_plan,
    load_stream,
    make_engine,
    partitioned_loading,
    train_loop,
)


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with logits positions (last position has none)."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over masked positions of KL(teacher_T || student_T), times T^2."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_token = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    weights = mask.float()
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0) * (t * t)


def distill_loss_fn(teacher: Any, temperature: float, hard_weight: float) -> Any:
    """The loop's loss function: KD on logits plus optional hard-label CE."""

    def loss_fn(
        engine: TrainEngine, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            teacher_logits = teacher(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        out = engine.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        targets = shifted_targets(batch["labels"])
        mask = targets != IGNORE_INDEX
        kd = kd_kl(out.logits, teacher_logits, mask, temperature)
        ce = F.cross_entropy(
            out.logits.float().reshape(-1, out.logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        loss = (1.0 - hard_weight) * kd + hard_weight * ce if hard_weight else kd
        return loss, {"kd_loss": float(kd.detach()), "ce_loss": float(ce.detach())}

    return loss_fn


def load_teacher(
    source: ModelSource,
    config: dict[str, Any] | None,
    dtype: torch.dtype,
    seed: int,
    device: torch.device,
) -> Any:
    """The frozen teacher, callable like a model.

    Under ZeRO-3 the teacher is partitioned like the student (A.X K1 fits no single GPU):
    loaded inside ``zero.Init`` and wrapped in an optimizer-less DeepSpeed engine whose hooks
    gather each layer's weights just for its forward pass.
    """
    if config is None or config["zero_optimization"]["stage"] != 3:
        teacher = load_model(source, dtype=dtype, seed=seed).to(device).eval()
        teacher.requires_grad_(False)
        return teacher
    import deepspeed

    frozen_config = {k: v for k, v in config.items() if k != "optimizer"}
    with partitioned_loading(config):
        teacher = load_model(source, dtype=dtype, seed=seed)
    teacher.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=teacher, config=frozen_config)
    engine.eval()
    return engine


def run_distill(ctx: JobContext) -> JobResult:
    """Train the spec's student on the teacher's logits over the spec's dataset."""
    spec = ctx.spec
    if spec.teacher is None:
        raise SpecError("teacher: a distill job needs a teacher model")
    student_src = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    teacher_src = resolve_model(spec.teacher.name, spec.teacher.weights_dir, spec.teacher.overrides)
    student_vocab = model_stats(student_src.config).vocab_size
    teacher_vocab = model_stats(teacher_src.config).vocab_size
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"teacher vocab {teacher_vocab} != student vocab {student_vocab}: logits must align"
        )
    config = engine_config(ctx, job_plan(ctx, student_src, teacher_src))
    tokenizer = load_tokenizer(teacher_src.tokenizer, teacher_src.weights_dir)
    teacher = load_teacher(teacher_src, config, ctx.dtype, spec.seed, ctx.device)
    with partitioned_loading(config):
        student = load_model(student_src, dtype=ctx.dtype, seed=spec.seed + 1).to(ctx.device)
    stream = load_stream(ctx, tokenizer)
    engine = make_engine(ctx, student, config)
    flops = model_stats(student_src.config).training_flops_per_token(spec.seq_len)
    # The teacher's forward pass costs ~1/3 of its training FLOPs per token.
    flops += model_stats(teacher_src.config).training_flops_per_token(spec.seq_len) / 3.0
    loss_fn = distill_loss_fn(teacher, spec.distill.temperature, spec.distill.hard_label_weight)
    outcome = train_loop(ctx, engine, stream, loss_fn, flops)
    artifact = (
        export_model(ctx, engine, tokenizer, "student") if outcome.status == "succeeded" else None
    )
    return finish(ctx, outcome, student_src, artifact, teacher=teacher_src)
