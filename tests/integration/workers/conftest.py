"""Fixtures for real torch / DeepSpeed / Ray runs of the job payloads on tiny presets."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Imported after the environment is set: DeepSpeed reads it on import.
from workers.spec import JobSpec

WORDS = [
    *("the", "cat", "sat", "on", "a", "mat", "and", "the", "dog", "ran"),
    *("to", "the", "park", "while", "birds", "sang", "in", "tall", "trees"),
]


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(16)) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small JSONL corpus of ``{"text": ...}`` records with a strong, learnable pattern."""
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in _sentences(160, 0)))
    return path


@pytest.fixture(scope="session")
def heldout_text() -> str:
    """Text from the same distribution, not in the corpus."""
    return " ".join(_sentences(8, 99))


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., JobSpec]:
    """Build a validated tiny-preset spec; keyword arguments override fields."""

    def build(kind: str, data: Path | None, **overrides: Any) -> JobSpec:
        raw: dict[str, Any] = {
            "job_id": f"test-{kind}",
            "kind": kind,
            "output_dir": str(tmp_path / "out"),
            "model": {"name": "axk1-tiny"},
            "seq_len": 64,
            "micro_batch": 4,
            "steps": 12,
            "lr": 3e-3,
            "seed": 0,
        }
        if data is not None:
            raw["data"] = {"path": str(data), "id": "ds-test"}
        raw.update(overrides)
        return JobSpec.from_dict(raw)

    return build


def _read_events(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def read_events() -> Callable[[str | Path], list[dict[str, Any]]]:
    """Reads the events a job's JSONL reporter wrote."""
    return _read_events
