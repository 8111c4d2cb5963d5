"""Capacity planner: A.X K1's documented placement facts follow from its config."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.model_stats import model_stats
from workers.planner import (
    POOLS,
    Plan,
    PlanError,
    PoolSpec,
    fits,
    plan,
    shortfall,
)
from workers.presets import resolve_model

H200, H100 = POOLS["h200"], POOLS["h100"]


def test_bf16_inference_needs_more_than_one_h200_node_and_fp8_fits_one() -> None:
    bf16 = plan("axk1", "inference", "bf16", pool=H200)
    fp8 = plan("axk1", "inference", "fp8", pool=H200)
    assert bf16.nodes > 1 and not bf16.fits_one_node
    assert fp8.nodes == 1 and fp8.gpus == 8
    # The same holds with a serving batch of concurrent sequences.
    assert plan("axk1", "inference", "bf16", micro_batch=8, pool=H200).nodes > 1
    assert plan("axk1", "inference", "fp8", micro_batch=8, pool=H200).nodes == 1


def test_full_finetune_needs_many_nodes_with_zero3() -> None:
    for kind in ("finetune", "pretrain"):
        p = plan("axk1", kind, "bf16", pool=H200)
        assert p.zero_stage == 3
        assert p.nodes >= 8
        assert p.activation_checkpointing
        # Adam states alone (12 B/param) exceed a node by far; they are sharded over every GPU.
        assert p.memory_per_gpu.optimizer * p.gpus == pytest.approx(
            12 * p.total_params / 2**30, rel=1e-6
        )
    assert plan("axk1", "finetune", pool=H100).nodes > plan("axk1", "finetune", pool=H200).nodes


def test_lora_is_far_cheaper_than_full_finetune() -> None:
    lora = plan("axk1", "lora", "bf16", pool=H200)
    full = plan("axk1", "finetune", "bf16", pool=H200)
    assert lora.gpus < full.gpus
    assert lora.trainable_params < 0.01 * lora.total_params


def test_lora_trainable_count_matches_peft() -> None:
    from peft import LoraConfig, get_peft_model

    from workers.model_stats import LORA_EXPERT_PARAMETERS, LORA_LINEAR_TARGETS
    from workers.presets import load_model

    model = load_model(resolve_model("axk1-tiny"))
    config = LoraConfig(
        r=4,
        target_modules=list(LORA_LINEAR_TARGETS),
        target_parameters=list(LORA_EXPERT_PARAMETERS),
    )
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan("axk1-tiny", "lora", lora_rank=4).trainable_params == trainable


def test_distillation_plans_teacher_and_student_together() -> None:
    p = plan("student-70b", "distill", "fp8", pool=H200)
    assert p.teacher == "axk1"
    assert p.memory_per_gpu.teacher > 0
    alone = plan("student-70b", "finetune", "bf16", pool=H200)
    bf16_teacher = plan("student-70b", "distill", "bf16", pool=H200)
    assert bf16_teacher.gpus > alone.gpus
    assert alone.gpus <= p.gpus <= bf16_teacher.gpus


def test_distillation_refuses_mismatched_vocabularies() -> None:
    with pytest.raises(PlanError, match="share a vocabulary"):
        plan("student-tiny", "distill", teacher="axk1")
    assert plan("student-tiny", "distill", teacher="axk1-tiny").gpus == 1


def test_tiny_presets_fit_one_gpu() -> None:
    for kind in ("finetune", "lora", "inference", "pretrain"):
        p = plan("axk1-tiny", kind)
        assert (p.gpus, p.nodes) == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"kind": "train"}, "invalid_plan_request"),
        ({"kind": "inference", "precision": "fp4"}, "invalid_plan_request"),
        ({"kind": "inference", "seq_len": 200_000}, "invalid_plan_request"),
        ({"kind": "inference", "micro_batch": 0}, "invalid_plan_request"),
        ({"kind": "inference", "teacher": "axk1"}, "invalid_plan_request"),
    ],
)
def test_bad_requests_raise_plan_error(kwargs: dict, code: str) -> None:
    with pytest.raises(PlanError) as err:
        plan("axk1", **kwargs)
    assert err.value.code == code


def test_unknown_model_and_impossible_fit_have_their_own_codes() -> None:
    with pytest.raises(PlanError) as err:
        plan("no-such-model", "inference")
    assert err.value.code == "unknown_model"
    with pytest.raises(PlanError) as err:
        plan("axk1", "finetune", pool=PoolSpec(gpu_memory_gib=16, gpus_per_node=8, max_nodes=4))
    assert err.value.code == "does_not_fit"
    with pytest.raises(PlanError):
        PoolSpec(gpu_memory_gib=0)


def test_fits_and_shortfall_for_submission_checks() -> None:
    p = plan("axk1", "inference", "bf16", pool=H200)
    assert fits(p, gpus=p.gpus, nodes=p.nodes)
    assert fits(p, gpus=p.gpus + 8)
    assert not fits(p, gpus=8, nodes=1)
    assert "needs at least 16 GPUs" in (shortfall(p, gpus=8) or "")
    assert not fits(p, gpus=16, nodes=3)


def test_plan_accepts_a_config_object_and_serialises() -> None:
    config = resolve_model("axk1-mini").config
    p = plan(config, "finetune")
    body = p.to_dict()
    assert (
        body["gpus"] == 1
        and body["memory_per_gpu_gib"]["total"] <= body["usable_memory_per_gpu_gib"]
    )
    assert body["total_params"] == model_stats(config).total_params


def _check_plan_is_within_budget(p: Plan) -> None:
    assert p.memory_per_gpu.total <= p.usable_memory_per_gpu_gib
    assert p.gpus == p.nodes * p.gpus_per_node
    if p.nodes > 1:
        assert p.gpus_per_node == p.pool.gpus_per_node  # multi-node jobs take whole nodes


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["finetune", "lora", "inference", "pretrain"]),
    precision=st.sampled_from(["bf16", "fp8"]),
    memory=st.floats(min_value=40, max_value=200),
    seq_len=st.sampled_from([1024, 4096, 16384]),
)
def test_more_gpu_memory_never_needs_more_gpus(
    kind: str, precision: str, memory: float, seq_len: int
) -> None:
    try:
        small = plan("axk1", kind, precision, seq_len, pool=PoolSpec(memory, 8))
    except PlanError as exc:
        # Per-GPU activations do not shrink with more data-parallel GPUs: long sequences can
        # exceed a small GPU whatever the count. That must be reported, never a bogus plan.
        assert exc.code == "does_not_fit"
        return
    large = plan("axk1", kind, precision, seq_len, pool=PoolSpec(memory * 1.5, 8))
    _check_plan_is_within_budget(small)
    _check_plan_is_within_budget(large)
    assert large.gpus <= small.gpus


def test_plan_from_a_request_body() -> None:
    from workers.planner import plan_from_request

    body = {"model": "axk1", "kind": "inference", "precision": "fp8", "gpu_memory_gib": 80}
    p = plan_from_request(body)
    assert p.pool.gpu_memory_gib == 80 and p.to_dict()["gpus"] == 8
    assert plan_from_request({"model": "axk1", "kind": "lora"}, POOLS["h100"]).pool == H100
    for bad in (
        {"model": "axk1"},
        {"model": "axk1", "kind": "lora", "gpus": 8},
        {"model": "axk1", "kind": "lora", "seq_len": "4096"},
        {"model": "axk1", "kind": "lora", "micro_batch": True},
        [],
    ):
        with pytest.raises(PlanError):
            plan_from_request(bad)  # type: ignore[arg-type]
