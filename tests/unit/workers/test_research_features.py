"""The plan reaches DeepSpeed as planned; checkpoint pruning; the validation split; activation
checkpointing; evaluation sums; LoRA targets and adapters (tiny models, no jobs)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from workers.checkpoint import checkpoint_tags, mark_latest, prune_checkpoints
from workers.data import IGNORE_INDEX, DataError, build_examples, split_examples
from workers.execution import (
    CapacityPlan,
    ExecutionPlan,
    InputPlan,
    JobDirs,
    ModelPlan,
    job_spec,
)
from workers.model_stats import lora_modules
from workers.presets import PresetError, apply_adapter, load_model, resolve_model
from workers.spec import JobSpec
from workers.tokenizer import ByteTokenizer
from workers.training import (
    activation_checkpointing_for,
    activation_checkpointing_on,
    apply_lora,
    deepspeed_config_for,
    enable_activation_checkpointing,
    eval_batches,
    load_data,
    token_losses,
)

tok = ByteTokenizer()


def _plan(zero_stage: int, checkpointing: bool, ranks: int = 4) -> ExecutionPlan:
    root = Path("/srv/nuri/jobs/m/job_9")
    return ExecutionPlan(
        job_id="job_9",
        attempt=1,
        kind="finetune",
        payload="model",
        model=ModelPlan(ref="axk1-tiny", preset="axk1-tiny"),
        teacher=None,
        inputs=(
            InputPlan(
                id="ds_1",
                name="d",
                role="data",
                uri="file:///srv/d.jsonl",
                sha256="00" * 32,
                size_bytes=1,
            ),
        ),
        capacity=CapacityPlan(
            ranks=ranks,
            nodes=1,
            ranks_per_node=ranks,
            precision="bf16",
            zero_stage=zero_stage,
            activation_checkpointing=checkpointing,
            offload=False,
            micro_batch=3,
            grad_accum=5,
            seq_len=64,
            gpu_memory_gib=80.0,
            gpus_per_node=8,
        ),
        knobs={"steps": 3, "eval_fraction": 0.2, "keep_checkpoints": 2},
        dirs=JobDirs.under(root),
    )


@pytest.mark.parametrize(("stage", "checkpointing"), [(3, True), (2, False), (1, True)])
def test_the_deepspeed_config_is_the_capacity_plan(stage: int, checkpointing: bool) -> None:
    plan = _plan(stage, checkpointing)
    spec = job_spec(plan)
    assert (spec.eval_fraction, spec.keep_checkpoints) == (0.2, 2)
    # A worker planner that disagrees on everything is not consulted.
    disagreeing = SimpleNamespace(zero_stage=5 - stage, activation_checkpointing=not checkpointing)
    for on_gpu in (True, False):
        config = deepspeed_config_for(spec, plan.capacity.ranks, on_gpu, disagreeing)  # type: ignore[arg-type]
        assert config is not None
        cap = plan.capacity
        assert config["zero_optimization"]["stage"] == cap.zero_stage
        assert config["train_micro_batch_size_per_gpu"] == cap.micro_batch
        assert config["gradient_accumulation_steps"] == cap.grad_accum
        assert config["train_batch_size"] == cap.micro_batch * cap.grad_accum * cap.ranks
        assert config["bf16"]["enabled"] is on_gpu
        assert ("activation_checkpointing" in config) is checkpointing
        if checkpointing:
            partition = config["activation_checkpointing"]["partition_activations"]
            assert partition is (stage == 3)
    assert activation_checkpointing_for(spec, disagreeing) is checkpointing  # type: ignore[arg-type]


def test_the_worker_plan_fills_in_only_what_the_spec_leaves_open() -> None:
    spec = JobSpec.from_dict(
        {"job_id": "j", "kind": "finetune", "output_dir": "/tmp/o", "data": {"path": "d"}}
    )
    worker_plan = SimpleNamespace(zero_stage=3, activation_checkpointing=True)
    config = deepspeed_config_for(spec, 2, False, worker_plan)  # type: ignore[arg-type]
    assert config is not None and config["zero_optimization"]["stage"] == 3
    assert "activation_checkpointing" in config
    spec.zero_stage, spec.activation_checkpointing = 1, False
    config = deepspeed_config_for(spec, 2, False, worker_plan)  # type: ignore[arg-type]
    assert config is not None and config["zero_optimization"]["stage"] == 1
    assert "activation_checkpointing" not in config
    spec.engine = "torch"
    assert deepspeed_config_for(spec, 2, False, worker_plan) is None  # type: ignore[arg-type]


def test_pruning_keeps_the_newest_and_never_the_latest(tmp_path: Path) -> None:
    for n in (1, 2, 10, 3):
        (tmp_path / f"step-{n}").mkdir()
    (tmp_path / "zero_to_fp32.py").write_text("")
    assert checkpoint_tags(tmp_path) == ["step-1", "step-2", "step-3", "step-10"]
    mark_latest(tmp_path, "step-2")  # e.g. step-3 and step-10 were never completed
    assert prune_checkpoints(tmp_path, 0) == []
    assert prune_checkpoints(tmp_path, 1) == ["step-1", "step-3"]
    assert checkpoint_tags(tmp_path) == ["step-2", "step-10"]
    assert (tmp_path / "zero_to_fp32.py").exists()


def _text_examples(n: int):
    records = [{"text": f"record {i:03d} " * 3} for i in range(n)]
    return build_examples(records, tok, seq_len=16)


def test_the_split_is_seeded_disjoint_and_holds_out_at_least_one() -> None:
    examples = _text_examples(30)
    train, held = split_examples(examples, 0.2, seed=4)
    again_train, again_held = split_examples(examples, 0.2, seed=4)
    assert torch.equal(held.input_ids, again_held.input_ids)
    assert torch.equal(train.input_ids, again_train.input_ids)
    assert len(train) + len(held) == len(examples) and len(held) == round(0.2 * len(examples))
    rows = {tuple(r) for r in train.input_ids.tolist()}
    assert not rows & {tuple(r) for r in held.input_ids.tolist()}
    other_train, _ = split_examples(examples, 0.2, seed=5)
    assert not torch.equal(other_train.input_ids, train.input_ids)
    _, tiny = split_examples(_text_examples(2), 0.01, seed=0)
    assert len(tiny) == 1
    with pytest.raises(DataError, match="eval_fraction"):
        split_examples(build_examples([{"text": "x" * 16}], tok, seq_len=16), 0.5, seed=0)


def test_the_training_stream_never_yields_a_held_out_example(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(12)))
    spec = JobSpec.from_dict(
        {
            "job_id": "j",
            "kind": "finetune",
            "output_dir": str(tmp_path),
            "data": {"path": str(data)},
            "seq_len": 16,
            "micro_batch": 2,
            "eval_fraction": 0.25,
        }
    )
    loaded = load_data(SimpleNamespace(spec=spec, rank=0, world_size=1), tok)  # type: ignore[arg-type]
    assert loaded.held_out is not None and len(loaded.held_out) == 3
    held = {tuple(r) for r in loaded.held_out.input_ids.tolist()}
    for _ in range(3 * loaded.stream.steps_per_epoch):  # three epochs
        batch = loaded.stream.next_batch()["input_ids"].tolist()
        assert not held & {tuple(r) for r in batch}


def test_every_rank_gets_the_same_number_of_eval_batches() -> None:
    examples = _text_examples(10)
    n = len(examples)
    per_rank = [list(eval_batches(examples, 2, rank, 3)) for rank in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    real = sum(int((b["labels"] != IGNORE_INDEX).any(dim=1).sum()) for bs in per_rank for b in bs)
    assert real == n  # each example once; padding batches have no targets


@pytest.fixture(scope="module")
def tiny_model():
    return load_model(resolve_model("axk1-tiny"), seed=1)


def test_token_losses_match_the_model_loss(tiny_model) -> None:
    ex = build_examples([{"prompt": "안녕", "completion": "반가워요"}] * 2, tok, seq_len=32)
    with torch.no_grad():
        out = tiny_model(input_ids=ex.input_ids, attention_mask=ex.attention_mask, labels=ex.labels)
    total, count = token_losses(out.logits, ex.labels)
    assert int(count) == int((ex.labels[:, 1:] != IGNORE_INDEX).sum())
    assert float(total / count) == pytest.approx(float(out.loss), rel=1e-5)


def test_activation_checkpointing_recomputes_every_layer_in_backward() -> None:
    def forward_calls(checkpointing: bool) -> int:
        model = load_model(resolve_model("axk1-tiny"), seed=0).train()
        if checkpointing:
            enable_activation_checkpointing(model)
        assert activation_checkpointing_on(model) is checkpointing
        calls = []
        # transformers checkpoints each layer's forward: its sub-modules run again in backward.
        for layer in model.model.layers:
            layer.input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
        ids = torch.tensor([tok.encode("activation checkpointing")])
        model(input_ids=ids, labels=ids).loss.backward()
        return len(calls)

    layers = resolve_model("axk1-tiny").config.num_hidden_layers
    assert forward_calls(False) == layers
    assert forward_calls(True) == 2 * layers  # the backward pass ran each layer again


def test_lora_targets_choose_the_adapted_projections() -> None:
    assert lora_modules(["q_a_proj", "down_proj"]) == (
        ["q_a_proj", "down_proj"],
        ["mlp.experts.down_proj"],
    )
    assert lora_modules(["up_proj"])[1] == ["mlp.experts.gate_up_proj"]
    model = apply_lora(
        load_model(resolve_model("axk1-tiny")), 2, 4, 0.0, ["kv_b_proj"], base_name="axk1-tiny"
    )
    adapted = {
        n.split(".lora_")[0].rsplit(".", 1)[-1]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert adapted == {"kv_b_proj"}
    assert model.peft_config["default"].base_model_name_or_path == "axk1-tiny"


def test_an_adapter_merges_into_its_base_with_the_same_outputs(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = load_model(resolve_model("axk1-tiny"), seed=0)
    config = LoraConfig(r=2, lora_alpha=8, target_modules=["o_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, config).eval()
    adapted.save_pretrained(str(tmp_path / "adapter"), save_embedding_layers=False)
    ids = torch.tensor([tok.encode("merge me")])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits

    fresh = load_model(resolve_model("axk1-tiny"), seed=0).eval()
    with torch.no_grad():
        before = fresh(input_ids=ids).logits
    merged = apply_adapter(fresh, tmp_path / "adapter", merge=True)
    assert not hasattr(merged, "peft_config")  # a plain model again
    with torch.no_grad():
        after = merged(input_ids=ids).logits
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)

    trainable = apply_adapter(
        load_model(resolve_model("axk1-tiny"), seed=0), tmp_path / "adapter", trainable=True
    )
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in trainable.named_parameters() if p.requires_grad
    )
    with pytest.raises(PresetError, match="adapter"):
        apply_adapter(load_model(resolve_model("axk1-tiny")), tmp_path)
