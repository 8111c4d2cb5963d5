"""Validation split, chat data, activation checkpointing, adapter-only LoRA checkpoints,
graceful stops of lora / distill, student-vs-teacher metrics and inference metrics, end to
end on tiny presets, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.checkpoint import latest_tag
from workers.presets import load_model, resolve_model
from workers.provenance import describe_files
from workers.runtime import run_job
from workers.tokenizer import ByteTokenizer

SYSTEM = "너는 친절한 비서다."


def _stop_after(n: int):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> Path:
    """Multi-turn Korean / English chat records, half of them with their own system turn."""
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    records = []
    for i in range(40):
        messages = [
            {"role": "user", "content": f"안녕하세요 {i}번"},
            {"role": "assistant", "content": f"반갑습니다 {i}번 손님"},
            {"role": "user", "content": "the cat sat"},
            {"role": "assistant", "content": "on a mat"},
        ]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "short answers"})
        records.append({"messages": messages})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _events(read_events, spec, **match):
    return [e for e in read_events(spec.output_dir) if all(e.get(k) == v for k, v in match.items())]


@pytest.mark.timeout(600)
def test_chat_finetune_with_a_validation_split_and_activation_checkpointing(
    make_spec, chat_data, read_events, tmp_path
) -> None:
    common = {
        "micro_batch": 2,
        "steps": 4,
        "lr": 1e-2,
        "engine": "torch",
        "eval_fraction": 0.2,
        "eval_every": 2,
        "system_prompt": SYSTEM,
    }
    spec = make_spec(
        "finetune",
        chat_data,
        output_dir=str(tmp_path / "ac"),
        activation_checkpointing=True,
        checkpoint_every=1,
        keep_checkpoints=2,
        **common,
    )
    result = run_job(spec)
    assert result.status == "succeeded", result.error
    engine = _events(read_events, spec, type="engine")[0]
    assert engine["activation_checkpointing"] is True

    evals = [e for e in _events(read_events, spec, type="metrics") if "eval_loss" in e]
    assert [e["step"] for e in evals] == [2, 4]  # every eval_every steps, the end included
    for e in evals:
        assert e["eval_perplexity"] == pytest.approx(torch.tensor(e["eval_loss"]).exp().item())
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert result.metrics["eval_loss"] == evals[-1]["eval_loss"]

    # Only the newest two checkpoints are kept; `latest` names the newest.
    kept = sorted(p.name for p in spec.checkpoint_path.glob("step-*"))
    assert kept == ["step-3", "step-4"] and latest_tag(spec.checkpoint_path) == "step-4"

    # The manifest says which directory is the artifact and lists only its files.
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["artifact"] == "model"
    assert {a["path"].split("/")[0] for a in manifest["artifacts"]} == {"model"}
    assert manifest["final_metrics"]["eval_perplexity"] == evals[-1]["eval_perplexity"]

    # Recomputing activations changes memory, not the numbers.
    plain = make_spec(
        "finetune",
        chat_data,
        output_dir=str(tmp_path / "plain"),
        activation_checkpointing=False,
        **common,
    )
    baseline = run_job(plain)
    assert baseline.status == "succeeded", baseline.error
    assert _events(read_events, plain, type="engine")[0]["activation_checkpointing"] is False
    assert baseline.losses == pytest.approx(result.losses, rel=1e-4)


def _checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("engine", "zero_stage"), [("deepspeed", 2), ("deepspeed", 3), ("torch", None)]
)
def test_lora_checkpoints_hold_the_adapter_only_and_resume_exactly(
    make_spec, corpus, tmp_path, engine, zero_stage
) -> None:
    common = {
        "steps": 4,
        "micro_batch": 2,
        "lr": 1e-2,
        "engine": engine,
        "zero_stage": zero_stage,
        "warmup_steps": 1,
        "lora": {"rank": 2, "alpha": 4},
    }
    full = run_job(make_spec("lora", corpus, output_dir=str(tmp_path / "full"), **common))
    assert full.status == "succeeded", full.error

    spec = make_spec("lora", corpus, output_dir=str(tmp_path / "split"), **common)
    first = run_job(spec, should_stop=_stop_after(2))
    assert first.status == "preempted" and first.step == 2
    assert latest_tag(spec.checkpoint_path) == "step-2"
    assert not (Path(spec.output_dir) / "adapter").exists()

    # The checkpoint holds the adapter (and its optimizer state), not the frozen base.
    tag = spec.checkpoint_path / "step-2"
    base = load_model(resolve_model("axk1-tiny"))
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    assert _checkpoint_bytes(tag) < base_bytes / 2, (_checkpoint_bytes(tag), base_bytes)
    if engine == "torch":
        saved = torch.load(tag / "state.pt", weights_only=False)["model"]
    else:
        (states,) = tag.glob("*mp_rank_00_model_states.pt")
        saved = torch.load(states, weights_only=False)["module"]
    base_names = {f"base_model.model.{n}" for n, _ in base.named_parameters()}
    assert saved and not base_names & set(saved)
    assert all("lora_" in name for name in saved if name.endswith("weight"))

    second = run_job(spec)
    assert second.status == "succeeded", second.error
    # Base from its weights (here: the seed), adapter + optimizer + schedule + data position +
    # RNG from the checkpoint: exactly the uninterrupted run's losses.
    assert first.losses + second.losses == full.losses, (first.losses, second.losses, full.losses)

    # The exported adapter is the adapter alone, naming its base by name.
    adapter = Path(spec.output_dir) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "axk1-tiny"
    manifest = json.loads(Path(second.manifest).read_text())
    assert manifest["artifact"] == "adapter"
    weights = sum(f["bytes"] for f in describe_files(adapter) if f["path"].endswith("safetensors"))
    assert weights < base_bytes / 4


@pytest.mark.timeout(600)
def test_a_lora_job_goes_on_training_an_earlier_adapter(make_spec, corpus, tmp_path) -> None:
    common = {"steps": 6, "micro_batch": 2, "lr": 2e-2, "engine": "torch", "seed": 3}
    earlier = make_spec("lora", corpus, output_dir=str(tmp_path / "a"), **common)
    first = run_job(earlier)
    assert first.status == "succeeded", first.error
    adapter = Path(earlier.output_dir) / "adapter"
    later = make_spec(
        "lora",
        corpus,
        output_dir=str(tmp_path / "b"),
        model={"name": "axk1-tiny", "adapter_dir": str(adapter)},
        **{**common, "steps": 2},
    )
    second = run_job(later)
    assert second.status == "succeeded", second.error
    # It starts where the earlier job ended, far below a fresh adapter's first loss.
    assert second.losses[0] < first.losses[0] - 0.3, (first.losses, second.losses)
    manifest = json.loads(Path(second.manifest).read_text())
    assert manifest["base_model"]["adapter"]["adapter_dir"] == str(adapter)


@pytest.mark.timeout(600)
def test_distill_stops_with_a_checkpoint_and_compares_student_and_teacher(
    make_spec, chat_data, read_events
) -> None:
    spec = make_spec(
        "distill",
        chat_data,
        model={"name": "student-tiny"},
        teacher={"name": "axk1-tiny"},
        steps=4,
        micro_batch=2,
        eval_fraction=0.25,
        distill={"temperature": 2.0, "hard_label_weight": 0.5},
    )
    stopped = run_job(spec, should_stop=_stop_after(2))
    assert stopped.status == "preempted" and stopped.step == 2
    assert latest_tag(spec.checkpoint_path) == "step-2"
    assert not (Path(spec.output_dir) / "student").exists()

    done = run_job(spec)
    assert done.status == "succeeded", done.error
    metrics = _events(read_events, spec, type="metrics")
    evals = [m for m in metrics if "eval_loss" in m]
    assert [e["step"] for e in evals] == [4]
    compared = metrics[-1]
    assert compared["step"] == 4
    assert 0.0 <= compared["top1_agreement"] <= 1.0
    # The student's eval loss is the same number as the held-out evaluation's.
    assert compared["student_eval_loss"] == pytest.approx(evals[0]["eval_loss"], rel=1e-5)
    assert compared["teacher_eval_loss"] > 0
    final = json.loads(Path(done.manifest).read_text())["final_metrics"]
    assert final["top1_agreement"] == compared["top1_agreement"]
    assert final["eval_loss"] == evals[0]["eval_loss"]


@pytest.mark.timeout(600)
def test_inference_applies_the_system_prompt_and_an_adapter(
    make_spec, tmp_path, read_events
) -> None:
    from peft import LoraConfig, get_peft_model

    # An adapter of another job: random (non-zero) LoRA factors, saved naming its base.
    base = load_model(resolve_model("axk1-tiny"))
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=64, target_modules=["o_proj"], init_lora_weights=False)
    )
    peft_model.peft_config["default"].base_model_name_or_path = "axk1-tiny"
    adapter = tmp_path / "job-1" / "adapter"
    peft_model.save_pretrained(str(adapter), save_embedding_layers=False)

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "prompt": p} for i, p in enumerate(["안녕", "the cat", "a dog"])]
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def infer(name: str, **model):
        spec = make_spec(
            "inference",
            prompts,
            output_dir=str(tmp_path / name),
            model={"name": "axk1-tiny", **model},
            system_prompt=SYSTEM,
            inference={"max_new_tokens": 6, "batch_size": 2},
        )
        result = run_job(spec)
        assert result.status == "succeeded", result.error
        out = (Path(spec.output_dir) / "outputs.jsonl").read_text().splitlines()
        return spec, result, [json.loads(line) for line in out]

    spec, result, plain = infer("plain")
    tok = ByteTokenizer()
    assert plain[0]["prompt_tokens"] == len(tok.chat_prompt("안녕", False, system=SYSTEM))
    metrics = _events(read_events, spec, type="metrics")
    assert len(metrics) == 1
    final = metrics[0]
    assert final["step"] == final["requests"] == 3
    assert final["completion_tokens"] == sum(r["completion_tokens"] for r in plain)
    assert final["tokens_per_s"] > 0
    assert json.loads(Path(result.manifest).read_text())["artifact"] == "outputs.jsonl"

    spec, result, adapted = infer("adapted", adapter_dir=str(adapter))
    assert [r["output"] for r in adapted] != [r["output"] for r in plain]
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["base_model"]["adapter"]["adapter_dir"] == str(adapter)


_EVAL_RANK = """
import json, os, sys
import torch.distributed as dist
from types import SimpleNamespace
import torch
from workers.data import build_examples
from workers.presets import load_model, resolve_model
from workers.spec import JobSpec
from workers.tokenizer import ByteTokenizer
from workers.training import evaluate

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if world > 1:
    dist.init_process_group("gloo", rank=rank, world_size=world)
spec = JobSpec.from_dict(json.loads(sys.argv[1]))
records = [{"prompt": f"question {i}", "completion": f"answer {i}" * (i % 4 + 1)} for i in range(5)]
examples = build_examples(records, ByteTokenizer(), spec.seq_len)
model = load_model(resolve_model("axk1-tiny"), seed=2)
engine = SimpleNamespace(module=model, forward=lambda **b: model(**b))
ctx = SimpleNamespace(spec=spec, rank=rank, world_size=world, device=torch.device("cpu"))
print(json.dumps(evaluate(ctx, engine, examples)), flush=True)
if world > 1:
    # Leave together: a rank that exits while its peer still talks to it can abort in gloo's
    # teardown (a non-zero exit after a correct answer, seen on a loaded machine).
    dist.barrier()
    dist.destroy_process_group()
"""


@pytest.mark.timeout(600)
def test_evaluation_over_ranks_equals_one_rank(make_spec, corpus, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from workers.runtime import free_port

    spec = make_spec("finetune", corpus, micro_batch=2, seq_len=32)
    script = tmp_path / "eval_rank.py"
    script.write_text(_EVAL_RANK)
    repo = Path(__file__).resolve().parents[3]

    def launch(world: int) -> list[subprocess.Popen]:
        port = str(free_port())
        return [
            subprocess.Popen(
                [sys.executable, str(script), json.dumps(spec.to_dict())],
                cwd=repo,
                env={
                    **os.environ,
                    "PYTHONPATH": str(repo),
                    "RANK": str(rank),
                    "WORLD_SIZE": str(world),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port,
                },
                stdout=subprocess.PIPE,
                stderr=(tmp_path / f"stderr-{world}-{rank}").open("w"),
            )
            for rank in range(world)
        ]

    # 5 examples over 2 ranks x 2: the last global batch leaves rank 1 with nothing to do.
    procs = launch(1) + launch(2)
    # stderr goes to files: a pipe nobody reads yet could fill up and stall a rank.
    done = [p.communicate(timeout=480)[0] for p in procs]
    for p, name in zip(procs, ["1-0", "2-0", "2-1"], strict=True):
        assert p.returncode == 0, (tmp_path / f"stderr-{name}").read_text()[-2000:]
    outs = [json.loads(out.decode().splitlines()[-1]) for out in done]
    single, *ranks = outs
    assert ranks[0] == ranks[1]  # every rank reports the reduced result
    assert ranks[0]["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-6)
    assert ranks[0]["eval_perplexity"] == pytest.approx(single["eval_perplexity"], rel=1e-6)
