"""Job spec parsing and the report channel."""

from __future__ import annotations

import json

import httpx
import pytest

from workers.reporting import HttpReporter, JobEvents, JsonlReporter, reporter_for
from workers.spec import JobSpec, SpecError

BASE = {"job_id": "j1", "kind": "finetune", "output_dir": "/tmp/out", "data": {"path": "d.jsonl"}}


def test_round_trip_through_plain_data() -> None:
    spec = JobSpec.from_dict({**BASE, "lora": {"rank": 4}, "model": {"name": "axk1-mini"}})
    assert spec.lora.rank == 4 and spec.model.name == "axk1-mini"
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_new_fields_default_to_the_old_behaviour_and_round_trip() -> None:
    spec = JobSpec.from_dict(BASE)
    assert spec.activation_checkpointing is None and spec.keep_checkpoints == 0
    assert (spec.eval_fraction, spec.eval_every, spec.system_prompt) == (0.0, 0, None)
    assert spec.lora.targets is None and spec.model.adapter_dir is None
    full = JobSpec.from_dict(
        {
            **BASE,
            "kind": "lora",
            "activation_checkpointing": True,
            "keep_checkpoints": 3,
            "eval_fraction": 0.1,
            "eval_every": 5,
            "system_prompt": "너는 친절한 비서다.",
            "lora": {"rank": 4, "targets": ["q_a_proj", "down_proj"]},
            "model": {"name": "axk1-tiny", "adapter_dir": "/jobs/j0/output/adapter"},
        }
    )
    assert JobSpec.from_dict(json.loads(json.dumps(full.to_dict()))) == full


def test_yaml_and_json_files(tmp_path) -> None:
    (tmp_path / "s.yaml").write_text("job_id: j\nkind: inference\noutput_dir: o\ndata: {path: p}\n")
    assert JobSpec.from_file(tmp_path / "s.yaml").kind == "inference"
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    assert JobSpec.from_file(tmp_path / "s.json").job_id == "j1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "train"}, "kind"),
        ({"bogus": 1}, "unknown field"),
        ({"lora": {"rnk": 4}}, "spec.lora"),
        ({"data": None}, "data.path"),
        ({"teacher": {"name": "axk1"}}, "teacher"),
        ({"kind": "distill"}, "teacher"),
        ({"steps": 0}, "steps"),
        ({"engine": "megatron"}, "engine"),
        ({"zero_stage": 4}, "zero_stage"),
        ({"precision": "fp16"}, "precision"),
        ({"report": {"kind": "http"}}, "report.url"),
        ({"distill": {"hard_label_weight": 2}}, "hard_label_weight"),
        ({"model": "axk1"}, "spec.model"),
        ({"activation_checkpointing": "yes"}, "activation_checkpointing"),
        ({"keep_checkpoints": -1}, "keep_checkpoints"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"eval_fraction": -0.1}, "eval_fraction"),
        ({"eval_fraction": "0.1"}, "eval_fraction"),
        ({"eval_every": -2}, "eval_every"),
        ({"kind": "inference", "eval_fraction": 0.1}, "eval_fraction"),
        ({"system_prompt": 42}, "system_prompt"),
        ({"lora": {"targets": ["k_proj"]}}, "lora.targets"),
        ({"lora": {"targets": []}}, "lora.targets"),
        ({"lora": {"targets": ["o_proj", "o_proj"]}}, "lora.targets"),
        ({"model": {"name": "axk1-tiny", "adapter_dir": ""}}, "model.adapter_dir"),
        ({"model": {"name": "axk1-tiny", "adapter_dir": "s3://b/a"}}, "model.adapter_dir"),
        ({"model": {"name": "axk1-tiny", "adapter": "x"}}, "spec.model"),
    ],
)
def test_invalid_specs_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(SpecError, match=field):
        JobSpec.from_dict({**BASE, **change})


def test_jsonl_reporter_writes_one_event_per_line(tmp_path) -> None:
    events = JobEvents("j1", JsonlReporter(tmp_path / "e.jsonl"))
    events.emit("metrics", step=1, loss=2.5)
    events.emit("status", status="succeeded")
    events.reporter.close()
    lines = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["type"] for e in lines] == ["metrics", "status"]
    assert lines[0]["job_id"] == "j1" and lines[0]["loss"] == 2.5 and "ts" in lines[0]


def test_only_rank_zero_reports(tmp_path) -> None:
    spec = JobSpec.from_dict({**BASE, "output_dir": str(tmp_path)})
    reporter_for(spec, rank=1).report({"type": "x"})
    assert not (tmp_path / "events.jsonl").exists()


def _http(handler) -> HttpReporter:
    client = httpx.Client(base_url="http://cp", transport=httpx.MockTransport(handler))
    return HttpReporter("http://cp", "j1", token="tok", client=client, backoff_s=0)


def test_http_reporter_posts_to_the_job_report_route_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202 if len(seen) > 1 else 503)  # one transient failure

    reporter = _http(handler)
    reporter.report({"type": "metrics", "loss": 1.0})
    assert [r.url.path for r in seen] == ["/v1/jobs/j1/report"] * 2
    assert seen[-1].headers["authorization"] == "Bearer tok"
    assert json.loads(seen[-1].content) == {"type": "metrics", "loss": 1.0}
    assert reporter.dropped == 0


def test_http_reporter_never_raises_into_the_job() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down", request=request)

    reporter = _http(refuse)
    reporter.report({"type": "metrics"})
    assert reporter.dropped == 1
    rejected = _http(lambda request: httpx.Response(409, json={"code": "invalid_transition"}))
    rejected.report({"type": "status"})
    assert rejected.dropped == 1


def test_callback_reporter_swallows_callback_errors() -> None:
    from workers.reporting import CallbackReporter

    seen: list[dict] = []
    CallbackReporter(seen.append).report({"type": "metrics"})
    assert seen == [{"type": "metrics"}]

    def broken(event: dict) -> None:
        raise RuntimeError("buffer full")

    CallbackReporter(broken).report({"type": "metrics"})  # does not raise
