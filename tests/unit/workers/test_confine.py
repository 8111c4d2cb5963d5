"""A rank's thread is confined by the kernel (Landlock): it reaches its own job directory and
the software it runs, and nothing else a job must not reach, links included."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.confine import Confinement, abi_version, confine_job

needs_landlock = pytest.mark.skipif(abi_version() == 0, reason="this kernel has no Landlock")


def in_confined_thread(job: Path, attempts: dict[str, Callable[[], Any]]) -> dict[str, str]:
    """Run each attempt in a new thread confined to ``job``; what happened to each."""
    out: dict[str, str] = {}

    def run() -> None:
        out["confinement"] = confine_job(job).describe()
        for name, attempt in attempts.items():
            try:
                attempt()
                out[name] = "allowed"
            except OSError as exc:
                out[name] = type(exc).__name__

    # confine_job points temporary files at the job's scratch directory, process-wide (a
    # rank's process runs one job); put this test process back as it was.
    saved = (os.environ.get("TMPDIR"), tempfile.tempdir)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(60)
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
    return out


@needs_landlock
def test_a_rank_reaches_its_own_directory_and_nothing_a_job_must_not(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    job, other = jobs / "mem_a" / "job_1", jobs / "mem_b" / "job_2"
    state, data = tmp_path / "state", tmp_path / "data" / "beta"
    for d in (job / "inputs" / "data", other / "output", state, data):
        d.mkdir(parents=True)
    (job / "inputs" / "data" / "corpus.jsonl").write_text('{"text": "mine"}\n')
    (other / "output" / "model.safetensors").write_text("another member's model")
    (state / "nuri.db").write_text("the database")
    (state / "audit-signing-key.pem").write_text("the key")
    (data / "secret.jsonl").write_text("beta's data")
    # Links planted in the job's own directory lead nowhere.
    (job / "inputs" / "data" / "db").symlink_to(state / "nuri.db")
    (job / "inputs" / "key").symlink_to(state)
    out = in_confined_thread(
        job,
        {
            "read own input": lambda: (job / "inputs" / "data" / "corpus.jsonl").read_text(),
            "write own output": lambda: (job / "output" / "m.bin").parent.mkdir(),
            "write own checkpoint": lambda: (job / "ck.pt").write_bytes(b"ok"),
            "temporary file": lambda: __import__("tempfile").TemporaryFile().close(),
            "read another job": lambda: (other / "output" / "model.safetensors").read_text(),
            "write another job": lambda: (other / "x").write_text("x"),
            "list the jobs area": lambda: list(jobs.iterdir()),
            "read the database": lambda: (state / "nuri.db").read_text(),
            "read the key": lambda: (state / "audit-signing-key.pem").read_text(),
            "read another member's data": lambda: (data / "secret.jsonl").read_text(),
            "read a link to the database": lambda: (job / "inputs" / "data" / "db").read_text(),
            "read through a linked dir": lambda: (
                job / "inputs" / "key" / "audit-signing-key.pem"
            ).read_text(),
            "read /etc/shadow": lambda: Path("/etc/shadow").read_text(),
            "write /tmp": lambda: (tmp_path / "escape").write_text("x"),
            "import a module": lambda: __import__("csv"),
        },
    )
    assert out.pop("confinement").startswith("confined by Landlock")
    allowed = {k for k, v in out.items() if v == "allowed"}
    assert allowed == {
        "read own input",
        "write own output",
        "write own checkpoint",
        "temporary file",
        "import a module",
    }, out
    assert set(out.values()) <= {"allowed", "PermissionError"}, out
    # Only the confined thread was: this one still reads everything.
    assert (state / "nuri.db").read_text() == "the database"


def test_without_landlock_a_job_says_it_is_not_confined() -> None:
    assert not Confinement(0).enforced
    assert "not confined" in Confinement(0).describe()
