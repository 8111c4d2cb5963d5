"""Checkpoint on a preemption notice, then resume with identical state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.checkpoint import latest_tag
from workers.runtime import run_job


def _stop_after(n: int):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", ["deepspeed", "torch"])
def test_resume_continues_with_the_same_next_loss(make_spec, corpus, tmp_path, engine) -> None:
    common = {"steps": 6, "engine": engine, "warmup_steps": 2, "micro_batch": 2}
    full = run_job(make_spec("finetune", corpus, output_dir=str(tmp_path / "full"), **common))
    assert full.status == "succeeded", full.error

    spec = make_spec("finetune", corpus, output_dir=str(tmp_path / "split"), **common)
    first = run_job(spec, should_stop=_stop_after(3))
    assert first.status == "preempted" and first.step == 3
    assert first.losses == full.losses[:3]
    assert latest_tag(spec.checkpoint_path) == "step-3"
    assert not (Path(spec.output_dir) / "model").exists()  # no artifact from a stopped job

    second = run_job(spec)
    assert second.status == "succeeded", second.error
    # Model, optimizer, LR schedule, data position and RNG all restored: the losses of
    # steps 4-6 are exactly those of the uninterrupted run.
    assert second.losses == full.losses[3:]


@pytest.mark.timeout(600)
def test_periodic_checkpoints_and_the_flag_file(make_spec, corpus, tmp_path, read_events) -> None:
    flag = tmp_path / "preempt"
    spec = make_spec(
        "finetune",
        corpus,
        engine="torch",
        steps=8,
        checkpoint_every=2,
        preemption_flag=str(flag),
    )
    flag.touch()
    stopped = run_job(spec)
    assert stopped.status == "preempted" and stopped.step == 1
    flag.unlink()
    done = run_job(spec)
    assert done.status == "succeeded" and len(done.losses) == 7
    checkpoints = [e["step"] for e in read_events(spec.output_dir) if e["type"] == "checkpoint"]
    assert checkpoints == [1, 2, 4, 6, 8]
    statuses = [e["status"] for e in read_events(spec.output_dir) if e["type"] == "status"]
    assert statuses == ["running", "preempted", "running", "resumed", "succeeded"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_entry_point_checkpoints_and_exits_3(make_spec, corpus, tmp_path) -> None:
    spec = make_spec("finetune", corpus, engine="torch", steps=100_000, log_every=1)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    # In-process jobs above must not have leaked their rendezvous variables.
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT"} & set(os.environ)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.run", "--spec", str(spec_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[3],
    )
    events = Path(spec.output_dir) / "events.jsonl"
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine imports torch slowly
        while time.monotonic() < deadline and proc.poll() is None:
            if events.exists() and '"metrics"' in events.read_text():
                break
            time.sleep(0.2)  # poll interval
        assert events.exists() and '"metrics"' in events.read_text(), "no step reported"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a job of 100,000 steps never outlives its test
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 3
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["status"] == "preempted"
    assert latest_tag(spec.checkpoint_path) == f"step-{result['step']}"


def test_an_invalid_spec_exits_2(tmp_path) -> None:
    from workers.run import main

    bad = tmp_path / "spec.yaml"
    bad.write_text("job_id: x\nkind: finetune\noutput_dir: /tmp/x\nbogus: 1\n")
    assert main(["--spec", str(bad)]) == 2
