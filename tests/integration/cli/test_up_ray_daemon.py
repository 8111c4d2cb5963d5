"""`nuri up` runs Ray as a daemon of its own: a `kill -9` of `nuri up` loses no running job.

One `nuri up --demo` starts the daemon and a job; `nuri up` is killed with SIGKILL while the
job runs; the daemon and the job's detached supervisor live on; the next `nuri up` on the
same NURI_HOME re-attaches and the job succeeds in its first attempt. Then: SIGTERM ends
`nuri up` promptly and leaves Ray running, a daemon that died is replaced, `nuri down` stops
it (a second `nuri down` has nothing to stop), and a NURI_RAY_ADDRESS where nothing answers
is one clear line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane import ray_runtime
from tests.conftest import ADMIN_TOKEN
from tests.e2e.server import BIN, free_port, nuri_down, nuri_server

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

WAIT_S = float(os.environ.get("NURI_TEST_WAIT_S", "300"))
POOL = "kr-seoul-h200"  # a demo pool

SUPERVISOR_PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], namespace="nuri", log_to_driver=False)
sup = ray.get_actor(sys.argv[2])
print(json.dumps(ray.get(sup.ping.remote(), timeout=120)))
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "NURI_HOME": str(tmp / ".nuri"),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }
    for var in ("NURI_DATABASE_URL", "NURI_RAY_ADDRESS", "NURI_TOKEN", "RAY_ADDRESS"):
        env.pop(var, None)
    return env


def _call(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    r = httpx.request(
        method, url, headers={"Authorization": f"Bearer {token}"}, json=body, timeout=60
    )
    assert r.status_code < 300, r.text
    return r.json()


def _member_token(base: str) -> str:
    """A member with room to borrow in the demo's Seoul pool, and a user token of it."""
    _call("POST", f"{base}/v1/members", ADMIN_TOKEN, {"name": "crash-lab", "display_name": "C"})
    quota = {"member": "crash-lab", "pool": POOL, "nominal_gpus": 0, "borrowing_limit": 8}
    _call("POST", f"{base}/v1/quotas", ADMIN_TOKEN, quota)
    user = _call(
        "POST",
        f"{base}/v1/users",
        ADMIN_TOKEN,
        {"email": "u@crash-lab.example", "name": "u", "member": "crash-lab"},
    )
    made = _call("POST", f"{base}/v1/tokens", ADMIN_TOKEN, {"name": "t", "user_id": user["id"]})
    return str(made["token"])


def _wait_for(what: str, cond: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)  # poll interval
    raise AssertionError(f"{what}: not reached in {timeout:.0f} s")


def _sigterm_seconds(proc: subprocess.Popen[bytes]) -> float:
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return time.monotonic() - began


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie: exited, not yet reaped by its parent


def test_ray_daemon_outlives_nuri_up(tmp_path: Path) -> None:
    env = _env(tmp_path)
    home = tmp_path / ".nuri"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = ["up", "--port", str(port)]
    try:
        # 1. A NURI_RAY_ADDRESS where nothing listens: one line, no traceback, non-zero exit.
        nowhere = {**env, "NURI_RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
        done = subprocess.run(
            [str(BIN / "nuri"), *up],
            env=nowhere,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "nothing answers at 127.0.0.1:" in out, out
        assert "Traceback" not in out, out
        assert ray_runtime.read_record(home) is None

        # 2. The first `nuri up` starts the daemon; a job runs; `nuri up` is killed with -9.
        with nuri_server(
            [*up, "--demo"], port, env, tmp_path, tmp_path / "up1.log", down=False
        ) as first:
            daemon = ray_runtime.read_record(home)
            assert daemon is not None and daemon.session_name and daemon.address
            assert daemon.resources.get(f"pool:{POOL}", 0) > 0
            assert f"started daemon, pid {daemon.pid}" in (tmp_path / "up1.log").read_text()
            token = _member_token(base)
            job = _call(
                "POST",
                f"{base}/v1/jobs",
                token,
                {
                    "kind": "finetune",
                    "model": "axk1-tiny",
                    "gpus": 2,
                    "allowed_pools": [POOL],
                    "config": {
                        "payload": "synthetic",
                        "steps": 40,
                        "step_seconds": 0.75,
                        "checkpoint_every": 10,
                    },
                },
            )
            url = f"{base}/v1/jobs/{job['id']}"
            _wait_for("RUNNING", lambda: _call("GET", url, token)["status"] == "RUNNING")
            # A pool added now is not in the running daemon's resources (said on restart).
            _call(
                "POST",
                f"{base}/v1/pools",
                ADMIN_TOKEN,
                {
                    "name": "kr-test-late",
                    "gpu_model": "H100",
                    "gpu_memory_gib": 80,
                    "gpus_per_node": 8,
                    "site": "Seoul",
                    "region": "kr-seoul",
                    "jurisdiction": "KR",
                    "interconnect_domains": ["nvl-z"],
                    "node_count": 1,
                },
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=60)

        assert ray_runtime.daemon_alive(daemon), "Ray outlives a kill -9 of nuri up"
        probe = subprocess.run(
            [sys.executable, "-c", SUPERVISOR_PROBE, daemon.address, f"nuri-job-{job['id']}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        assert probe.returncode == 0, probe.stderr[-4000:]
        assert json.loads(probe.stdout.strip().splitlines()[-1])["attempt"] == 1

        # 3. The next `nuri up` re-attaches; the job goes on and succeeds in attempt 1.
        log2 = tmp_path / "up2.log"
        with nuri_server(up, port, env, tmp_path, log2, down=False) as second:
            text = log2.read_text()
            assert f"re-attached daemon, pid {daemon.pid}" in text, text
            assert "the pools changed since Nuri's Ray started" in text, text
            assert "pool:kr-test-late" in text, text
            _wait_for(
                "SUCCEEDED",
                lambda: _call("GET", url, token)["status"] in ("SUCCEEDED", "FAILED"),
            )
            final = _call("GET", url, token)
            assert final["status"] == "SUCCEEDED" and final["attempt"] == 1, final
            # 4. SIGTERM ends `nuri up` promptly; Ray keeps running (no --stop-ray).
            seconds = _sigterm_seconds(second)
        print(f"SIGTERM -> nuri up exited in {seconds:.1f} s")
        assert seconds < 30
        assert ray_runtime.daemon_alive(daemon)

        # 5. A recorded daemon that died is replaced by a fresh one.
        os.killpg(daemon.pgid, signal.SIGKILL)
        _wait_for("the daemon gone", lambda: not ray_runtime.daemon_alive(daemon), 60)
        log3 = tmp_path / "up3.log"
        with nuri_server(up, port, env, tmp_path, log3, down=False) as third:
            fresh = ray_runtime.read_record(home)
            assert fresh is not None and fresh.pid != daemon.pid
            assert fresh.session_name != daemon.session_name
            assert f"started daemon, pid {fresh.pid}" in log3.read_text()
            assert ray_runtime.daemon_alive(fresh)
            assert _sigterm_seconds(third) < 30

        # 6. `nuri down` stops it; a second `nuri down` has nothing to stop.
        stopped = nuri_down(env, tmp_path)
        assert f"stopped Nuri's Ray daemon (pid {fresh.pid}" in stopped.stdout, stopped.stdout
        assert _gone(fresh.pid) and not ray_runtime.daemon_alive(fresh)
        assert ray_runtime.read_record(home) is None
        again = nuri_down(env, tmp_path)
        assert "nothing to stop" in again.stdout, again.stdout
    finally:
        ray_runtime.stop_daemon(home)  # whatever a failed step left running
