"""What a member may declare is what runs: config knobs only, registered data only, data
registered where members may keep it, weights that exist, and the resolved plan."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from controlplane import execution
from controlplane.db.models import Dataset, Job
from controlplane.settings import Settings
from tests.conftest import KEY_DIR, World, bearer, ok

DATA = Settings(home=KEY_DIR).resolved_data_dir


def post_job(w: World, token: str | None = None, **body: Any) -> Any:
    job = {"kind": "lora", "model": "axk1-tiny", "gpus": 1, "inputs": ["alpha-corpus"], **body}
    return w.client.post("/v1/jobs", headers=bearer(token or w.a.user_token), json=job)


def register(w: World, name: str, uri: str, token: str | None = None) -> Any:
    return w.client.post(
        "/v1/datasets",
        headers=bearer(token or w.a.user_token),
        json={
            "name": name,
            "uri": uri,
            "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
        },
    )


def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code, body
    return body


@pytest.fixture
def alpha_data(tmp_path: Path) -> Path:
    """Member alpha's data directory (under NURI_DATA_DIR), emptied for each test."""
    own = DATA / "alpha"
    own.mkdir(parents=True, exist_ok=True)
    for child in own.iterdir():
        if child.is_file() or child.is_symlink():
            child.unlink()
    return own


def test_config_holds_knobs_of_its_kind_only(world: World) -> None:
    body = error(
        post_job(world, config={"spec": {"data": {"path": "/etc"}}}), 422, "invalid_config"
    )
    assert body["details"]["unknown"] == ["spec"] and "lora_rank" in body["details"]["allowed"]
    for config in (
        {"payload": "workers"},
        {"output_dir": "/tmp/x"},
        {"lora_rank": "8; rm -rf /"},
        {"lr": "NaN"},
        {"steps": 10**12},
    ):
        error(post_job(world, config=config), 422, "invalid_config")
    ok(post_job(world, config={"lora_rank": 4, "steps": 5, "lora_targets": ["q_a_proj"]}), 201)


def test_the_openapi_publishes_each_kinds_config(world: World) -> None:
    spec = world.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("FinetuneConfig", "LoraConfig", "DistillConfig", "InferenceConfig"):
        assert schemas[name]["additionalProperties"] is False
    assert "temperature" in schemas["DistillConfig"]["properties"]
    refs = {r["$ref"] for r in schemas["JobCreate"]["properties"]["config"]["anyOf"]}
    assert "#/components/schemas/LoraConfig" in refs


def test_real_jobs_read_registered_data_and_real_weights(world: World) -> None:
    error(post_job(world, inputs=[]), 422, "inputs_required")
    body = error(post_job(world, model="axk1", gpus=16), 422, "weights_unavailable")
    assert "axk1-tiny" in body["details"]["presets"]
    error(post_job(world, teacher="axk1-tiny"), 422, "invalid_teacher")
    # A distillation's teacher defaults to A.X K1, which has no weights here.
    error(post_job(world, kind="distill", model="student-tiny"), 422, "weights_unavailable")
    job = ok(post_job(world, kind="distill", model="student-tiny", teacher="axk1-tiny"), 201)
    assert job["teacher"] == "axk1-tiny"
    # The synthetic test payload reads nothing and needs no weights: explicit, and allowed.
    ok(post_job(world, inputs=[], config={"payload": "synthetic", "steps": 3}), 201)


def test_a_deployment_can_refuse_the_synthetic_payload(engine: Any) -> None:
    from fastapi.testclient import TestClient

    from controlplane.api.app import create_app
    from tests.conftest import ADMIN_TOKEN, build_world

    settings = Settings(
        bootstrap_admin_token=ADMIN_TOKEN,
        home=KEY_DIR,
        audit_key_path=KEY_DIR / "audit-signing-key.pem",
        allow_synthetic_payload=False,
    )
    w = build_world(TestClient(create_app(settings, engine), raise_server_exceptions=False))
    error(post_job(w, config={"payload": "synthetic"}), 422, "synthetic_disabled")


def test_file_datasets_are_fingerprinted_at_registration(world: World, alpha_data: Path) -> None:
    data = alpha_data / "ko-chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "안녕"}]}\n', encoding="utf-8")
    ds = ok(register(world, "ko-chat", data.as_uri()), 201)
    assert ds["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert ds["size_bytes"] == data.stat().st_size
    # A new URI is new data: fingerprinted again.
    other = alpha_data / "more.jsonl"
    other.write_text('{"text": "more"}\n')
    changed = ok(
        world.client.patch(
            f"/v1/datasets/{ds['id']}",
            headers=bearer(world.a.user_token),
            json={"uri": other.as_uri()},
        )
    )
    assert changed["sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    # s3:// is pinned by the first job that reads it.
    assert ok(register(world, "remote", "s3://alpha/data/"), 201)["sha256"] is None


def test_datasets_cannot_point_where_members_must_not_read(
    world: World, alpha_data: Path, tmp_path: Path
) -> None:
    beta = DATA / "beta"
    beta.mkdir(parents=True, exist_ok=True)
    (beta / "secret.jsonl").write_text('{"text": "beta only"}\n')
    (alpha_data / "link.jsonl").symlink_to(beta / "secret.jsonl")
    (alpha_data / "db-link").symlink_to(KEY_DIR)
    forbidden = [
        "file:///etc/passwd",
        (beta / "secret.jsonl").as_uri(),  # another member's data
        (alpha_data / "link.jsonl").as_uri(),  # a link out of alpha's directory
        (alpha_data / "db-link" / "audit-signing-key.pem").as_uri(),
        f"file://{alpha_data}/../beta/secret.jsonl",
        (KEY_DIR / "audit-signing-key.pem").as_uri(),  # the state: the signing key
        (tmp_path / "nuri.db").as_uri(),
        (Settings(home=KEY_DIR).resolved_jobs_dir / "mem_x" / "job_y").as_uri(),
    ]
    before = _datasets(world)
    for uri in forbidden:
        body = error(register(world, "sneaky", uri), 422, "uri_not_allowed")
        assert "sneaky" not in str(body["details"].get("data_dir", ""))
    for uri in ("file://relative/x", "ftp://host/x", "/etc/passwd", "file:///"):
        assert register(world, "odd", uri).status_code == 422
    assert _datasets(world) == before
    # A directory holding a link is refused when it is read.
    tree = alpha_data / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "a.jsonl").write_text('{"text": "a"}\n')
    if not (tree / "b.jsonl").is_symlink():
        os.symlink("/etc/passwd", tree / "b.jsonl")
    error(register(world, "tree", tree.as_uri()), 422, "dataset_unreadable")


def _datasets(w: World) -> int:
    with Session(w.client.app.state.engine) as s:  # type: ignore[attr-defined]
        return len(s.exec(select(Dataset)).all())


def test_admission_resolves_the_plan_from_registered_things(
    world: World, alpha_data: Path, tmp_path: Path
) -> None:
    data = alpha_data / "text.jsonl"
    data.write_text('{"text": "정보 보호"}\n', encoding="utf-8")
    ds = ok(register(world, "text", data.as_uri()), 201)
    job = ok(
        post_job(
            world, kind="finetune", inputs=[ds["id"]], gpus=2, config={"steps": 4, "seq_len": 32}
        ),
        201,
    )
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        row = s.get(Job, job["id"])
        assert row is not None
        plan = execution.resolve(s, row, "kr-test-h200", tmp_path / "jobs")
    assert plan.dirs.root == str(tmp_path / "jobs" / world.a.member["id"] / job["id"])
    (staged,) = plan.inputs
    assert (staged.id, staged.uri, staged.sha256) == (ds["id"], data.as_uri(), ds["sha256"])
    assert staged.labels["allowed_regions"] == ["kr-seoul"]
    assert plan.model is not None and plan.model.preset == "axk1-tiny"
    assert plan.capacity.ranks == 2 and plan.capacity.ranks_per_node == 2
    assert plan.capacity.seq_len == 32 and plan.capacity.zero_stage in (0, 1, 2, 3)
    assert plan.knobs == {"steps": 4, "seq_len": 32}


def test_an_artifact_with_links_out_of_the_job_is_never_fingerprinted(
    world: World, alpha_data: Path, tmp_path: Path
) -> None:
    """A job that plants links in its output gets no fingerprint for it, so no later job can
    ever stage it as a model, and the download refuses it."""
    from controlplane.services import artifacts

    data = alpha_data / "plain.jsonl"
    data.write_text('{"text": "x"}\n')
    ds = ok(register(world, "plain", data.as_uri()), 201)
    job = ok(post_job(world, kind="finetune", inputs=[ds["id"]]), 201)
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as s:
        row = s.get(Job, job["id"])
        assert row is not None
        plan = execution.resolve(s, row, "kr-test-h200", tmp_path / "jobs")
        row.execution_plan = plan.to_dict()
    model = Path(plan.dirs.output) / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    clean = artifacts.output_of(row, [])
    assert clean is not None and clean.sha256 and clean.size_bytes == 2
    (model / "key.pem").symlink_to(KEY_DIR / "audit-signing-key.pem")
    linked = artifacts.output_of(row, [])
    assert linked is not None and linked.sha256 is None
    (model / "key.pem").unlink()
    model.rename(tmp_path / "elsewhere")
    model.symlink_to(tmp_path / "elsewhere")
    moved = artifacts.output_of(row, [])
    assert moved is not None and moved.sha256 is None


def test_the_plan_is_stored_at_admission_and_shown_without_server_paths(
    world: World, alpha_data: Path, tmp_path: Path
) -> None:
    """The scheduler's admission step stores the plan with the job (on either database); the
    API shows it with the job's directories relative to the job's own directory."""
    from datetime import UTC, datetime

    from controlplane.jobstate import JobStatus, transition
    from controlplane.scheduler import RayExecutor, SchedulerConfig, SchedulerService, lease
    from controlplane.scheduler.service import CycleReport

    data = alpha_data / "shown.jsonl"
    data.write_text('{"text": "보이는 계획"}\n', encoding="utf-8")
    ds = ok(register(world, "shown", data.as_uri()), 201)
    job = ok(post_job(world, inputs=[ds["id"]], config={"lora_rank": 4}), 201)
    assert job["execution_plan"] is None  # resolved at admission, not at submission
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    service = SchedulerService(
        engine, RayExecutor(), SchedulerConfig(jobs_root=tmp_path / "jobs", holder="t")
    )
    now = datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as s:
        service.token = lease.acquire(s, "t", now, 60)
        transition(
            s,
            job["id"],
            expected=JobStatus.QUEUED,
            to=JobStatus.ADMITTED,
            now=now,
            pool="kr-test-h200",
            assignment=[["kr-test-h200-000", 1]],
        )
        s.commit()
        row = s.get(Job, job["id"])
    assert row is not None
    stored = service._plan(row, CycleReport(leader=True))
    assert stored is not None and stored["dirs"]["root"].startswith(str(tmp_path))
    shown = ok(world.client.get(f"/v1/jobs/{job['id']}", headers=bearer(world.a.user_token)))
    plan = shown["execution_plan"]
    assert plan["dirs"] == {
        "root": ".",
        "inputs": "inputs",
        "checkpoints": "checkpoints",
        "output": "output",
        "scratch": "scratch",
    }
    assert str(tmp_path) not in str(shown)
    assert plan["inputs"][0]["sha256"] == ds["sha256"] and plan["knobs"] == {"lora_rank": 4}
    assert plan["capacity"]["ranks"] == 1 and plan["model"]["preset"] == "axk1-tiny"


def test_registered_weights_are_sized_from_their_configuration(
    world: World, alpha_data: Path
) -> None:
    """A.X K1's real weights, registered as a model: the planner sizes jobs on them from the
    config.json read at registration, as it sizes the preset (a LoRA needs 16 H200s)."""
    from transformers import AXK1Config

    weights = alpha_data / "axk1-weights"
    weights.mkdir(exist_ok=True)
    (weights / "config.json").write_text(AXK1Config().to_json_string())
    (weights / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 64)  # a stand-in
    body = {
        "name": "axk1-weights",
        "kind": "model",
        "uri": weights.as_uri(),
        "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
    }
    model = ok(
        world.client.post("/v1/datasets", headers=bearer(world.a.user_token), json=body), 201
    )
    assert model["provenance"]["config"]["model_type"] == "axk1"
    short = error(post_job(world, model="axk1-weights", gpus=8), 422, "insufficient_gpus")
    assert "16 GPUs" in short["message"] and "{" not in short["message"]
    ok(post_job(world, model="axk1-weights", gpus=16), 201)
    # A directory without a configuration is no model.
    empty = alpha_data / "not-a-model"
    empty.mkdir(exist_ok=True)
    (empty / "weights.bin").write_bytes(b"\0")
    body = {**body, "name": "nothing", "uri": empty.as_uri()}
    resp = world.client.post("/v1/datasets", headers=bearer(world.a.user_token), json=body)
    error(resp, 422, "not_a_model")
