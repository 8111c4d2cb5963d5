"""Run a `nuri` server command as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300.0  # generous: on a loaded machine `nuri up` starts Ray slowly


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Terminate ``proc`` and wait for it; killed when it outlives ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nuri_server(
    args: list[str], port: int, env: dict[str, str], cwd: Path, log: Path, down: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``nuri <args>`` in its own process group, wait until /healthz answers (failing
    the test with the log if it exits first), and stop the whole group afterwards.

    ``nuri up`` leaves its Ray daemon running (in a session of its own): with ``down`` the
    daemon of that NURI_HOME is stopped too (``nuri down``), so no test leaks one."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "nuri"), *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        healthy = False
        while not healthy and time.monotonic() < deadline and proc.poll() is None:
            with suppress(httpx.HTTPError):
                healthy = (
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
                )
            if not healthy:
                time.sleep(0.5)  # poll interval
        if proc.poll() is not None:
            pytest.fail(f"nuri {args[0]} exited early:\n{log.read_text()}")
        if not healthy:
            pytest.fail(f"nuri {args[0]} not healthy in {START_TIMEOUT_S:.0f}s:\n{log.read_text()}")
        yield proc
    finally:
        # The whole group; it may be gone already (exited early).
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if down and args[0] == "up":
            nuri_down(env, cwd)


def nuri_down(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``nuri down`` (stops the Ray daemon ``nuri up`` left under env's NURI_HOME)."""
    done = subprocess.run(
        [str(BIN / "nuri"), "down"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done
