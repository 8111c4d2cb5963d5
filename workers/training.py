"""The training loop (finetune, pretrain, LoRA; distill plugs in its own loss).

One loop for every training kind: resume from the latest checkpoint, then per optimizer step
``grad_accum`` micro-batches of forward / backward / step, metrics (loss, tokens/s, step time,
MFU on GPU), a periodic checkpoint, and a checkpoint-and-stop on a preemption notice that all
ranks agree on. The model artifact is written at the end with a provenance manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.checkpoint import (
    agree_to_stop,
    latest_tag,
    load_client_state,
    mark_latest,
    restore_rng_state,
    rng_state,
    save_client_state,
    tag_for,
)
from workers.data import BatchStream, build_examples, count_tokens, read_records
from workers.engines import DeepSpeedTrainEngine, TorchEngine, TrainEngine
from workers.model_stats import LORA_EXPERT_PARAMETERS, LORA_LINEAR_TARGETS, model_stats
from workers.planner import Plan, PoolSpec, plan
from workers.presets import ModelSource, load_model, resolve_model
from workers.provenance import describe_input, model_identity, write_manifest
from workers.runtime import JobContext, JobResult
from workers.spec import SpecError
from workers.tokenizer import Tokenizer, load_tokenizer

# Dense bf16 peak FLOP/s per GPU, for model FLOPs utilisation.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}

# (loss, extra metrics) for one micro-batch.
LossFn = Callable[[TrainEngine, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of the GPU, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def lm_loss(
    engine: TrainEngine, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy (transformers shifts the labels)."""
    out = engine.forward(**batch)
    return out.loss, {}


def job_plan(ctx: JobContext, source: ModelSource, teacher: ModelSource | None = None) -> Plan:
    """The capacity plan this job runs under (reported as a ``plan`` event)."""
    spec = ctx.spec
    pool = PoolSpec(spec.gpu_memory_gib, spec.gpus_per_node)
    result = plan(
        source,
        spec.kind,
        spec.precision,
        min(spec.seq_len, source.context_limit),
        spec.micro_batch,
        pool,
        teacher=teacher,
        lora_rank=spec.lora.rank,
    )
    ctx.events.emit("plan", plan=result.to_dict())
    if ctx.device.type == "cuda" and result.gpus > ctx.world_size:
        raise RuntimeError(f"the plan needs {result.gpus} GPUs; this job has {ctx.world_size}")
    return result


def engine_config(ctx: JobContext, job_plan: Plan) -> dict[str, Any] | None:
    """The DeepSpeed config for this job (ZeRO stage from the spec or the plan), or None
    for the plain torch loop."""
    spec = ctx.spec
    if spec.engine == "torch":
        return None
    from workers.deepspeed_config import deepspeed_config

    stage = spec.zero_stage if spec.zero_stage is not None else int(job_plan.zero_stage or 2)
    return deepspeed_config(
        spec, stage, ctx.world_size, ctx.device.type == "cuda", job_plan.activation_checkpointing
    )


@contextmanager
def partitioned_loading(config: dict[str, Any] | None) -> Iterator[None]:
    """Under ZeRO-3, let transformers build the model inside ``deepspeed.zero.Init`` so each
    rank only ever materialises its shard (A.X K1 does not fit in one host's memory)."""
    if config is None or config["zero_optimization"]["stage"] != 3:
        yield
        return
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations import deepspeed as hf_deepspeed

    # zero.Init sizes partitions from DeepSpeed's own view of the process group, which only
    # exists once DeepSpeed has attached to the torch.distributed group.
    deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else None)

    integration: Any = hf_deepspeed  # untyped
    marker = integration.HfDeepSpeedConfig(config)  # read by transformers via a weak reference
    try:
        if not integration.is_deepspeed_zero3_enabled():
            raise RuntimeError("transformers did not pick up the ZeRO-3 configuration")
        yield
    finally:
        del marker
        integration.unset_hf_deepspeed_config()


def make_engine(
    ctx: JobContext, model: torch.nn.Module, config: dict[str, Any] | None
) -> TrainEngine:
    """DeepSpeed built from ``config``, or the plain torch loop when it is None."""
    spec = ctx.spec
    if config is None:
        return TorchEngine(
            model, spec.lr, spec.weight_decay, spec.warmup_steps, spec.steps, spec.grad_accum
        )
    stage = config["zero_optimization"]["stage"]
    ctx.events.emit("engine", engine="deepspeed", zero_stage=stage)
    return DeepSpeedTrainEngine(model, config, spec.warmup_steps, spec.steps)


def load_stream(ctx: JobContext, tokenizer: Tokenizer) -> BatchStream:
    """The spec's dataset as a resumable, rank-sharded batch stream."""
    spec = ctx.spec
    if spec.data is None:
        raise SpecError(f"data.path: a {spec.kind} job needs a dataset")
    records = read_records(spec.data.path, spec.data.format, spec.data.text_field)
    examples = build_examples(records, tokenizer, spec.seq_len)
    return BatchStream(examples, spec.micro_batch, spec.seed, ctx.rank, ctx.world_size)


@dataclass
class LoopOutcome:
    """How the loop ended."""

    status: str  # succeeded | preempted
    step: int
    losses: list[float]
    last_metrics: dict[str, Any]


def _reduce_mean(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def checkpoint(ctx: JobContext, engine: TrainEngine, stream: BatchStream, step: int) -> Path:
    """Save engine + data position + RNGs for ``step`` on every rank; report it on rank 0."""
    import torch.distributed as dist

    directory = ctx.spec.checkpoint_path
    tag = tag_for(step)
    engine.save(directory, tag)
    state = {"step": step, "data": stream.state_dict(), "rng": rng_state()}
    save_client_state(directory / tag, state, ctx.rank)
    if dist.is_initialized():
        dist.barrier()  # every rank's files exist before `latest` moves
    if ctx.is_main:
        mark_latest(directory, tag)
        ctx.events.emit("checkpoint", step=step, path=str(directory / tag), tag=tag)
    return directory / tag


def train_loop(
    ctx: JobContext,
    engine: TrainEngine,
    stream: BatchStream,
    loss_fn: LossFn,
    flops_per_token: float,
) -> LoopOutcome:
    """Run optimizer steps until ``spec.steps`` or a preemption notice (see the module doc)."""
    spec = ctx.spec
    start = 0
    tag = latest_tag(spec.checkpoint_path) if spec.resume else None
    if tag is not None:
        engine.load(spec.checkpoint_path, tag)
        state = load_client_state(spec.checkpoint_path / tag, ctx.rank)
        stream.load_state_dict(state["data"])
        restore_rng_state(state["rng"])
        start = int(state["step"])
        ctx.events.emit("status", status="resumed", step=start, checkpoint=tag)
    peak = peak_flops(ctx.device)
    losses: list[float] = []
    metrics: dict[str, Any] = {}
    engine.module.train()
    for step in range(start + 1, spec.steps + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        step_loss, tokens = 0.0, 0
        extras: dict[str, float] = {}
        for _ in range(spec.grad_accum):
            batch = {k: v.to(ctx.device) for k, v in stream.next_batch().items()}
            loss, extras = loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            step_loss += float(loss.detach().item()) / spec.grad_accum
            tokens += count_tokens(batch)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - cpu0  # all threads of this rank; robust to other load
        keys = sorted(extras)
        reduced = _reduce_mean([step_loss, *[extras[k] for k in keys]], ctx.device)
        step_loss = reduced[0]
        losses.append(step_loss)
        tokens_per_s = tokens * ctx.world_size / dt
        metrics = {
            "step": step,
            "loss": step_loss,
            "lr": engine.lr(),
            "tokens_per_s": tokens_per_s,
            "step_time_s": dt,
            "cpu_time_s": cpu,
            **dict(zip(keys, reduced[1:], strict=True)),
        }
        if peak:
            metrics["mfu"] = tokens_per_s * flops_per_token / (peak * ctx.world_size)
        if ctx.is_main and (step % spec.log_every == 0 or step == spec.steps):
            ctx.events.emit("metrics", **metrics)
        stop = agree_to_stop(ctx.notice.requested()) and step < spec.steps
        if stop or (spec.checkpoint_every and step % spec.checkpoint_every == 0):
            checkpoint(ctx, engine, stream, step)
        if stop:
            return LoopOutcome("preempted", step, losses, metrics)
    return LoopOutcome("succeeded", spec.steps, losses, metrics)


def export_model(ctx: JobContext, engine: TrainEngine, tokenizer: Tokenizer, sub: str) -> Path:
    """Write the trained model (or LoRA adapters) under ``output_dir/sub`` on rank 0."""
    target = ctx.output_dir / sub
    state = engine.full_state_dict()  # collective under ZeRO-3
    if ctx.is_main:
        module: Any = engine.module  # a transformers / peft model
        module.save_pretrained(str(target), state_dict=state, safe_serialization=True)
        tokenizer.save(target)
    return target


def finish(
    ctx: JobContext,
    outcome: LoopOutcome,
    source: ModelSource,
    artifact: Path | None,
    teacher: ModelSource | None = None,
) -> JobResult:
    """Write the provenance manifest for a finished job and build its result."""
    spec = ctx.spec
    manifest = None
    if outcome.status == "succeeded" and ctx.is_main:
        inputs = [describe_input(spec.data.path, spec.data.id)] if spec.data else []
        teacher_id = None
        if teacher is not None:
            teacher_id = model_identity(
                teacher.name, teacher.config, teacher.weights_dir, spec.seed
            )
        path = write_manifest(
            ctx.output_dir,
            job_id=spec.job_id,
            kind=spec.kind,
            base_model=model_identity(source.name, source.config, source.weights_dir, spec.seed),
            teacher=teacher_id,
            inputs=inputs,
            extra={"spec": spec.to_dict(), "final_metrics": outcome.last_metrics},
        )
        manifest = str(path)
        if artifact is not None:
            ctx.events.emit("artifact", path=str(artifact), manifest=manifest, kind=spec.kind)
    return JobResult(
        outcome.status,
        step=outcome.step,
        losses=outcome.losses,
        metrics=outcome.last_metrics,
        artifacts=[str(artifact)] if artifact and outcome.status == "succeeded" else [],
        manifest=manifest,
    )


def apply_lora(model: Any, rank: int, alpha: int, dropout: float) -> Any:
    """Wrap ``model`` with peft LoRA on attention, MLP and routed-expert projections."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in LORA_LINEAR_TARGETS if t in present]
    has_experts = any(".mlp.experts." in name for name, _ in model.named_parameters())
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        target_parameters=list(LORA_EXPERT_PARAMETERS) if has_experts else None,
    )
    return get_peft_model(model, config)


def run_training(ctx: JobContext) -> JobResult:
    """finetune / pretrain (all weights) or lora (adapters only) on the spec's dataset."""
    spec = ctx.spec
    source = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    config = engine_config(ctx, job_plan(ctx, source))
    tokenizer = load_tokenizer(source.tokenizer, source.weights_dir)
    with partitioned_loading(config):
        model = load_model(source, dtype=ctx.dtype, seed=spec.seed).to(ctx.device)
    if spec.kind == "lora":
        model = apply_lora(model, spec.lora.rank, spec.lora.alpha, spec.lora.dropout)
    stream = load_stream(ctx, tokenizer)
    engine = make_engine(ctx, model, config)
    stats = model_stats(source.config)
    if spec.kind == "lora":
        flops = stats.frozen_training_flops_per_token(spec.seq_len)
    else:
        flops = stats.training_flops_per_token(spec.seq_len)
    outcome = train_loop(ctx, engine, stream, lm_loss, flops)
    artifact = None
    if outcome.status == "succeeded":
        artifact = export_model(
            ctx, engine, tokenizer, "adapter" if spec.kind == "lora" else "model"
        )
    return finish(ctx, outcome, source, artifact)
