"""Two ranks of a DeepSpeed job in Ray actors, placed in a placement group's bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # address="local": a private instance, never a Ray another test or `nuri up` left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(600)
def test_two_rank_deepspeed_finetune_in_ray_actors(
    local_ray, make_spec, corpus, read_events
) -> None:
    from ray.util.placement_group import placement_group, remove_placement_group

    from workers.distributed import run_on_ray

    spec = make_spec("finetune", corpus, steps=8, checkpoint_every=4, zero_stage=2)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    local_ray.get(pg.ready(), timeout=300)
    try:
        results = run_on_ray(spec, world_size=2, placement_group=pg, timeout_s=480)
    finally:
        remove_placement_group(pg)

    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]
    # Losses are all-reduced, so both ranks report the same curve, and it falls.
    assert results[0].losses == results[1].losses
    losses = results[0].losses
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses

    events = read_events(spec.output_dir)  # rank 0 alone reports
    running = [e for e in events if e["type"] == "status" and e["status"] == "running"]
    assert len(running) == 1 and running[0]["world_size"] == 2
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == spec.steps
    # Two ranks x micro-batch 4 x 64 tokens per step.
    first = metrics[0]
    assert first["tokens_per_s"] * first["step_time_s"] == pytest.approx(2 * 4 * 64)

    # Both ranks wrote their data position and RNG into the shared checkpoints.
    tag = spec.checkpoint_path / "step-4"
    assert {p.name for p in tag.glob("client_state.rank*.pt")} == {
        "client_state.rank0.pt",
        "client_state.rank1.pt",
    }
    assert (Path(spec.output_dir) / "model" / "model.safetensors").exists()
    assert json.loads(Path(results[0].manifest).read_text())["job_id"] == spec.job_id


@pytest.mark.timeout(600)
def test_two_rank_zero3_partitions_and_exports_a_complete_model(
    local_ray, make_spec, corpus, read_events
) -> None:
    from workers.distributed import run_on_ray
    from workers.presets import load_model, resolve_model

    spec = make_spec("finetune", corpus, steps=6, zero_stage=3)
    results = run_on_ray(spec, world_size=2, timeout_s=480)
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]
    losses = results[0].losses
    assert losses[-1] < losses[0] - 0.3, losses
    engine = next(e for e in read_events(spec.output_dir) if e["type"] == "engine")
    assert engine["zero_stage"] == 3
    # Export gathers every rank's partition into one complete set of weights.
    exported = load_model(resolve_model(str(Path(spec.output_dir) / "model")))
    fresh = load_model(resolve_model("axk1-tiny"))
    assert {k: v.shape for k, v in exported.state_dict().items()} == {
        k: v.shape for k, v in fresh.state_dict().items()
    }


@pytest.mark.timeout(600)
def test_entry_point_runs_two_inference_ranks_on_ray(local_ray, make_spec, tmp_path) -> None:
    from workers.run import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n" for i in range(5)))
    spec = make_spec("inference", prompts, inference={"max_new_tokens": 4, "batch_size": 2})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    assert main(["--spec", str(spec_file), "--ray-world-size", "2"]) == 0
    rows = [
        json.loads(x) for x in (Path(spec.output_dir) / "outputs.jsonl").read_text().splitlines()
    ]
    # Rank 0 took prompts 0, 2, 4 and rank 1 took 1, 3; the merged file is in input order.
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["completion_tokens"] <= 4 for r in rows)
