"""Distillation: a frozen teacher (A.X K1 or a derivative) trains a smaller student.

Loss per target token: ``(1 - w) * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + w * CE``
where ``T`` is the temperature and ``w`` the hard-label weight (the ``T^2`` keeps gradient
scale independent of ``T``, Hinton et al. 2015). Teacher and student must share a vocabulary,
so their logits index the same tokens; the planner and this module both refuse a mismatch.

The teacher runs in eval mode under ``torch.no_grad`` on every rank; only the student is
trained. Under ZeRO-3 (what the planner picks for A.X K1 teachers) both are partitioned over
the ranks, the teacher in an optimizer-less DeepSpeed engine.

After training, student and teacher are compared on the held-out split (the training
examples, at most :data:`FALLBACK_EVAL_EXAMPLES`, when the job holds none out):
``student_eval_loss`` and ``teacher_eval_loss`` (mean next-token cross-entropy) and
``top1_agreement`` (share of target positions where both predict the same token), reported
as a ``metrics`` event and kept in the manifest's final metrics.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers.data import IGNORE_INDEX, Examples
from workers.engines import TrainEngine
from workers.model_stats import model_stats
from workers.presets import ModelSource, apply_adapter, load_model, resolve_model
from workers.runtime import JobContext, JobResult
from workers.spec import SpecError
from workers.tokenizer import load_tokenizer
from workers.training import (
    activation_checkpointing_for,
    engine_config,
    eval_sums,
    export_model,
    finish,
    job_plan,
    load_data,
    make_engine,
    partitioned_loading,
    prepare_model,
    token_losses,
    train_loop,
)

# Without a held-out split the comparison runs on (at most) this many training examples.
FALLBACK_EVAL_EXAMPLES = 256


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
    adapter_dir: str | None = None,
) -> Any:
    """The frozen teacher, callable like a model (with ``adapter_dir`` merged in).

    Under ZeRO-3 the teacher is partitioned like the student (A.X K1 fits no single GPU):
    loaded inside ``zero.Init`` and wrapped in an optimizer-less DeepSpeed engine whose hooks
    gather each layer's weights just for its forward pass.
    """
    if config is None or config["zero_optimization"]["stage"] != 3:
        teacher = load_model(source, dtype=dtype, seed=seed).to(device)
        if adapter_dir is not None:
            teacher = apply_adapter(teacher, adapter_dir, merge=True)
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher
    import deepspeed

    frozen_config = {k: v for k, v in config.items() if k != "optimizer"}
    with partitioned_loading(config):
        teacher = load_model(source, dtype=dtype, seed=seed)
    if adapter_dir is not None:
        teacher = apply_adapter(teacher, adapter_dir, merge=True)  # refuses partitioned weights
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
    worker_plan = job_plan(ctx, student_src, teacher_src)
    config = engine_config(ctx, worker_plan)
    tokenizer = load_tokenizer(teacher_src.tokenizer, teacher_src.weights_dir)
    teacher = load_teacher(
        teacher_src, config, ctx.dtype, spec.seed, ctx.device, spec.teacher.adapter_dir
    )
    with partitioned_loading(config):
        student = load_model(student_src, dtype=ctx.dtype, seed=spec.seed + 1).to(ctx.device)
    student = prepare_model(
        ctx, student, student_src, activation_checkpointing_for(spec, worker_plan)
    )
    data = load_data(ctx, tokenizer)
    engine = make_engine(ctx, student, config)
    flops = model_stats(student_src.config).training_flops_per_token(spec.seq_len)
    # The teacher's forward pass costs ~1/3 of its training FLOPs per token.
    flops += model_stats(teacher_src.config).training_flops_per_token(spec.seq_len) / 3.0
    loss_fn = distill_loss_fn(teacher, spec.distill.temperature, spec.distill.hard_label_weight)
    outcome = train_loop(ctx, engine, data.stream, loss_fn, flops, data.held_out)
    artifact = None
    if outcome.status == "succeeded":
        examples = data.held_out
        if examples is None:
            n = min(len(data.train), FALLBACK_EVAL_EXAMPLES)
            examples = data.train.select(torch.arange(n))
        comparison = compare_to_teacher(ctx, engine, teacher, examples)
        if ctx.is_main:
            ctx.events.emit("metrics", step=outcome.step, **comparison)
        outcome.last_metrics = {**outcome.last_metrics, **comparison}
        artifact = export_model(ctx, engine, tokenizer, "student")
    return finish(ctx, outcome, student_src, artifact, teacher=teacher_src)


def compare_to_teacher(
    ctx: JobContext, engine: TrainEngine, teacher: Any, examples: Examples
) -> dict[str, float]:
    """Student vs teacher on ``examples`` (all ranks, no gradients): ``student_eval_loss``,
    ``teacher_eval_loss`` and ``top1_agreement`` over the target positions."""

    def sums(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student_logits = engine.forward(**inputs).logits
        teacher_logits = teacher(**inputs).logits
        student_loss, tokens = token_losses(student_logits, batch["labels"])
        teacher_loss, _ = token_losses(teacher_logits, batch["labels"])
        mask = shifted_targets(batch["labels"]) != IGNORE_INDEX
        same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
        return {
            "student": student_loss,
            "teacher": teacher_loss,
            "agree": (same & mask).sum(),
            "tokens": tokens,
        }

    module = engine.module
    was_training = module.training
    module.eval()
    try:
        total = eval_sums(ctx, examples, sums, ("student", "teacher", "agree", "tokens"))
    finally:
        module.train(was_training)
    tokens = max(total["tokens"], 1.0)
    return {
        "student_eval_loss": total["student"] / tokens,
        "teacher_eval_loss": total["teacher"] / tokens,
        "top1_agreement": total["agree"] / tokens,
    }
