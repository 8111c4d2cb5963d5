"""Presets against ARCHITECTURE §7: the A.X K1 facts are read from the config, on meta."""

from __future__ import annotations

import pytest
import torch

from workers.model_stats import model_stats
from workers.presets import PRESETS, PresetError, build_config, load_model, resolve_model
from workers.tokenizer import ByteTokenizer


def test_axk1_config_matches_the_documented_architecture() -> None:
    c = resolve_model("axk1").config
    assert c.num_hidden_layers == 61
    assert c.mlp_layer_types[0] == "dense"
    assert c.mlp_layer_types[1:] == ["sparse"] * 60
    assert (c.hidden_size, c.num_attention_heads) == (7168, 64)
    assert (c.q_lora_rank, c.kv_lora_rank) == (1536, 512)
    assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok) == (192, 1, 8)
    assert c.moe_intermediate_size == 2048
    assert c.vocab_size == 163_840


def test_axk1_parameter_counts_come_from_the_meta_model() -> None:
    stats = model_stats(resolve_model("axk1").config)
    assert stats.total_params == pytest.approx(518.98e9, rel=1e-4)
    assert stats.routed_expert_params == pytest.approx(507.3e9, rel=1e-3)
    assert 32e9 < stats.active_params < 34e9  # "~33B active per token"
    # bf16 weights alone are ~1.04 TB.
    assert stats.weight_bytes("bf16") == pytest.approx(1.04e12, rel=0.01)


def test_axk1_context_needs_rope_scaling_beyond_the_config_default() -> None:
    # §7 says "context up to 131,072"; AXK1Config's default window is 32,768, so the preset
    # records the served context separately and planning may go beyond the config default.
    source = resolve_model("axk1")
    assert source.config.max_position_embeddings == 32_768
    assert source.context_limit == 131_072


def test_rmsnorm_follows_every_moe_block() -> None:
    from transformers import AutoModelForCausalLM

    config = resolve_model("axk1-tiny").config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    assert not hasattr(layers[0].mlp, "post_mlp_layernorm")  # first layer dense
    assert all(hasattr(layer.mlp, "post_mlp_layernorm") for layer in layers[1:])


@pytest.mark.parametrize("name", ["axk1-tiny", "axk1-mini"])
def test_small_presets_keep_the_axk1_architecture(name: str) -> None:
    c = resolve_model(name).config
    assert c.model_type == "axk1"
    assert c.kv_lora_rank and c.q_lora_rank  # multi-head latent attention
    assert c.n_routed_experts > c.num_experts_per_tok and c.n_shared_experts == 1
    assert c.mlp_layer_types[0] == "dense" and set(c.mlp_layer_types[1:]) == {"sparse"}
    assert c.vocab_size == ByteTokenizer().vocab_size


def test_a_deepseek_v3_shaped_config_is_counted_not_assumed() -> None:
    # Same family, different sizes: 256 experts and three dense layers give DeepSeek-V3's
    # published 671B, which no constant in the code mentions.
    layer_types = ["dense"] * 3 + ["sparse"] * 58
    config = build_config(
        "axk1", {"n_routed_experts": 256, "vocab_size": 129_280, "mlp_layer_types": layer_types}
    )
    assert model_stats(config).total_params == pytest.approx(671e9, rel=0.01)


def test_students_share_the_teacher_vocabulary() -> None:
    axk1 = resolve_model("axk1").config.vocab_size
    for name in ("student-8b", "student-70b"):
        assert resolve_model(name).config.vocab_size == axk1
    assert model_stats(resolve_model("student-70b").config).total_params < 72e9


def test_unknown_model_and_missing_directory_are_refused(tmp_path) -> None:
    with pytest.raises(PresetError, match="unknown model"):
        resolve_model("axk9")
    with pytest.raises(PresetError, match=r"no config\.json"):
        resolve_model("axk1", weights_dir=tmp_path)


def test_a_large_model_without_weights_is_not_initialised_at_random() -> None:
    with pytest.raises(PresetError, match="local weights directory"):
        load_model(resolve_model("student-8b"))


def test_weights_round_trip_through_a_local_safetensors_directory(tmp_path) -> None:
    model = load_model(resolve_model("axk1-tiny"), seed=3)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    reloaded = load_model(resolve_model("axk1-tiny", weights_dir=tmp_path))
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-6)
    by_path = resolve_model(str(tmp_path))
    assert by_path.config.model_type == "axk1" and by_path.weights_dir == tmp_path


def test_every_preset_builds_a_config() -> None:
    for name in PRESETS:
        assert resolve_model(name).config.vocab_size > 0
