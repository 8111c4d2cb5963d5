"""The scheduler's lease holder name survives a restart, never shared by two live processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.scheduler import holder


@pytest.fixture(autouse=True)
def _unlock() -> Iterator[None]:
    yield
    holder.release_all()


def test_the_name_is_kept_and_locked_while_its_process_lives(tmp_path: Path) -> None:
    first = holder.claim(tmp_path)
    assert (tmp_path / holder.FILE).read_text() == first
    # A second scheduler on the same home while the first lives: a name of its own.
    second = holder.claim(tmp_path)
    assert second != first and (tmp_path / holder.FILE).read_text() == first
    # Another process sees the lock too.
    code = "import sys; from pathlib import Path; from controlplane.scheduler import holder; "
    code += "print(holder.claim(Path(sys.argv[1])))"
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other not in ("", first)
    # The first process ends (its lock with it): the restarted one is the same holder.
    holder.release_all()
    again = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert again == first


def test_a_garbled_file_or_an_unwritable_home_gets_a_fresh_name(tmp_path: Path) -> None:
    (tmp_path / holder.FILE).write_bytes(b"\x00\x01 not a name \n" * 20)
    name = holder.claim(tmp_path)
    assert name.isprintable() and (tmp_path / holder.FILE).read_text() == name
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    assert holder.claim(blocked / "home")  # a name, unsaved, instead of a crash
