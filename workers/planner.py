"""Capacity planner: how many GPUs a job needs, with which parallelism, and why.

``plan(model, kind, precision, seq_len, micro_batch, pool)`` takes a model (preset name, model
directory, :class:`~workers.presets.ModelSource` or transformers config), counts its parameters
on the meta device and returns the smallest GPU count that fits, with the ZeRO stage, the
parallel degrees and a per-GPU memory breakdown. It reads no clock, no environment and no
cluster state, so the control plane calls it in request handlers (``POST /v1/plan``, submit
validation) and the CLI (``nuri plan``) alike.

Memory model per GPU (bytes; ``N`` GPUs, ``T`` trainable parameters, ``ep`` expert-parallel
degree = gcd(routed experts, N)):

* training (finetune, pretrain, distill's student, LoRA): weights in the job precision;
  bf16 gradients (2 B/T) and fp32 master + Adam moments (12 B/T) sharded over N (ZeRO-2/3);
  weights sharded over N under ZeRO-3 (plus two gathered layers in flight), else only routed
  experts split by ``ep``; activations: per-layer working set, times layers without
  activation checkpointing or plus one saved hidden state per layer with it; logits in bf16
  plus their fp32 upcast and gradient (they dominate for a 163,840-entry vocabulary).
* distill adds the frozen teacher sharded over N, its layer working set and its logits.
* inference: weights / N (tensor parallel inside a node, pipeline across nodes, experts
  spread over all GPUs), the bf16 KV cache for ``micro_batch`` sequences of ``seq_len`` (MLA's
  latent cache is replicated over tensor-parallel ranks), a prefill chunk of activations.
* every GPU keeps ``RUNTIME_RESERVE_GIB`` for the CUDA context, NCCL and ZeRO buckets, and the
  total must stay under ``(1 - HEADROOM_FRACTION)`` of the GPU's memory (allocator slack).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.model_stats import PRECISION_BYTES, ModelStats, model_stats
from workers.presets import ModelSource, PresetError, resolve_model

JOB_KINDS = ("finetune", "lora", "distill", "inference", "pretrain")
TRAINING_KINDS = frozenset({"finetune", "lora", "distill", "pretrain"})
PRECISIONS = ("bf16", "fp8")

HEADROOM_FRACTION = 0.10
RUNTIME_RESERVE_GIB = 4.0
DEFAULT_TRAINING_SEQ_LEN = 4096
DEFAULT_LORA_RANK = 16
PREFILL_CHUNK_TOKENS = 8192  # serving engines prefill long prompts in chunks of this size
MAX_NODES = 512
GIB = float(1 << 30)

# Adam in mixed precision: bf16 gradient + fp32 master weight + two fp32 moments.
GRAD_BYTES = 2.0
OPTIMIZER_BYTES = 12.0


class PlanError(ValueError):
    """A plan request that is invalid or cannot fit; ``code`` is stable for API errors."""

    def __init__(self, message: str, code: str = "invalid_plan_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PoolSpec:
    """The part of a pool the planner needs: GPU memory and node shape."""

    gpu_memory_gib: float = 141.0
    gpus_per_node: int = 8
    name: str = "custom"
    gpu_model: str = "unknown"
    max_nodes: int = MAX_NODES

    def __post_init__(self) -> None:
        if not (self.gpu_memory_gib > 0 and math.isfinite(self.gpu_memory_gib)):
            raise PlanError(f"gpu_memory_gib must be positive, got {self.gpu_memory_gib}")
        if self.gpus_per_node < 1:
            raise PlanError(f"gpus_per_node must be at least 1, got {self.gpus_per_node}")
        if self.max_nodes < 1:
            raise PlanError(f"max_nodes must be at least 1, got {self.max_nodes}")


# Reference pools for documentation and defaults (memory as NVIDIA rates it).
POOLS = {
    "h200": PoolSpec(141.0, 8, "h200", "H200"),
    "h100": PoolSpec(80.0, 8, "h100", "H100"),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Per-GPU memory of a plan, GiB."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    kv_cache: float = 0.0
    teacher: float = 0.0
    zero3_gather: float = 0.0
    runtime_reserve: float = RUNTIME_RESERVE_GIB

    @property
    def total(self) -> float:
        """Sum of every term."""
        return float(sum(asdict(self).values()))

    def to_dict(self) -> dict[str, float]:
        """Rounded terms plus the total."""
        out = {k: round(v, 2) for k, v in asdict(self).items()}
        out["total"] = round(self.total, 2)
        return out


@dataclass(frozen=True)
class Plan:
    """The smallest placement that fits a job, and the memory it leaves."""

    model: str
    kind: str
    precision: str
    seq_len: int
    micro_batch: int
    pool: PoolSpec
    total_params: int
    active_params: int
    trainable_params: int
    gpus: int
    nodes: int
    zero_stage: int | None
    tensor_parallel: int
    pipeline_parallel: int
    expert_parallel: int
    data_parallel: int
    activation_checkpointing: bool
    memory_per_gpu: MemoryBreakdown
    usable_memory_per_gpu_gib: float
    teacher: str | None = None
    lora_rank: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fits_one_node(self) -> bool:
        """Whether the job fits inside one node of the pool."""
        return self.nodes == 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs the plan uses on each of its nodes."""
        return self.gpus // self.nodes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the body of ``POST /v1/plan`` and of 4xx ``details``)."""
        return {
            "model": self.model,
            "kind": self.kind,
            "precision": self.precision,
            "seq_len": self.seq_len,
            "micro_batch": self.micro_batch,
            "pool": asdict(self.pool),
            "total_params": self.total_params,
            "active_params": self.active_params,
            "trainable_params": self.trainable_params,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "fits_one_node": self.fits_one_node,
            "zero_stage": self.zero_stage,
            "tensor_parallel": self.tensor_parallel,
            "pipeline_parallel": self.pipeline_parallel,
            "expert_parallel": self.expert_parallel,
            "data_parallel": self.data_parallel,
            "activation_checkpointing": self.activation_checkpointing,
            "memory_per_gpu_gib": self.memory_per_gpu.to_dict(),
            "usable_memory_per_gpu_gib": round(self.usable_memory_per_gpu_gib, 2),
            "teacher": self.teacher,
            "lora_rank": self.lora_rank,
            "notes": list(self.notes),
        }


def shortfall(plan: Plan, gpus: int, nodes: int | None = None) -> str | None:
    """Why a request for ``gpus`` GPUs (on ``nodes`` nodes) is too small for ``plan``.

    None when the request fits. The memory per GPU of every plan depends on the GPU count
    only, so ``nodes`` is checked just for an even split of GPUs over nodes.
    """
    if gpus < plan.gpus:
        return (
            f"{plan.kind} of {plan.model} in {plan.precision} needs at least {plan.gpus} GPUs "
            f"({plan.nodes} node(s) of {plan.pool.gpus_per_node} x "
            f"{plan.pool.gpu_memory_gib:g} GiB); asked for {gpus}"
        )
    if nodes is not None and (nodes < 1 or gpus % nodes):
        return f"{gpus} GPUs do not split evenly over {nodes} nodes"
    return None


def fits(plan: Plan, gpus: int, nodes: int | None = None) -> bool:
    """Whether a request for ``gpus`` GPUs (optionally on ``nodes`` nodes) meets ``plan``."""
    return shortfall(plan, gpus, nodes) is None


# Fields of a plan request body (POST /v1/plan) and their types.
REQUEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "kind": str,
    "precision": str,
    "seq_len": int,
    "micro_batch": int,
    "gpu_memory_gib": (int, float),
    "gpus_per_node": int,
    "teacher": str,
    "lora_rank": int,
}


def plan_from_request(body: dict[str, Any], default_pool: PoolSpec | None = None) -> Plan:
    """:func:`plan` for a JSON request body: ``{"model", "kind", "precision"?, "seq_len"?,
    "micro_batch"?, "gpu_memory_gib"?, "gpus_per_node"?, "teacher"?, "lora_rank"?}``.

    Unknown fields, wrong types and missing ``model``/``kind`` raise :class:`PlanError`; pool
    fields left out come from ``default_pool`` (an H200 node by default).
    """
    if not isinstance(body, dict):
        raise PlanError("a plan request is a JSON object")
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise PlanError(f"unknown field(s): {', '.join(unknown)}")
    for name, kind in REQUEST_FIELDS.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise PlanError(f"{name}: expected {getattr(kind, '__name__', 'a number')}")
    for name in ("model", "kind"):
        if not body.get(name):
            raise PlanError(f"{name}: required")
    pool = default_pool or POOLS["h200"]
    pool = PoolSpec(
        float(body.get("gpu_memory_gib") or pool.gpu_memory_gib),
        int(body.get("gpus_per_node") or pool.gpus_per_node),
        pool.name if "gpu_memory_gib" not in body else "custom",
        pool.gpu_model if "gpu_memory_gib" not in body else "unknown",
        pool.max_nodes,
    )
    return plan(
        body["model"],
        body["kind"],
        body.get("precision") or "bf16",
        body.get("seq_len"),
        body.get("micro_batch") or 1,
        pool,
        teacher=body.get("teacher"),
        lora_rank=body.get("lora_rank") or DEFAULT_LORA_RANK,
    )


def _source(model: str | ModelSource | Any) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, str):
        try:
            return resolve_model(model)
        except PresetError as exc:
            raise PlanError(str(exc), code="unknown_model") from exc
    if hasattr(model, "to_dict") and hasattr(model, "num_hidden_layers"):
        return ModelSource(str(getattr(model, "model_type", "config")), model, "model-dir")
    raise PlanError(f"cannot plan for {model!r}: give a preset name, directory or config")


def _candidate_gpu_counts(pool: PoolSpec) -> list[int]:
    # Inside a node any power of two; beyond one node whole nodes only (gang placement).
    inside = [n for n in (1, 2, 4, 8, 16, 32) if n < pool.gpus_per_node] + [pool.gpus_per_node]
    return inside + [k * pool.gpus_per_node for k in range(2, pool.max_nodes + 1)]


def _layer_working_bytes(stats: ModelStats, tokens: int) -> float:
    """Activations one decoder layer holds while it runs (bf16, flash attention)."""
    h = stats.hidden_size
    return tokens * 2.0 * (8 * h + 2 * stats.experts_per_token * h + 3 * stats.ffn_width_per_token)


def _weight_bytes_split(stats: ModelStats, precision: str) -> tuple[float, float]:
    """(non-expert, routed-expert) weight bytes in ``precision``."""
    total = stats.weight_bytes(precision)
    expert = stats.routed_expert_params * PRECISION_BYTES[precision]
    return total - expert, expert


def _training_memory(
    stats: ModelStats,
    kind: str,
    precision: str,
    tokens: int,
    gpus: int,
    stage: int,
    checkpointing: bool,
    trainable: int,
    teacher: ModelStats | None,
    teacher_precision: str,
) -> MemoryBreakdown:
    ep = math.gcd(stats.n_routed_experts, gpus) if stats.n_routed_experts else 1
    bpp = PRECISION_BYTES[precision]
    dense_w, expert_w = _weight_bytes_split(stats, precision)
    gather = 0.0
    if stage == 3:
        weights = (dense_w + expert_w) / gpus
        # The layer being computed and the prefetched next one are gathered in full.
        gather = 2.0 * bpp * (stats.largest_layer_params + stats.largest_layer_expert_params / ep)
    else:
        weights = dense_w + expert_w / ep
    grads = GRAD_BYTES * trainable / gpus
    optim = OPTIMIZER_BYTES * trainable / gpus
    layer = _layer_working_bytes(stats, tokens)
    if checkpointing:
        acts = layer + stats.num_layers * tokens * stats.hidden_size * 2.0
    else:
        acts = layer * stats.num_layers
    logits = tokens * stats.vocab_size * (2.0 + 4.0 + 4.0)
    teacher_bytes = 0.0
    if teacher is not None:
        t_ep = math.gcd(teacher.n_routed_experts, gpus) if teacher.n_routed_experts else 1
        t_bpp = PRECISION_BYTES[teacher_precision]
        t_gather = (
            2.0
            * t_bpp
            * (teacher.largest_layer_params + teacher.largest_layer_expert_params / t_ep)
        )
        teacher_bytes = (
            teacher.weight_bytes(teacher_precision) / gpus
            + t_gather
            + _layer_working_bytes(teacher, tokens)
        )
        # Teacher logits (bf16 + fp32 softmax) and the student's fp32 log-softmax for KD.
        logits += tokens * teacher.vocab_size * (2.0 + 4.0 + 4.0)
    return MemoryBreakdown(
        weights=weights / GIB,
        gradients=grads / GIB,
        optimizer=optim / GIB,
        activations=acts / GIB,
        logits=logits / GIB,
        teacher=teacher_bytes / GIB,
        zero3_gather=gather / GIB,
    )


def _inference_memory(
    stats: ModelStats, precision: str, seq_len: int, batch: int, gpus: int, tp: int, pp: int
) -> MemoryBreakdown:
    weights = stats.weight_bytes(precision) / gpus
    kv_shards = pp * min(tp, stats.kv_heads)
    kv = stats.kv_cache_bytes_per_token * seq_len * batch / kv_shards
    chunk = min(seq_len * batch, PREFILL_CHUNK_TOKENS)
    acts = _layer_working_bytes(stats, chunk) / tp
    # Logits of the last position of every sequence, fp32, vocabulary split over tp.
    logits = batch * stats.vocab_size * 4.0 / tp
    return MemoryBreakdown(
        weights=weights / GIB, activations=acts / GIB, logits=logits / GIB, kv_cache=kv / GIB
    )


def plan(
    model: str | ModelSource | Any,
    kind: str,
    precision: str = "bf16",
    seq_len: int | None = None,
    micro_batch: int = 1,
    pool: PoolSpec | None = None,
    *,
    teacher: str | ModelSource | Any | None = None,
    lora_rank: int = DEFAULT_LORA_RANK,
) -> Plan:
    """The smallest placement of ``kind`` on ``model`` in ``pool`` (see the module docstring).

    ``precision`` is the weight precision (``bf16`` or ``fp8``; for distill it is the
    teacher's). ``seq_len`` defaults to 4096 for training and to the model's native context for
    inference; ``micro_batch`` is sequences per GPU step (training) or concurrent sequences
    (inference). ``teacher`` (distill only) defaults to ``axk1``. Raises :class:`PlanError` on
    invalid input (``code="invalid_plan_request"`` / ``"unknown_model"``) or when nothing up to
    ``pool.max_nodes`` fits (``code="does_not_fit"``).
    """
    pool = pool or POOLS["h200"]
    if kind not in JOB_KINDS:
        raise PlanError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
    if precision not in PRECISIONS:
        raise PlanError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if micro_batch < 1:
        raise PlanError(f"micro_batch must be at least 1, got {micro_batch}")
    if lora_rank < 1:
        raise PlanError(f"lora_rank must be at least 1, got {lora_rank}")
    if teacher is not None and kind != "distill":
        raise PlanError("a teacher only applies to distill jobs")
    source = _source(model)
    stats = model_stats(source.config)
    native = int(source.config.max_position_embeddings)
    if seq_len is None:
        seq_len = native if kind == "inference" else min(DEFAULT_TRAINING_SEQ_LEN, native)
    if seq_len < 1 or seq_len > source.context_limit:
        raise PlanError(
            f"seq_len must be in 1..{source.context_limit} for {source.name}, got {seq_len}"
        )

    teacher_stats: ModelStats | None = None
    teacher_name: str | None = None
    notes: list[str] = []
    if kind == "distill":
        t_source = _source(teacher if teacher is not None else "axk1")
        teacher_stats, teacher_name = model_stats(t_source.config), t_source.name
        if teacher_stats.vocab_size != stats.vocab_size:
            raise PlanError(
                f"teacher {t_source.name} (vocab {teacher_stats.vocab_size}) and student "
                f"{source.name} (vocab {stats.vocab_size}) must share a vocabulary for logit KD"
            )
        notes.append(f"teacher {t_source.name} frozen in {precision}; student trained in bf16")

    budget = pool.gpu_memory_gib * (1.0 - HEADROOM_FRACTION)
    trainable = stats.total_params
    if kind == "lora":
        trainable = lora_rank * stats.lora_fan_sum
    if precision == "fp8" and kind in ("finetune", "pretrain"):
        notes.append("fp8 compute weights; fp32 master weights and Adam moments are unchanged")
    for gpus in _candidate_gpu_counts(pool):
        nodes = max(1, gpus // pool.gpus_per_node)
        if kind == "inference":
            tp = min(gpus, pool.gpus_per_node)
            pp = gpus // tp
            mem = _inference_memory(stats, precision, seq_len, micro_batch, gpus, tp, pp)
            if mem.total <= budget:
                ep = math.gcd(stats.n_routed_experts, gpus) if stats.n_routed_experts else 1
                return _make_plan(
                    source, stats, kind, precision, seq_len, micro_batch, pool, trainable=0,
                    gpus=gpus, nodes=nodes, stage=None, tp=tp, pp=pp, ep=ep, dp=1,
                    checkpointing=False, mem=mem, budget=budget, teacher_name=None,
                    lora_rank=None, notes=notes,
                )  # fmt: skip
            continue
        weight_precision = "bf16" if kind == "distill" else precision
        for stage in (2, 3):
            for checkpointing in (False, True):
                mem = _training_memory(
                    stats, kind, weight_precision, seq_len * micro_batch, gpus, stage,
                    checkpointing, trainable, teacher_stats, precision,
                )  # fmt: skip
                if mem.total <= budget:
                    ep = math.gcd(stats.n_routed_experts, gpus) if stats.n_routed_experts else 1
                    return _make_plan(
                        source, stats, kind, precision, seq_len, micro_batch, pool, trainable,
                        gpus=gpus, nodes=nodes, stage=stage, tp=1, pp=1, ep=ep, dp=gpus,
                        checkpointing=checkpointing, mem=mem, budget=budget,
                        teacher_name=teacher_name,
                        lora_rank=lora_rank if kind == "lora" else None, notes=notes,
                    )  # fmt: skip
    raise PlanError(
        f"{kind} of {source.name} ({stats.total_params / 1e9:.2f}B) in {precision} at seq_len "
        f"{seq_len} x batch {micro_batch} does not fit on {pool.max_nodes} nodes of "
        f"{pool.gpus_per_node} x {pool.gpu_memory_gib:g} GiB",
        code="does_not_fit",
    )


def _make_plan(
    source: ModelSource,
    stats: ModelStats,
    kind: str,
    precision: str,
    seq_len: int,
    micro_batch: int,
    pool: PoolSpec,
    trainable: int,
    *,
    gpus: int,
    nodes: int,
    stage: int | None,
    tp: int,
    pp: int,
    ep: int,
    dp: int,
    checkpointing: bool,
    mem: MemoryBreakdown,
    budget: float,
    teacher_name: str | None,
    lora_rank: int | None,
    notes: list[str],
) -> Plan:
    return Plan(
        model=source.name,
        kind=kind,
        precision=precision,
        seq_len=seq_len,
        micro_batch=micro_batch,
        pool=pool,
        total_params=stats.total_params,
        active_params=stats.active_params,
        trainable_params=trainable,
        gpus=gpus,
        nodes=nodes,
        zero_stage=stage,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        expert_parallel=ep,
        data_parallel=dp,
        activation_checkpointing=checkpointing,
        memory_per_gpu=mem,
        usable_memory_per_gpu_gib=budget,
        teacher=teacher_name,
        lora_rank=lora_rank,
        notes=tuple(notes),
    )
