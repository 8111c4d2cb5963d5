"""``promtool check metrics`` on an exposition: Prometheus's own linter of metric names,
types and help texts (Debian's prometheus package, installed by `make prometheus`)."""

from __future__ import annotations

import shutil
import subprocess


def assert_clean(exposition: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is not installed; run `make prometheus`"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
