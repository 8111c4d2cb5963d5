"""`nuri up` on a machine where someone else's Ray already runs: Nuri starts a Ray of its own.

Its own is a daemon of its own (recorded under NURI_HOME); `--stop-ray` stops it, and only it,
when `nuri up` exits.

Without ``NURI_RAY_ADDRESS``, ray.init with no address would join the Ray that RAY_ADDRESS or
the machine's last `ray start` names (another user's, another test run's) and die there
("num_cpus and num_gpus must not be provided"). The stranger here is both: a `ray start`
(the machine's latest cluster) whose address is also in `nuri up`'s RAY_ADDRESS.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane import ray_runtime
from tests.e2e.server import BIN, free_port, nuri_server

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]

START_TIMEOUT_S = 240.0  # generous: a loaded machine starts Ray slowly

PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": len(alive), "resources": ray.cluster_resources()}))
"""


def _env_without_ray_address() -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def strangers_ray(log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`ray start --head --block` on free ports, in a session of its own; yields its address.
    Stopped afterwards by signalling that one process group (never `ray stop`, which would
    stop every Ray on the machine)."""
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--port=0",  # Ray picks a free GCS port
        f"--ray-client-server-port={free_port()}",
        "--dashboard-agent-listen-port=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--num-cpus=1",
        "--num-gpus=0",
        "--resources=" + json.dumps({"stranger": 1}),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env_without_ray_address(),
            start_new_session=True,
        )
    address = ""
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"--address='([^']+)'", log.read_text(errors="replace"))
            if found:
                address = found.group(1)
                break
            time.sleep(0.5)  # poll interval
        if not address:
            pytest.fail(f"the stranger's `ray start` did not come up:\n{log.read_text()}")
        yield address, proc
    finally:
        _stop_group(proc)
        _forget_address(address)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of that one session is left
    proc.wait(timeout=30)


def _forget_address(address: str) -> None:
    """Remove the machine's "last `ray start`" file only while it still names the stranger."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    try:
        if address and path.read_text().strip() == address:
            path.unlink()
    except OSError:
        pass


def probe(address: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, address],
        env=_env_without_ray_address(),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_up_starts_its_own_ray_and_leaves_the_strangers_alone(tmp_path: Path) -> None:
    with strangers_ray(tmp_path / "stranger.log") as (address, stranger):
        before = probe(address)
        assert before["nodes"] == 1 and before["resources"].get("stranger") == 1.0

        port = free_port()
        env = {
            **_env_without_ray_address(),
            "RAY_ADDRESS": address,  # what a shell beside the stranger's Ray would hold
            "NURI_HOME": str(tmp_path / ".nuri"),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
        for var in ("NURI_DATABASE_URL", "NURI_RAY_ADDRESS", "NURI_TOKEN"):
            env.pop(var, None)
        up_log = tmp_path / "up.log"
        args = ["up", "--port", str(port), "--stop-ray"]
        with nuri_server(args, port, env, tmp_path, up_log, down=False) as nuri:
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
            started = re.search(r"^ray: (\S+) \(started daemon", up_log.read_text(), flags=re.M)
            assert started is not None, up_log.read_text()
            assert started.group(1) not in ("local", address), "Nuri runs a Ray of its own"
            daemon = ray_runtime.read_record(Path(env["NURI_HOME"]))
            assert daemon is not None and daemon.address == started.group(1)
            assert ray_runtime.daemon_alive(daemon)
            during = probe(address)
            assert during == before, "the stranger's Ray is as it was"
            assert nuri.poll() is None
        assert "must not be provided" not in up_log.read_text()

        # --stop-ray: Nuri stopped its own Ray daemon when it left, and only that one: the
        # stranger's still runs, unchanged.
        assert not ray_runtime.daemon_alive(daemon)
        assert ray_runtime.read_record(Path(env["NURI_HOME"])) is None
        assert stranger.poll() is None
        assert probe(address) == before
