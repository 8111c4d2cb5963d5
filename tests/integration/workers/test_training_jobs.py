"""finetune, pretrain and LoRA end to end on the tiny A.X K1 preset, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.presets import load_model, resolve_model
from workers.provenance import sha256_file
from workers.runtime import run_job


def _falls(losses: list[float]) -> bool:
    head = sum(losses[:2]) / 2
    tail = sum(losses[-2:]) / 2
    return tail < head - 0.5


@pytest.mark.timeout(600)
def test_finetune_with_deepspeed_lowers_loss_and_writes_a_model(
    make_spec, corpus, read_events
) -> None:
    spec = make_spec("finetune", corpus)
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    assert _falls(result.losses), result.losses

    events = read_events(spec.output_dir)
    assert {"engine": "deepspeed", "zero_stage": 2}.items() <= next(
        e for e in events if e["type"] == "engine"
    ).items()
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, spec.steps + 1))
    assert all(m["tokens_per_s"] > 0 and m["step_time_s"] > 0 for m in metrics)
    assert all(m["cpu_time_s"] > 0 for m in metrics)
    assert "mfu" not in metrics[0]  # CPU: no peak FLOP/s to relate to
    assert events[-1]["type"] == "status" and events[-1]["status"] == "succeeded"

    # The model reloads from its directory as a model reference, with the byte tokenizer.
    model_dir = Path(spec.output_dir) / "model"
    reloaded = resolve_model(str(model_dir))
    assert reloaded.tokenizer == "bytes"
    assert load_model(reloaded).config.model_type == "axk1"

    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["job_id"] == spec.job_id and manifest["kind"] == "finetune"
    assert manifest["base_model"]["name"] == "axk1-tiny"
    assert manifest["inputs"][0]["id"] == "ds-test"
    assert manifest["inputs"][0]["files"][0]["sha256"] == sha256_file(corpus)
    weights = next(a for a in manifest["artifacts"] if a["path"] == "model/model.safetensors")
    assert weights["sha256"] == sha256_file(model_dir / "model.safetensors")


@pytest.mark.timeout(600)
def test_zero3_continued_pretraining_from_local_weights(make_spec, corpus, tmp_path) -> None:
    base_dir = tmp_path / "base"
    load_model(resolve_model("axk1-tiny"), seed=7).save_pretrained(base_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(json.loads(line)["text"] for line in corpus.read_text().splitlines()))
    spec = make_spec(
        "pretrain", text, model={"name": "axk1-tiny", "weights_dir": str(base_dir)}, zero_stage=3
    )
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    assert _falls(result.losses), result.losses
    # ZeRO-3 gathers the partitioned weights for export: a complete, loadable model.
    exported = load_model(resolve_model(str(Path(spec.output_dir) / "model")))
    base = load_model(resolve_model("axk1-tiny", weights_dir=base_dir))
    assert exported.state_dict().keys() == base.state_dict().keys()
    changed = [
        k for k, v in exported.state_dict().items() if not torch.equal(v, base.state_dict()[k])
    ]
    assert changed  # it trained, starting from the given weights
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["base_model"]["weights_hash_method"] == "content"


@pytest.mark.timeout(600)
def test_lora_trains_adapters_on_attention_and_experts_only(make_spec, corpus, read_events) -> None:
    spec = make_spec("lora", corpus, lr=1e-2, lora={"rank": 4, "alpha": 8})
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    assert _falls(result.losses), result.losses
    adapter = Path(spec.output_dir) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert "kv_b_proj" in config["target_modules"]
    assert "mlp.experts.gate_up_proj" in config["target_parameters"]
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    assert all("lora_" in name for name in tensors)
    assert any(".mlp.experts." in name for name in tensors)
    # Adapters only, exactly as many parameters as the capacity plan counted.
    planned = next(e for e in read_events(spec.output_dir) if e["type"] == "plan")["plan"]
    assert sum(t.numel() for t in tensors.values()) == planned["trainable_params"]
    assert planned["trainable_params"] < planned["total_params"] / 5
