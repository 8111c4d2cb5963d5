"""Reading a job's newest checkpoint without torch, as the control plane does at a requeue."""

from __future__ import annotations

import json
from pathlib import Path

from workers import checkpoint_layout, synthetic


def test_the_latest_pointer_names_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert checkpoint_layout.newest(tmp_path / "missing") is None
    for step in (2, 4, 6):
        (tmp_path / f"step-{step}").mkdir()
    assert checkpoint_layout.newest(tmp_path) is None, "no pointer: nothing complete yet"
    checkpoint_layout.mark_latest(tmp_path, "step-4")
    found = checkpoint_layout.newest(tmp_path)
    assert found is not None and found.step == 4 and found.uri == str(tmp_path / "step-4")
    # A pointer to a directory that is not there (a crash mid-prune) is no checkpoint.
    checkpoint_layout.mark_latest(tmp_path, "step-8")
    assert checkpoint_layout.newest(tmp_path) is None


def test_the_synthetic_payloads_rank_zero_file(tmp_path: Path) -> None:
    synthetic.save_step(tmp_path, 1, 9)  # another rank's file says nothing about rank 0
    assert checkpoint_layout.newest(tmp_path) is None
    synthetic.save_step(tmp_path, 0, 5)
    found = checkpoint_layout.newest(tmp_path)
    assert found is not None and (found.step, found.uri) == (5, str(tmp_path))
    (tmp_path / "rank0.json").write_text(json.dumps({"rank": 0}))  # torn or foreign: ignored
    assert checkpoint_layout.newest(tmp_path) is None
