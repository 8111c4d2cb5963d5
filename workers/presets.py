"""Model presets: the real A.X K1 architecture, tiny copies of it, and dense students.

A preset is a name for a transformers configuration plus how to get its tokenizer. Every
AXK1-family preset is ``transformers.AXK1Config`` with overrides, so the same code paths (MLA,
routed + shared experts, first layer dense) run on a 519B model and on a 0.2M one. A model
directory with a ``config.json`` (A.X K2, a fine-tuned derivative, a distilled student) works
wherever a preset name does: ``resolve_model("/models/axk2")``.

Weights only ever come from a local directory (``from_pretrained(..., local_files_only=True)``);
nothing here reaches a hub. A LoRA adapter an earlier job exported goes on top of a loaded
base with :func:`apply_adapter`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.tokenizer import ByteTokenizer

# Random initialisation is fine for CPU-sized models; above this a job must bring weights
# (a random 519B model would be both useless and a host-memory disaster).
RANDOM_INIT_LIMIT_PARAMS = 2_000_000_000

_BYTE_VOCAB = ByteTokenizer().vocab_size

# Shared by the tiny AXK1-family presets: byte vocabulary and its special ids.
_BYTE_IDS = {"vocab_size": _BYTE_VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


class PresetError(ValueError):
    """An unknown preset, a missing model directory or an unusable configuration."""


@dataclass(frozen=True)
class ModelPreset:
    """A named model architecture and where its tokenizer comes from."""

    name: str
    family: str  # "axk1" (AXK1Config) or "dense" (LlamaConfig)
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: str = "model-dir"  # "bytes" or "model-dir"
    # The context the deployed model serves; A.X K1's released checkpoint reaches 131,072
    # tokens through rope scaling although AXK1Config's default max_position_embeddings is
    # 32,768. None means "whatever the config says".
    max_context: int | None = None


_TINY_AXK1 = {
    **_BYTE_IDS,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "n_group": 2,
    "topk_group": 1,
    "num_experts_per_tok": 2,
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "max_position_embeddings": 512,
}

_MINI_AXK1 = {
    **_BYTE_IDS,
    "hidden_size": 256,
    "intermediate_size": 768,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "n_group": 4,
    "topk_group": 2,
    "num_experts_per_tok": 4,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "max_position_embeddings": 2048,
}


def _dense(
    hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int
) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
    }


# Students share A.X K1's vocabulary (163,840) so logits line up for distillation.
_AXK1_VOCAB = 163_840

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "axk1",
            "axk1",
            "A.X K1: 519B MoE (33B active), AXK1Config defaults; weights from a local directory",
            max_context=131_072,
        ),
        ModelPreset(
            "axk1-mini",
            "axk1",
            "A.X K1 architecture at ~10M parameters (6 layers, 16 experts); minutes on CPU",
            _MINI_AXK1,
            tokenizer="bytes",
        ),
        ModelPreset(
            "axk1-tiny",
            "axk1",
            "A.X K1 architecture at ~0.2M parameters (3 layers, 8 experts); seconds on CPU",
            _TINY_AXK1,
            tokenizer="bytes",
        ),
        ModelPreset(
            "student-70b",
            "dense",
            "dense decoder, Llama-70B shape with A.X K1's vocabulary (~71B)",
            {**_dense(8192, 80, 64, 8, 28672, _AXK1_VOCAB), "max_position_embeddings": 32768},
        ),
        ModelPreset(
            "student-8b",
            "dense",
            "dense decoder, Llama-8B shape with A.X K1's vocabulary (~8.3B)",
            {**_dense(4096, 32, 32, 8, 14336, _AXK1_VOCAB), "max_position_embeddings": 32768},
        ),
        ModelPreset(
            "student-mini",
            "dense",
            "dense decoder for CPU distillation runs (~1.7M), byte vocabulary",
            {
                **_dense(192, 4, 6, 2, 512, _BYTE_VOCAB),
                **_BYTE_IDS,
                "max_position_embeddings": 2048,
            },
            tokenizer="bytes",
        ),
        ModelPreset(
            "student-tiny",
            "dense",
            "dense decoder for CPU distillation runs (~0.1M), byte vocabulary",
            {**_dense(64, 2, 4, 2, 128, _BYTE_VOCAB), **_BYTE_IDS, "max_position_embeddings": 512},
            tokenizer="bytes",
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: its configuration and where weights/tokenizer live."""

    name: str
    config: Any  # a transformers PretrainedConfig (AXK1Config, LlamaConfig, ...)
    tokenizer: str  # "bytes" or "model-dir"
    weights_dir: Path | None = None
    max_context: int | None = None

    @property
    def context_limit(self) -> int:
        """Longest sequence the model serves."""
        return int(self.max_context or self.config.max_position_embeddings)


def build_config(family: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """A transformers configuration of ``family`` with ``overrides`` applied."""
    from transformers import AXK1Config, LlamaConfig

    kwargs = dict(overrides or {})
    try:
        if family == "axk1":
            return AXK1Config(**kwargs)
        if family == "dense":
            return LlamaConfig(**kwargs)
    except (TypeError, ValueError) as exc:  # strict dataclass configs reject bad fields
        raise PresetError(f"invalid {family} configuration: {exc}") from exc
    raise PresetError(f"unknown model family {family!r} (axk1 or dense)")


def resolve_model(
    ref: str,
    weights_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelSource:
    """Resolve a preset name or a local model directory to a :class:`ModelSource`.

    ``weights_dir`` attaches local safetensors weights to a preset (``axk1`` +
    ``/models/axk1``). ``overrides`` changes configuration fields (e.g. a student's size).
    """
    if ref in PRESETS:
        preset = PRESETS[ref]
        config = build_config(preset.family, {**preset.overrides, **(overrides or {})})
        wdir = Path(weights_dir) if weights_dir else None
        if wdir is not None and not (wdir / "config.json").exists():
            raise PresetError(f"weights directory {wdir} has no config.json")
        return ModelSource(ref, config, preset.tokenizer, wdir, preset.max_context)
    path = Path(ref)
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(PRESETS))
        raise PresetError(f"unknown model {ref!r}: not a preset ({known}) nor a model directory")
    from transformers import AutoConfig

    # AutoConfig knows model_type "axk1" (and every other causal LM) and only reads local files.
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, **(overrides or {}))
    except (OSError, ValueError) as exc:
        raise PresetError(f"cannot read the configuration in {path}: {exc}") from exc
    from workers.tokenizer import BYTE_TOKENIZER_FILE

    tokenizer = "bytes" if (path / BYTE_TOKENIZER_FILE).exists() else "model-dir"
    return ModelSource(path.name, config, tokenizer, path, None)


def load_model(
    source: ModelSource, dtype: Any = None, seed: int = 0, device_map: str | None = None
) -> Any:
    """The causal LM for ``source``: local weights when it has them, else a seeded random init.

    ``device_map="auto"`` spreads local weights over every visible GPU (single-process
    multi-GPU inference). Raises :class:`PresetError` for a large model without weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if source.weights_dir is not None:
        extra = {"device_map": device_map} if device_map else {}
        return AutoModelForCausalLM.from_pretrained(
            str(source.weights_dir), local_files_only=True, dtype=dtype, **extra
        )
    from workers.model_stats import model_stats

    total = model_stats(source.config).total_params
    if total > RANDOM_INIT_LIMIT_PARAMS:
        raise PresetError(
            f"{source.name} has {total / 1e9:.1f}B parameters: give a local weights directory "
            f"instead of initialising it at random"
        )
    torch.manual_seed(seed)
    auto: Any = AutoModelForCausalLM  # untyped transformers API
    return auto.from_config(source.config, dtype=dtype)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base_name(adapter_dir: str | Path) -> str | None:
    """The base model an adapter directory names (peft's ``base_model_name_or_path``)."""
    import json

    config = Path(adapter_dir) / ADAPTER_CONFIG
    if not config.is_file():
        raise PresetError(f"{adapter_dir} is not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    name = json.loads(config.read_text()).get("base_model_name_or_path")
    return str(name) if name else None


def apply_adapter(
    model: Any, adapter_dir: str | Path, *, trainable: bool = False, merge: bool = True
) -> Any:
    """``model`` with the LoRA adapter in ``adapter_dir`` applied by peft.

    ``trainable=True`` returns the peft model with the adapter's weights training (a lora job
    going on from an earlier one; the adapter's own rank, alpha and targets apply).
    Otherwise ``merge=True`` folds the adapter into the base weights and returns a plain
    model (inference; the other training kinds start from base + adapter).
    """
    from peft import PeftModel

    adapter_base_name(adapter_dir)  # refuses a directory that is no adapter
    if getattr(model, "peft_config", None) is not None:
        raise PresetError("the model already carries an adapter")
    first = next(iter(model.parameters()), None)
    if not trainable and merge and hasattr(first, "ds_id"):  # ZeRO-3 partitioned weights
        raise PresetError(
            "merging an adapter into ZeRO-3 partitioned weights is not supported: "
            "merge it into a model directory first (or run with ZeRO-2)"
        )
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    if trainable or not merge:
        return peft_model
    return peft_model.merge_and_unload()
