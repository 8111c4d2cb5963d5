"""Parameter counts and per-token costs of a model, read from its configuration.

The counts come from instantiating the model on the ``meta`` device (shapes only, no memory),
never from constants, so A.X K1, A.X K2, a student or a tiny preset are all measured the same
way. The instantiation of a 519B model on meta takes a few seconds; results are cached per
configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Modules LoRA adapts: every attention projection (MLA's and a dense decoder's) and every MLP
# projection, dense and shared experts included ...
LORA_LINEAR_TARGETS = (
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_b_proj",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# ... and the routed experts, which transformers stores as 3-D parameters, not nn.Linear.
LORA_EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def lora_modules(targets: list[str] | tuple[str, ...] | None) -> tuple[list[str], list[str]]:
    """(linear module names, routed-expert parameter names) LoRA adapts for ``targets``.

    None means every target. The routed experts fuse gate and up projections into one
    ``gate_up_proj`` parameter: it is adapted when ``gate_proj`` or ``up_proj`` is chosen,
    their ``down_proj`` when ``down_proj`` is.
    """
    if targets is None:
        return list(LORA_LINEAR_TARGETS), list(LORA_EXPERT_PARAMETERS)
    chosen = set(targets)
    linear = [t for t in LORA_LINEAR_TARGETS if t in chosen]
    experts = []
    if chosen & {"gate_proj", "up_proj"}:
        experts.append("mlp.experts.gate_up_proj")
    if "down_proj" in chosen:
        experts.append("mlp.experts.down_proj")
    return linear, experts


# Bytes per parameter of weights used for compute.
PRECISION_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class ModelStats:
    """Sizes of a causal LM that the planner and the MFU meter need."""

    model_type: str
    total_params: int
    routed_expert_params: int  # parameters of routed experts (a token uses top_k of them)
    embedding_params: int  # input embedding + output head
    fp32_params: int  # kept in fp32 whatever the precision (MoE router weights)
    matrix_params: int  # decoder-layer matrices: what FP8 weight formats quantise
    largest_layer_params: int  # non-routed-expert parameters of the largest decoder layer
    largest_layer_expert_params: int  # routed-expert parameters of the largest decoder layer
    num_layers: int
    hidden_size: int
    vocab_size: int
    n_routed_experts: int
    experts_per_token: int
    ffn_width_per_token: int  # intermediate width a token passes through in the widest layer
    kv_cache_bytes_per_token: int  # bf16 KV cache per token, whole model, unsharded
    kv_heads: int  # heads the KV cache splits across under tensor parallelism (1: latent MLA)
    attention_flops_dim: int  # heads * (qk_head_dim + v_head_dim), for attention FLOPs
    lora_fan_sum: int  # sum of (in + out) over LoRA targets: adapter params = rank * this

    @property
    def active_params(self) -> int:
        """Parameters a single token passes through (routed experts counted top_k / n)."""
        if self.n_routed_experts == 0:
            return self.total_params
        routed_active = self.routed_expert_params * self.experts_per_token / self.n_routed_experts
        return int(self.total_params - self.routed_expert_params + routed_active)

    def weight_bytes(self, precision: str) -> float:
        """Bytes of the weights in ``precision`` (fp8 quantises layer matrices only)."""
        if precision not in PRECISION_BYTES:
            raise ValueError(f"unknown precision {precision!r}")
        rest = self.total_params - self.fp32_params
        if precision == "fp8":
            # Embeddings, output head and norms stay bf16 in FP8 checkpoints (DeepSeek-V3 style).
            low = self.matrix_params
            return low * 1.0 + (rest - low) * 2.0 + self.fp32_params * 4.0
        return rest * PRECISION_BYTES[precision] + self.fp32_params * 4.0

    def training_flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs per token: 6 x active params + attention (PaLM convention)."""
        attention = 6.0 * self.num_layers * seq_len * self.attention_flops_dim
        return 6.0 * self.active_params + attention

    def frozen_training_flops_per_token(self, seq_len: int) -> float:
        """FLOPs per token when base weights are frozen (LoRA): no weight gradients, so
        4 x active params instead of 6 (adapter FLOPs are negligible)."""
        return self.training_flops_per_token(seq_len) - 2.0 * self.active_params

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form with the derived ``active_params``."""
        out = dict(self.__dict__)
        out["active_params"] = self.active_params
        return out


def _config_key(config: Any) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def model_stats(config: Any) -> ModelStats:
    """The :class:`ModelStats` of a transformers causal-LM configuration (cached)."""
    key = _config_key(config)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _CACHE[key] = _measure(config)
    return cached


# Keyed by the configuration's canonical JSON (configs themselves are mutable, unhashable).
_CACHE: dict[str, ModelStats] = {}


def _measure(config: Any) -> ModelStats:
    import torch
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # untyped transformers API
    with torch.device("meta"):
        model = auto.from_config(config)
    keep_fp32 = tuple(getattr(model, "_keep_in_fp32_modules_strict", None) or ())

    total = routed = embedding = fp32 = matrix = lora_fan = 0
    per_layer: dict[int, list[int]] = {}
    for name, param in model.named_parameters():
        n = param.numel()
        total += n
        is_expert = ".mlp.experts." in name
        if is_expert:
            routed += n
        if "embed_tokens" in name or name.startswith("lm_head"):
            embedding += n
        if any(k in name for k in keep_fp32):
            fp32 += n
        elif ".layers." in name and param.dim() >= 2:
            matrix += n
        leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
        if leaf in LORA_LINEAR_TARGETS and param.dim() == 2 and not is_expert:
            lora_fan += param.shape[0] + param.shape[1]
        elif is_expert and any(name.endswith(t) for t in LORA_EXPERT_PARAMETERS):
            # peft adapts each expert's matrix: rank * experts * (in + out) parameters.
            lora_fan += param.shape[0] * (param.shape[1] + param.shape[2])
        if ".layers." in name:
            idx = int(name.split(".layers.")[1].split(".")[0])
            slot = per_layer.setdefault(idx, [0, 0])
            slot[1 if is_expert else 0] += n
    largest = max(per_layer.values(), key=lambda s: s[0] + s[1], default=[0, 0])

    c = config
    layers = int(c.num_hidden_layers)
    hidden = int(c.hidden_size)
    n_routed = int(getattr(c, "n_routed_experts", 0) or 0)
    top_k = int(getattr(c, "num_experts_per_tok", 0) or 0) if n_routed else 0
    if getattr(c, "kv_lora_rank", None):
        # MLA caches one compressed latent + the shared rope key per token and layer; it is
        # the same on every tensor-parallel rank.
        kv_per_token = layers * (int(c.kv_lora_rank) + int(c.qk_rope_head_dim)) * 2
        kv_heads = 1
        qk_dim = int(c.qk_nope_head_dim) + int(c.qk_rope_head_dim)
        attn_dim = int(c.num_attention_heads) * (qk_dim + int(c.v_head_dim))
    else:
        heads = int(c.num_attention_heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
        kv_per_token = layers * 2 * kv_heads * head_dim * 2
        attn_dim = heads * 2 * head_dim
    dense_ffn = int(c.intermediate_size)
    if n_routed:
        moe_ffn = int(c.moe_intermediate_size) * (top_k + int(getattr(c, "n_shared_experts", 0)))
        ffn = max(dense_ffn, moe_ffn)
    else:
        ffn = dense_ffn
    return ModelStats(
        model_type=str(getattr(c, "model_type", "unknown")),
        total_params=total,
        routed_expert_params=routed,
        embedding_params=embedding,
        fp32_params=fp32,
        matrix_params=matrix,
        largest_layer_params=largest[0],
        largest_layer_expert_params=largest[1],
        num_layers=layers,
        hidden_size=hidden,
        vocab_size=int(c.vocab_size),
        n_routed_experts=n_routed,
        experts_per_token=top_k,
        ffn_width_per_token=ffn,
        kv_cache_bytes_per_token=kv_per_token,
        kv_heads=kv_heads,
        attention_flops_dim=attn_dim,
        lora_fan_sum=lora_fan,
    )
