"""Distillation and batch inference end to end on tiny presets, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.distill import kd_kl, shifted_targets
from workers.presets import load_model, resolve_model
from workers.runtime import run_job
from workers.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus) -> Path:
    """A tiny A.X K1 teacher pretrained on the corpus, so it has something to teach."""
    from workers.spec import JobSpec

    out = tmp_path_factory.mktemp("teacher")
    spec = JobSpec.from_dict(
        {
            "job_id": "teacher",
            "kind": "pretrain",
            "output_dir": str(out),
            "model": {"name": "axk1-tiny"},
            "data": {"path": str(corpus)},
            "seq_len": 64,
            "micro_batch": 8,
            "steps": 40,
            "lr": 5e-3,
            "engine": "torch",
        }
    )
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    return out / "model"


def _kl_to_teacher(student, teacher, text: str) -> float:
    ids = torch.tensor([ByteTokenizer().encode(text)[:256]])
    with torch.no_grad():
        s, t = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    mask = shifted_targets(ids) >= 0
    return float(kd_kl(s, t, mask, temperature=1.0))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_distilled_student_moves_toward_the_teacher(
    make_spec, corpus, teacher_dir, heldout_text, read_events
) -> None:
    spec = make_spec(
        "distill",
        corpus,
        model={"name": "student-tiny"},
        teacher={"name": "axk1-tiny", "weights_dir": str(teacher_dir)},
        steps=30,
        lr=5e-3,
        distill={"temperature": 2.0, "hard_label_weight": 0.2},
    )
    teacher = load_model(resolve_model("axk1-tiny", weights_dir=teacher_dir)).eval()
    # The student the job starts from (same preset and seed rule as the job).
    before = load_model(resolve_model("student-tiny"), seed=spec.seed + 1).eval()
    kl_before = _kl_to_teacher(before, teacher, heldout_text)

    result = run_job(spec)
    assert result.status == "succeeded", result.error
    metrics = [e for e in read_events(spec.output_dir) if e["type"] == "metrics"]
    kd = [m["kd_loss"] for m in metrics if "kd_loss" in m]
    assert sum(kd[-3:]) / 3 < 0.6 * sum(kd[:3]) / 3, kd
    # After training: student vs teacher on the training data (no held-out split here).
    compared = metrics[-1]
    assert compared["step"] == spec.steps and "kd_loss" not in compared
    assert 0.0 <= compared["top1_agreement"] <= 1.0
    assert compared["student_eval_loss"] > 0 and compared["teacher_eval_loss"] > 0

    student = load_model(resolve_model(str(Path(spec.output_dir) / "student"))).eval()
    kl_after = _kl_to_teacher(student, teacher, heldout_text)
    assert kl_after < 0.6 * kl_before, (kl_before, kl_after)

    manifest = json.loads(Path(result.manifest).read_text())
    for key in ("student_eval_loss", "teacher_eval_loss", "top1_agreement"):
        assert manifest["final_metrics"][key] == compared[key]
    assert manifest["teacher"]["weights_dir"] == str(teacher_dir)
    assert manifest["teacher"]["produced_by"] == "teacher"  # lineage through the manifest


@pytest.mark.timeout(600)
def test_zero3_distillation_partitions_the_teacher_too(
    make_spec, corpus, teacher_dir, read_events
) -> None:
    spec = make_spec(
        "distill",
        corpus,
        model={"name": "student-tiny"},
        teacher={"name": "axk1-tiny", "weights_dir": str(teacher_dir)},
        steps=8,
        lr=5e-3,
        zero_stage=3,
    )
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    events = read_events(spec.output_dir)
    kd = [e["kd_loss"] for e in events if e["type"] == "metrics" and "kd_loss" in e]
    assert kd[-1] < kd[0], kd
    assert (Path(spec.output_dir) / "student" / "model.safetensors").exists()


def test_distill_refuses_a_teacher_with_another_vocabulary(make_spec, corpus) -> None:
    spec = make_spec(
        "distill", corpus, model={"name": "student-tiny"}, teacher={"name": "axk1-mini"}
    )
    spec.teacher.overrides = {"vocab_size": 300}
    result = run_job(spec)
    assert result.status == "failed" and "vocab" in (result.error or "")


@pytest.mark.timeout(600)
def test_inference_writes_one_well_formed_line_per_prompt(make_spec, tmp_path, teacher_dir) -> None:
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"id": "a", "prompt": "the cat", "think": True, "max_new_tokens": 12},
        {"id": "b", "prompt": "a dog ran", "think": False},
        {"prompt": "birds sang"},
        {"id": "d", "prompt": "the park", "max_new_tokens": 3},
        {"id": "e", "prompt": "tall trees", "think": True},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = make_spec(
        "inference",
        prompts,
        model={"name": "axk1-tiny", "weights_dir": str(teacher_dir)},
        inference={"max_new_tokens": 8, "batch_size": 2, "think": False},
    )
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    lines = (Path(spec.output_dir) / "outputs.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == ["a", "b", 2, "d", "e"]  # input order, default ids
    keys = {"id", "prompt", "think", "output", "reasoning", "prompt_tokens"}
    for row in rows:
        assert keys | {"completion_tokens", "finish_reason"} == set(row)
        assert isinstance(row["output"], str) and row["finish_reason"] in ("eos", "length")
    assert [r["think"] for r in rows] == [True, False, False, False, True]
    # Thinking mode returns the reasoning separately; non-thinking pre-fills an empty block.
    assert rows[0]["reasoning"] is not None and rows[1]["reasoning"] is None
    tok = ByteTokenizer()
    assert rows[1]["prompt_tokens"] == len(tok.chat_prompt("a dog ran", think=False))
    assert rows[0]["completion_tokens"] <= 12 and rows[3]["completion_tokens"] <= 3
    assert rows[2]["completion_tokens"] <= 8
    manifest = json.loads(Path(result.manifest).read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["outputs.jsonl"]
