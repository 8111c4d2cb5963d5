"""The training loop (finetune, pretrain, LoRA; distill plugs in its own loss).

One loop for every training kind: resume from the latest checkpoint, then per optimizer step
``grad_accum`` micro-batches of forward / backward / step, metrics (loss, tokens/s, step time,
MFU on GPU), a periodic checkpoint (only the newest ``keep_checkpoints`` kept), evaluation of
the held-out split (``eval_fraction``) every ``eval_every`` steps and at the end, and a
checkpoint-and-stop on a preemption notice that all ranks agree on. The model artifact is
written at the end with a provenance manifest.

The memory recipe (ZeRO stage, activation checkpointing, micro-batch, gradient accumulation)
comes from the spec, which carries the control plane's capacity plan; the worker's own planner
fills in only what the spec leaves open (:func:`deepspeed_config_for`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workers.checkpoint import (
    agree_to_stop,
    latest_tag,
    load_client_state,
    mark_latest,
    prune_checkpoints,
    restore_rng_state,
    rng_state,
    save_client_state,
    tag_for,
)
from workers.data import (
    IGNORE_INDEX,
    BatchStream,
    Examples,
    build_examples,
    count_tokens,
    read_records,
    split_examples,
)
from workers.engines import DeepSpeedTrainEngine, TorchEngine, TrainEngine
from workers.model_stats import lora_modules, model_stats
from workers.planner import Plan, PoolSpec, plan
from workers.presets import ModelSource, apply_adapter, load_model, resolve_model
from workers.provenance import (
    MANIFEST,
    describe_files,
    describe_input,
    model_identity,
    write_manifest,
)
from workers.runtime import JobContext, JobResult
from workers.spec import JobSpec, SpecError
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
    # A spec that carries the control plane's plan (activation_checkpointing set) runs as
    # planned; the worker's own estimate only refuses a spec that left the recipe to it.
    self_planned = spec.activation_checkpointing is None
    if self_planned and ctx.device.type == "cuda" and result.gpus > ctx.world_size:
        raise RuntimeError(f"the plan needs {result.gpus} GPUs; this job has {ctx.world_size}")
    return result


def activation_checkpointing_for(spec: JobSpec, fallback: Plan | None = None) -> bool:
    """The spec's choice (the control plane's plan), else the worker's own plan's."""
    if spec.activation_checkpointing is not None:
        return bool(spec.activation_checkpointing)
    return bool(fallback.activation_checkpointing) if fallback is not None else False


def deepspeed_config_for(
    spec: JobSpec, world_size: int, on_gpu: bool, fallback: Plan | None = None
) -> dict[str, Any] | None:
    """The DeepSpeed config ``spec`` runs under on ``world_size`` ranks (None: plain torch).

    ZeRO stage and activation checkpointing are the spec's when it has them (the control
    plane's capacity plan); ``fallback`` (the worker's own plan) fills in the rest. Micro-batch
    and gradient accumulation are the spec's; ``train_batch_size`` = micro x accum x ranks.
    """
    if spec.engine == "torch":
        return None
    from workers.deepspeed_config import deepspeed_config

    if spec.zero_stage is not None:
        stage = spec.zero_stage
    else:
        stage = int((fallback.zero_stage if fallback is not None else None) or 2)
    checkpointing = activation_checkpointing_for(spec, fallback)
    return deepspeed_config(spec, stage, world_size, on_gpu, checkpointing)


def engine_config(ctx: JobContext, job_plan: Plan) -> dict[str, Any] | None:
    """The DeepSpeed config for this job (see :func:`deepspeed_config_for`), or None for the
    plain torch loop."""
    return deepspeed_config_for(ctx.spec, ctx.world_size, ctx.device.type == "cuda", job_plan)


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass (transformers'
    gradient checkpointing, non-reentrant so frozen inputs and LoRA work)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def activation_checkpointing_on(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` recomputes its activations."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


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
    """DeepSpeed built from ``config``, or the plain torch loop when it is None.

    Checkpoints of a model with frozen parameters (LoRA) leave them out.
    """
    spec = ctx.spec
    exclude_frozen = spec.kind == "lora"
    details = {
        "activation_checkpointing": activation_checkpointing_on(model),
        "micro_batch": spec.micro_batch,
        "grad_accum": spec.grad_accum,
        "world_size": ctx.world_size,
    }
    if config is None:
        ctx.events.emit("engine", engine="torch", **details)
        return TorchEngine(
            model,
            spec.lr,
            spec.weight_decay,
            spec.warmup_steps,
            spec.steps,
            spec.grad_accum,
            exclude_frozen=exclude_frozen,
        )
    stage = config["zero_optimization"]["stage"]
    ctx.events.emit("engine", engine="deepspeed", zero_stage=stage, **details)
    return DeepSpeedTrainEngine(
        model, config, spec.warmup_steps, spec.steps, exclude_frozen=exclude_frozen
    )


@dataclass
class TrainingData:
    """The examples a job trains on (as a batch stream) and the held-out ones."""

    stream: BatchStream
    train: Examples
    held_out: Examples | None  # None without eval_fraction


def load_data(ctx: JobContext, tokenizer: Tokenizer) -> TrainingData:
    """The spec's dataset: a resumable, rank-sharded batch stream of the training examples
    and, with ``eval_fraction``, the seeded held-out examples it never yields."""
    spec = ctx.spec
    if spec.data is None:
        raise SpecError(f"data.path: a {spec.kind} job needs a dataset")
    records = read_records(spec.data.path, spec.data.format, spec.data.text_field)
    examples = build_examples(records, tokenizer, spec.seq_len, spec.system_prompt)
    held_out = None
    if spec.eval_fraction > 0:
        examples, held_out = split_examples(examples, spec.eval_fraction, spec.seed)
    stream = BatchStream(examples, spec.micro_batch, spec.seed, ctx.rank, ctx.world_size)
    return TrainingData(stream, examples, held_out)


# Sums over one batch (loss sums, token counts, ...), summed again over batches and ranks.
BatchSums = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def eval_batches(
    examples: Examples, micro_batch: int, rank: int, world_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's share of ``examples`` in micro-batches; every rank gets the same number
    of batches (ZeRO-3 forwards are collective), a rank with nothing left gets one example
    with no targets."""
    n = len(examples)
    global_size = micro_batch * world_size
    for start in range(0, n, global_size):
        idx = torch.arange(start, min(n, start + global_size))[rank::world_size]
        if len(idx) == 0:
            dummy = examples.select(torch.tensor([0]))
            yield {
                "input_ids": dummy.input_ids,
                "labels": torch.full_like(dummy.labels, IGNORE_INDEX),
                "attention_mask": dummy.attention_mask,
            }
            continue
        part = examples.select(idx)
        yield {
            "input_ids": part.input_ids,
            "labels": part.labels,
            "attention_mask": part.attention_mask,
        }


def _reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def eval_sums(
    ctx: JobContext, examples: Examples, sums: BatchSums, keys: tuple[str, ...]
) -> dict[str, float]:
    """``sums`` over every example of ``examples``, all ranks together (no gradients)."""
    totals = [0.0] * len(keys)
    for batch in eval_batches(examples, ctx.spec.micro_batch, ctx.rank, ctx.world_size):
        out = sums({k: v.to(ctx.device) for k, v in batch.items()})
        totals = [t + float(out[k]) for t, k in zip(totals, keys, strict=True)]
    return dict(zip(keys, _reduce_sum(totals, ctx.device), strict=True))


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropy over target positions, number of them)."""
    targets = labels[:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, (targets != IGNORE_INDEX).sum()


def perplexity(mean_loss: float) -> float:
    """exp of a mean token loss (capped where a float would overflow)."""
    return math.exp(min(mean_loss, 700.0))


def evaluate(ctx: JobContext, engine: TrainEngine, examples: Examples) -> dict[str, float]:
    """``eval_loss`` (mean token loss over ``examples``, all ranks) and ``eval_perplexity``."""

    def sums(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = engine.forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss, tokens = token_losses(out.logits, batch["labels"])
        return {"loss": loss, "tokens": tokens}

    module = engine.module
    was_training = module.training
    module.eval()
    try:
        total = eval_sums(ctx, examples, sums, ("loss", "tokens"))
    finally:
        module.train(was_training)
    mean = total["loss"] / max(total["tokens"], 1.0)
    return {"eval_loss": mean, "eval_perplexity": perplexity(mean)}


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
        prune_checkpoints(directory, ctx.spec.keep_checkpoints)
    return directory / tag


def train_loop(
    ctx: JobContext,
    engine: TrainEngine,
    stream: BatchStream,
    loss_fn: LossFn,
    flops_per_token: float,
    held_out: Examples | None = None,
) -> LoopOutcome:
    """Run optimizer steps until ``spec.steps`` or a preemption notice (see the module doc).

    With ``held_out`` examples, evaluates them every ``eval_every`` steps and after the last
    step (a ``metrics`` event with ``step``, ``eval_loss``, ``eval_perplexity``); the final
    evaluation is part of the outcome's metrics.
    """
    spec = ctx.spec

    def run_eval(step: int) -> dict[str, float]:
        assert held_out is not None
        result = evaluate(ctx, engine, held_out)
        if ctx.is_main:
            ctx.events.emit("metrics", step=step, **result)
        return result

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
        due = held_out is not None and spec.eval_every and step % spec.eval_every == 0
        if due and not stop and step < spec.steps:
            run_eval(step)
        if stop or (spec.checkpoint_every and step % spec.checkpoint_every == 0):
            checkpoint(ctx, engine, stream, step)
        if stop:
            return LoopOutcome("preempted", step, losses, metrics)
    if held_out is not None:
        metrics = {**metrics, "step": spec.steps, **run_eval(spec.steps)}
    return LoopOutcome("succeeded", spec.steps, losses, metrics)


def export_model(
    ctx: JobContext,
    engine: TrainEngine,
    tokenizer: Tokenizer,
    sub: str,
    base_name: str | None = None,
) -> Path:
    """Write the trained model (or the LoRA adapter alone) under ``output_dir/sub`` on rank 0.

    An adapter names its base (``base_model_name_or_path`` = ``base_name``, the model's
    preset name or registered id, never a path of this machine).
    """
    target = ctx.output_dir / sub
    state = engine.full_state_dict()  # collective under ZeRO-3
    if ctx.is_main:
        module: Any = engine.module  # a transformers / peft model
        peft_configs = getattr(module, "peft_config", None) or {}
        for config in peft_configs.values():
            config.base_model_name_or_path = base_name
        # Embeddings are never adapted; "auto" would look the base name up on a hub.
        extra = {"save_embedding_layers": False} if peft_configs else {}
        module.save_pretrained(str(target), state_dict=state, safe_serialization=True, **extra)
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
        if teacher is not None and spec.teacher is not None:
            teacher_id = model_identity(
                teacher.name, teacher.config, teacher.weights_dir, spec.seed
            )
            teacher_id.update(adapter_identity(spec.teacher.adapter_dir))
        base = model_identity(source.name, source.config, source.weights_dir, spec.seed)
        base.update(adapter_identity(spec.model.adapter_dir))
        path = write_manifest(
            ctx.output_dir,
            job_id=spec.job_id,
            kind=spec.kind,
            base_model=base,
            teacher=teacher_id,
            inputs=inputs,
            extra={"spec": spec.to_dict(), "final_metrics": outcome.last_metrics},
        )
        if artifact is not None:
            only_the_artifact(path, artifact.relative_to(ctx.output_dir))
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


def adapter_identity(adapter_dir: str | None) -> dict[str, Any]:
    """How a LoRA adapter input is identified in the manifest ({} without one)."""
    if adapter_dir is None:
        return {}
    path = Path(adapter_dir)
    files = describe_files(path)
    digest = json.dumps([(f["path"], f["sha256"]) for f in files])
    identity: dict[str, Any] = {
        "adapter_dir": str(path),
        "adapter_sha256": hashlib.sha256(digest.encode()).hexdigest(),
    }
    upstream = path.parent / MANIFEST
    if upstream.is_file():
        identity["adapter_produced_by"] = json.loads(upstream.read_text()).get("job_id")
    return {"adapter": identity}


def only_the_artifact(manifest: Path, artifact: Path) -> None:
    """Keep only the artifact's files in ``manifest`` and say which one it is: whatever else
    lies in the output directory (checkpoints, logs) is not part of what the job exports."""
    data = json.loads(manifest.read_text())
    prefix = f"{artifact.as_posix()}/"
    data["artifact"] = artifact.as_posix()
    data["artifacts"] = [
        a
        for a in data.get("artifacts", [])
        if a["path"] == artifact.as_posix() or str(a["path"]).startswith(prefix)
    ]
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def apply_lora(
    model: Any,
    rank: int,
    alpha: int,
    dropout: float,
    targets: list[str] | None = None,
    base_name: str | None = None,
) -> Any:
    """Wrap ``model`` with peft LoRA on the chosen (default: every) attention, MLP and
    routed-expert projection the model has."""
    from peft import LoraConfig, get_peft_model

    linear, expert = lora_modules(targets)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    modules = [t for t in linear if t in present]
    has_experts = any(".mlp.experts." in name for name, _ in model.named_parameters())
    parameters = expert if has_experts and expert else None
    if not modules and not parameters:
        raise SpecError(f"lora.targets: the model has none of {', '.join(targets or [])}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=modules,
        target_parameters=parameters,
    )
    peft_model = get_peft_model(model, config)
    # get_peft_model takes the loaded model's own name (a local path, or nothing).
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def prepare_model(ctx: JobContext, model: Any, source: ModelSource, checkpointing: bool) -> Any:
    """Activation checkpointing, then the adapter: a lora job trains a new one (or goes on
    with ``model.adapter_dir``'s); the other kinds start from base + that adapter, merged."""
    spec = ctx.spec
    if checkpointing:
        enable_activation_checkpointing(model)
    adapter = spec.model.adapter_dir
    if spec.kind == "lora":
        if adapter is not None:
            return apply_adapter(model, adapter, trainable=True)
        lora = spec.lora
        return apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets, source.name)
    if adapter is not None:
        return apply_adapter(model, adapter, merge=True)
    return model


def run_training(ctx: JobContext) -> JobResult:
    """finetune / pretrain (all weights) or lora (adapters only) on the spec's dataset."""
    spec = ctx.spec
    source = resolve_model(spec.model.name, spec.model.weights_dir, spec.model.overrides)
    worker_plan = job_plan(ctx, source)
    config = engine_config(ctx, worker_plan)
    tokenizer = load_tokenizer(source.tokenizer, source.weights_dir)
    with partitioned_loading(config):
        model = load_model(source, dtype=ctx.dtype, seed=spec.seed).to(ctx.device)
    model = prepare_model(ctx, model, source, activation_checkpointing_for(spec, worker_plan))
    data = load_data(ctx, tokenizer)
    engine = make_engine(ctx, model, config)
    stats = model_stats(source.config)
    if spec.kind == "lora":
        flops = stats.frozen_training_flops_per_token(spec.seq_len)
    else:
        flops = stats.training_flops_per_token(spec.seq_len)
    outcome = train_loop(ctx, engine, data.stream, lm_loss, flops, data.held_out)
    artifact = None
    if outcome.status == "succeeded":
        sub = "adapter" if spec.kind == "lora" else "model"
        artifact = export_model(ctx, engine, tokenizer, sub, base_name=source.name)
    return finish(ctx, outcome, source, artifact)
