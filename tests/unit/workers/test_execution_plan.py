"""The execution plan and the per-kind config knobs: one validated object crosses to workers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import knobs
from workers.execution import (
    CapacityPlan,
    ExecutionPlan,
    InputPlan,
    JobDirs,
    ModelPlan,
    PlanInvalid,
    job_spec,
    staged_path,
)

ROOT = Path("/srv/nuri/jobs/mem_a/job_1")


def make_plan(**changes: Any) -> ExecutionPlan:
    data = InputPlan(
        id="ds_1",
        name="ko-chat",
        role="data",
        uri="file:///srv/data/mem_a/ko-chat.jsonl",
        sha256="ab" * 32,
        size_bytes=1234,
        version=2,
        labels={"jurisdiction": "KR"},
    )
    plan = ExecutionPlan(
        job_id="job_1",
        attempt=1,
        kind="lora",
        payload="model",
        model=ModelPlan(ref="axk1-tiny", preset="axk1-tiny", labels={"jurisdiction": "KR"}),
        teacher=None,
        inputs=(data,),
        capacity=CapacityPlan(
            ranks=2,
            nodes=1,
            ranks_per_node=2,
            precision="bf16",
            zero_stage=2,
            activation_checkpointing=True,
            offload=False,
            micro_batch=4,
            grad_accum=2,
            seq_len=64,
            gpu_memory_gib=141.0,
            gpus_per_node=8,
        ),
        knobs={"steps": 7, "lora_rank": 4, "lr": 0.01},
        dirs=JobDirs.under(ROOT),
    )
    return replace(plan, **changes)


def test_a_plan_round_trips_through_plain_data() -> None:
    plan = make_plan()
    assert ExecutionPlan.from_dict(plan.to_dict()) == plan


def test_the_job_spec_applies_the_plan_exactly() -> None:
    plan = make_plan()
    spec = job_spec(plan)
    assert spec.kind == "lora" and spec.model.name == "axk1-tiny"
    assert spec.model.weights_dir is None  # a seeded small preset
    assert (spec.zero_stage, spec.activation_checkpointing) == (2, True)
    assert (spec.micro_batch, spec.grad_accum, spec.seq_len) == (4, 2, 64)
    assert (spec.steps, spec.lr, spec.lora.rank) == (7, 0.01, 4)
    assert spec.output_dir == str(ROOT / "output")
    assert spec.checkpoint_dir == str(ROOT / "checkpoints")
    # The data is what staging put in the job's own input directory, nothing else.
    assert spec.data is not None and spec.data.path == str(ROOT / "inputs" / "data")
    assert staged_path(plan, plan.inputs[0]) == ROOT / "inputs" / "data" / "ds_1"


def test_registered_weights_and_adapters_are_staged_paths() -> None:
    weights = InputPlan("ds_w", "my-model", "model", "s3://b/models/m/", "cd" * 32, 10)
    adapter = InputPlan("art_a", "my-adapter", "adapter", "file:///x/adapter", "ef" * 32, 5)
    plan = make_plan(
        kind="finetune",
        knobs={},
        model=ModelPlan(ref="art_a", preset="axk1-tiny", weights=None, adapter=adapter),
    )
    spec = job_spec(plan)
    assert spec.model.adapter_dir == str(ROOT / "inputs" / "adapter" / "art_a")
    plan = make_plan(
        kind="finetune", knobs={}, model=ModelPlan(ref="ds_w", preset=None, weights=weights)
    )
    spec = job_spec(plan)
    assert spec.model.name == str(ROOT / "inputs" / "model" / "ds_w")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"version": 2}, "version"),
        ({"payload": "shell"}, "payload"),
        ({"dirs": JobDirs(str(ROOT), "/etc", "/a/b", "/a/c", "/a/d")}, "not directly under"),
        ({"dirs": replace(JobDirs.under(ROOT), output=str(ROOT / ".." / "other"))}, "under"),
        ({"knobs": {"steps": 3, "output_dir": "/etc"}}, "not settings"),
        ({"inputs": ()}, "at least one dataset"),
        ({"model": None}, "names its model"),
    ],
)
def test_inconsistent_plans_are_refused(change: dict[str, Any], words: str) -> None:
    raw = replace(make_plan(), **change).to_dict()
    with pytest.raises((PlanInvalid, knobs.KnobError)) as err:
        ExecutionPlan.from_dict(raw)
    assert words in str(err.value)


def test_inputs_from_unknown_stores_are_refused() -> None:
    raw = make_plan().to_dict()
    raw["inputs"][0]["uri"] = "http://example.com/data.jsonl"
    with pytest.raises(PlanInvalid, match="uri"):
        ExecutionPlan.from_dict(raw)


def test_unknown_config_keys_name_the_allowed_ones() -> None:
    with pytest.raises(knobs.KnobError) as err:
        knobs.knobs_for("finetune", {"steps": 3, "data_path": "/etc/passwd", "spec": {}})
    assert err.value.details["unknown"] == ["data_path", "spec"]
    assert "lr" in err.value.details["allowed"] and "steps" in str(err.value)


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("finetune", {"lr": float("inf")}),
        ("finetune", {"lr": 0}),
        ("finetune", {"steps": 0}),
        ("finetune", {"eval_fraction": 0.9}),
        ("lora", {"lora_targets": ["../../etc"]}),
        ("lora", {"lora_rank": 0}),
        ("distill", {"temperature": -1}),
        ("inference", {"top_p": 2}),
        ("inference", {"steps": 3}),  # a training knob is no inference setting
        ("finetune", {"payload": "workers"}),
        ("finetune", {"payload": "synthetic", "lr": 0.1}),  # synthetic takes its own knobs
    ],
)
def test_bad_knobs_are_refused(kind: str, config: dict[str, Any]) -> None:
    with pytest.raises(knobs.KnobError):
        knobs.knobs_for(kind, config)


def test_the_synthetic_payload_is_explicit() -> None:
    assert not knobs.is_synthetic({})
    assert isinstance(knobs.knobs_for("finetune", {}), knobs.TrainingKnobs)
    syn = knobs.knobs_for("finetune", {"payload": "synthetic", "steps": 3})
    assert isinstance(syn, knobs.SyntheticKnobs) and syn.steps == 3


# No value a member can put in a config string becomes a path: strings are only the
# system prompt, which the loops use as text.
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=4))
def test_no_string_knob_but_the_system_prompt(config: dict[str, str]) -> None:
    for kind in knobs.KNOBS:
        try:
            validated = knobs.knobs_for(kind, config)
        except knobs.KnobError:
            continue
        strings = {k for k, v in validated.model_dump().items() if isinstance(v, str)}
        assert strings <= {"system_prompt", "precision", "payload"}
        assert validated.model_dump().get("precision", "bf16") in ("bf16", "fp8")


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_deepspeed_config_the_worker_builds_equals_the_plan(
    stage: int, checkpointing: bool
) -> None:
    """One source of truth: what the planner decided is what DeepSpeed is configured with."""
    from workers.training import deepspeed_config_for

    base = make_plan()
    plan = replace(
        base,
        capacity=replace(base.capacity, zero_stage=stage, activation_checkpointing=checkpointing),
    )
    cap = plan.capacity
    for on_gpu in (False, True):
        config = deepspeed_config_for(job_spec(plan), cap.ranks, on_gpu)
        assert config is not None
        assert config["zero_optimization"]["stage"] == cap.zero_stage
        assert config["train_micro_batch_size_per_gpu"] == cap.micro_batch
        assert config["gradient_accumulation_steps"] == cap.grad_accum
        assert config["train_batch_size"] == cap.micro_batch * cap.grad_accum * cap.ranks
        assert ("activation_checkpointing" in config) is cap.activation_checkpointing
        assert config["bf16"]["enabled"] is (on_gpu and cap.precision == "bf16")
        assert "offload_optimizer" not in config["zero_optimization"]  # cap.offload is False
