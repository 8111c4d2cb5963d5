"""Real jobs on a real Ray: the control plane's execution plan is what the workers run.

A finetune on a registered file:// dataset with ``gpus: 2`` is resolved at admission into a
plan (stored with the job, shown by the API), its input is staged into the job's own
directory and verified against the SHA-256 taken at registration, it runs as two torch ranks,
and its artifact is the exported model with a label and provenance computed from what was
read. Data changed after registration fails the job at staging. A cancelled job checkpoints
before its GPUs are freed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.settings import Settings
from tests.conftest import KEY_DIR, bearer, ok
from tests.integration.scheduler.conftest import Env
from workers.confine import abi_version
from workers.staging import fingerprint

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

LINES = [
    "서울의 봄은 짧고 벚꽃은 빨리 진다.",
    "The model learns the pattern of short sentences.",
    "부산 바다는 여름에 가장 붐빈다.",
    "Data stays in the regions its owner allows.",
]


def alpha_file(name: str, records: list[dict[str, Any]]) -> Path:
    own = Settings(home=KEY_DIR).resolved_data_dir / "alpha"
    own.mkdir(parents=True, exist_ok=True)
    path = own / name
    if path.exists():
        path.chmod(0o644)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def register(env: Env, name: str, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = ok(
        env.client.post(
            "/v1/datasets",
            headers=bearer(env.alpha),
            json={
                "name": name,
                "uri": path.as_uri(),
                "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
            },
        ),
        201,
    )
    return out


def get(env: Env, path: str, **params: Any) -> Any:
    return ok(env.client.get(path, headers=bearer(env.alpha), params=params))


def log_lines(env: Env, job_id: str) -> list[str]:
    return [x["line"] for x in get(env, f"/v1/jobs/{job_id}/logs", tail=500)["items"]]


def test_a_real_finetune_runs_its_plan_as_two_ranks(env: Env) -> None:
    path = alpha_file("mixed.jsonl", [{"text": LINES[i % 4]} for i in range(120)])
    ds = register(env, "mixed", path)
    job = env.submit(
        env.alpha,
        kind="finetune",
        gpus=2,
        inputs=[ds["id"]],
        name="real-finetune",
        config={"steps": 12, "seq_len": 32, "micro_batch": 2, "checkpoint_every": 3},
    )
    try:
        done = env.until_status(job["id"], "SUCCEEDED", "FAILED", timeout=480)
    except AssertionError:
        raise AssertionError([*log_lines(env, job["id"]), str(env.job(job["id"]))]) from None
    assert done["status"] == "SUCCEEDED", log_lines(env, job["id"])[-30:]

    plan = done["execution_plan"]
    root = env.tmp / "jobs" / done["member_id"] / job["id"]
    assert plan["dirs"] == {  # shown inside the job's own directory, never the server's path
        "root": ".",
        "inputs": "inputs",
        "checkpoints": "checkpoints",
        "output": "output",
        "scratch": "scratch",
    }
    assert root.is_dir() and done["checkpoint_uri"].startswith("checkpoints/")
    # It wrote only inside its own directory, in the places the plan names.
    assert [p.name for p in (env.tmp / "jobs").iterdir()] == [done["member_id"]]
    assert [p.name for p in (env.tmp / "jobs" / done["member_id"]).iterdir()] == [job["id"]]
    assert {p.name for p in root.iterdir()} <= {"inputs", "checkpoints", "output", "scratch"}
    assert {p.name for p in (root / "output").iterdir()} <= {"model", "manifest.json"}
    assert plan["capacity"]["ranks"] == 2 and plan["payload"] == "model"
    assert [(i["id"], i["sha256"]) for i in plan["inputs"]] == [(ds["id"], ds["sha256"])]

    lines = log_lines(env, job["id"])
    assert any(line.startswith("[rank 1]") and "world_size" in line for line in lines), lines
    if abi_version() > 0:  # each rank's job thread ran confined by the kernel
        confined = [line for line in lines if "confined by Landlock" in line]
        assert {line.split("]")[0] for line in confined} == {"[rank 0", "[rank 1"}, lines
    # What was read: staged into the job's directory, verified, recorded.
    events = get(env, f"/v1/jobs/{job['id']}/events")["items"]
    staged = [e for e in events if e["type"] == "staged"]
    assert staged and staged[0]["details"]["records"][0]["sha256"] == ds["sha256"]
    copy = root / "inputs" / "data" / ds["id"] / path.name
    assert copy.read_bytes() == path.read_bytes()

    curve = [m for m in get(env, f"/v1/jobs/{job['id']}/metrics")["items"]]
    losses = [m["values"]["loss"] for m in curve if "loss" in m["values"]]
    assert len(losses) >= 10 and losses[-1] < losses[0], losses
    assert any("eval_loss" in m["values"] for m in curve)
    kept = sorted(p.name for p in (root / "checkpoints").glob("step-*"))
    assert 1 <= len(kept) <= 3, kept  # keep_checkpoints defaults to 3

    arts = get(env, "/v1/artifacts")["items"]
    art = next(a for a in arts if a["job_id"] == job["id"])
    assert art["kind"] == "model"
    model_dir = root / "output" / "model"
    assert art["sha256"] == fingerprint(model_dir.as_uri()).sha256
    assert (model_dir / "config.json").exists() and not (model_dir / "checkpoints").exists()
    assert art["labels"]["allowed_regions"] == ["kr-seoul"]
    read = art["provenance"]["read"]
    assert [(r["id"], r["sha256"]) for r in read] == [(ds["id"], ds["sha256"])]


def test_data_changed_after_registration_fails_at_staging(env: Env) -> None:
    path = alpha_file("changing.jsonl", [{"text": LINES[0]}] * 20)
    ds = register(env, "changing", path)
    path.write_text('{"text": "somebody swapped the data"}\n', encoding="utf-8")
    job = env.submit(env.alpha, kind="finetune", gpus=1, inputs=[ds["id"]], config={"steps": 2})
    done = env.until_status(job["id"], "FAILED", "SUCCEEDED")
    assert done["status"] == "FAILED"
    message = done["reasons"][0]["message"]
    assert "staging failed" in message and ("checksum" in message or "size" in message), message
    # Nothing of the swapped data reached a model: no artifact.
    arts = get(env, "/v1/artifacts")["items"]
    assert not [a for a in arts if a["job_id"] == job["id"]]


def test_a_cancelled_job_checkpoints_before_its_gpus_are_freed(env: Env) -> None:
    job = env.submit(
        env.alpha,
        gpus=8,
        config={
            "payload": "synthetic",
            "steps": 400,
            "step_seconds": 0.1,
            "checkpoint_every": 1000,
        },
    )
    env.run_until(lambda: len(get(env, f"/v1/jobs/{job['id']}/metrics")["items"]) >= 3)
    ok(env.client.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer(env.alpha), json={}))
    env.run_until(lambda: env.job(job["id"])["assignment"] == [])
    done = env.job(job["id"])
    assert done["status"] == "CANCELLED"
    assert done["checkpoint_uri"] is not None, "the stop request wrote a final checkpoint"
    events = get(env, f"/v1/jobs/{job['id']}/events")["items"]
    assert any(e["type"] == "checkpoint" for e in events)
