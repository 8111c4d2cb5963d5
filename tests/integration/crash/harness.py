"""Deployments of the control plane that can be killed with SIGKILL and restarted, for the
crash test and the recovery benchmark (bench/recovery.py).

Two shapes, both on PostgreSQL:

* ``Split``: `nuri api` + `python -m controlplane.scheduler` against a Ray head of their own
  (`ray start --head --block` in a session of its own), as the Helm chart deploys them;
* ``SingleHost``: `nuri up`, the README's mode; its Ray is whatever `nuri up` makes of it.

Every process started here carries a marker in its environment (``NURI_CRASH_RUN``), which its
children inherit (Ray's daemons and workers included): ``sweep`` ends exactly those by pid at
the end, whatever `nuri down` left, and never anyone else's (no `ray stop`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "nuri-crash-bootstrap-admin-token-0123456789"
POOL = "kr-crash-h200"
NODES = [f"{POOL}-{i:03d}" for i in range(2)]
GPUS_PER_NODE = 8
# alpha borrows beta's idle guaranteed GPUs with preemptible work; beta's non-preemptible
# training takes them back (preemption). (member, nominal, borrowing limit)
MEMBERS = (("alpha", 4, 8), ("beta", 12, 0))
START_TIMEOUT_S = 240.0  # generous: a loaded machine starts Ray and torch slowly
RUN_MARKER = "NURI_CRASH_RUN"
PREEMPTION_GRACE_S = 5.0  # preemption within the test's seconds, in both deployments


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> float:
    """Poll ``cond`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(poll)
    raise AssertionError(f"{what}: not reached in {timeout:.0f}s")


def answers(url: str) -> int | None:
    """The status of GET ``url``, or None when nothing answers."""
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


# --- the world -------------------------------------------------------------------------------


def setup_client(engine: Engine, home: Path) -> TestClient:
    """The real app in this process, on the deployment's database and signing key (for the
    set-up before start, and for submissions while every API process is down)."""
    from controlplane.api.app import create_app
    from controlplane.settings import Settings

    settings = Settings(
        bootstrap_admin_token=ADMIN_TOKEN,
        home=home,
        warm_planner=False,
        database_url=engine.url.render_as_string(hide_password=False),
    )
    return TestClient(create_app(settings, engine), raise_server_exceptions=False)


def setup_world(client: TestClient) -> dict[str, str]:
    """The pool of NODES, two members with quotas, a user token each: {member: token}."""
    root = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def ok(resp: Any, status: int = 201) -> Any:
        assert resp.status_code == status, resp.text
        return resp.json()

    ok(
        client.post(
            "/v1/pools",
            headers=root,
            json={
                "name": POOL,
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": GPUS_PER_NODE,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "interconnect_domains": ["nvl-a"],
                "node_count": len(NODES),
            },
        )
    )
    tokens = {}
    for name, nominal, borrowing in MEMBERS:
        ok(client.post("/v1/members", headers=root, json={"name": name, "display_name": name}))
        ok(
            client.post(
                "/v1/quotas",
                headers=root,
                json={
                    "member": name,
                    "pool": POOL,
                    "nominal_gpus": nominal,
                    "borrowing_limit": borrowing,
                },
            )
        )
        user = ok(
            client.post(
                "/v1/users",
                headers=root,
                json={"email": f"u@{name}.example", "name": name, "member": name},
            )
        )
        tokens[name] = ok(
            client.post("/v1/tokens", headers=root, json={"name": "t", "user_id": user["id"]})
        )["token"]
    return tokens


def synthetic_job(
    gpus: int, steps: int, priority_class: str, step_s: float = 0.25
) -> dict[str, Any]:
    """The cheapest job that runs a few seconds and checkpoints (no torch, one rank)."""
    return {
        "kind": "finetune",
        "model": "axk1-tiny",
        "gpus": gpus,
        "priority_class": priority_class,
        "config": {
            "payload": "synthetic",
            "steps": steps,
            "step_seconds": step_s,
            "checkpoint_every": 2,
        },
    }


# --- processes -------------------------------------------------------------------------------


class Processes:
    """Start commands in sessions of their own, each with the run's marker; end them by pid."""

    def __init__(self, home: Path, db_url: str, logs: Path) -> None:
        self.home, self.db_url, self.logs = home, db_url, logs
        self.marker = uuid.uuid4().hex
        self.count = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "NURI_HOME": str(self.home),
            "NURI_DATABASE_URL": self.db_url,
            "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN_TOKEN,
            # Checkpoints every few seconds: the test sees each deployment sign them.
            "NURI_AUDIT_CHECKPOINT_INTERVAL_S": "3",
            "NURI_PREEMPTION_GRACE_S": str(PREEMPTION_GRACE_S),
            "NURI_MIN_RUNTIME_S": "0",
            "XDG_CONFIG_HOME": str(self.home / "config"),
            RUN_MARKER: self.marker,
            **extra,
        }
        for var in ("RAY_ADDRESS", "NURI_RAY_ADDRESS", "NURI_TOKEN", "NURI_JOBS_DIR"):
            if var not in extra:
                env.pop(var, None)
        return env

    def spawn(
        self, name: str, cmd: list[str], **extra: str
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(**extra),
                cwd=self.home,
                start_new_session=True,
            )
        return proc, log

    def mine(self) -> list[int]:
        """Pids of live processes carrying this run's marker (Ray's included)."""
        needle = f"{RUN_MARKER}={self.marker}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
        return pids

    def sweep(self, grace_s: float = 15.0) -> list[str]:
        """SIGKILL whatever of this run is still alive ``grace_s`` after the stop (processes
        exit a little after their parents); returns what it killed (pid and command)."""
        deadline = time.monotonic() + grace_s
        while (left := self.mine()) and time.monotonic() < deadline:
            time.sleep(0.5)
        killed = []
        for pid in left:
            with suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                killed.append(f"{pid} {cmd.decode(errors='replace')[:120]}")
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed


def kill9(proc: subprocess.Popen[bytes], group: bool) -> None:
    """SIGKILL: the process (``group``: with every process of its session, as a crashed pod)."""
    with suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    proc.wait(timeout=30)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """SIGTERM and wait; seconds until it exited, None (and SIGKILL) past ``timeout``."""
    if proc.poll() is not None:
        return 0.0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc, group=True)
        return None
    return time.monotonic() - started


def ray_probe(address: str, env: dict[str, str]) -> dict[str, Any]:
    """Alive nodes and placement groups not removed, read by a separate Ray driver."""
    code = (
        "import json, sys, ray\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "pgs = ray.util.placement_group_table().values()\n"
        "left = [p.get('name') for p in pgs if p.get('state') != 'REMOVED']\n"
        "print(json.dumps({'nodes': sum(1 for n in ray.nodes() if n['Alive']), 'left': left}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# --- the two deployments ---------------------------------------------------------------------


class Deployment:
    """What the crash test and the benchmark drive; ``parts`` are what can be killed."""

    name = ""
    parts: tuple[str, ...] = ()

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        raise NotImplementedError

    def kill(self, part: str) -> None:
        raise NotImplementedError

    def restart(self, part: str) -> None:
        raise NotImplementedError

    def sigterm(self) -> float | None:
        """SIGTERM to the control plane; seconds until every part exited (None: it did not
        within 60 s and was killed)."""
        raise NotImplementedError

    def ray_address(self) -> str:
        raise NotImplementedError

    def stop(self) -> list[str]:
        """Stop everything as an operator would; returns what was still alive after it
        (then killed)."""
        raise NotImplementedError

    def healthy(self) -> bool:
        return answers(f"{self.url}/healthz") == 200

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        return wait_until(self.healthy, timeout, f"{self.name}: /healthz", poll=0.1)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.procs.logs.glob("*.log"))
        )


class Split(Deployment):
    """`nuri api` + the standalone scheduler + a Ray head of their own."""

    name = "split"
    parts = ("api", "scheduler", "both")
    SCHEDULER_ARGS = (
        "--lease-ttl",
        "10",
        "--interval",
        "0.5",
        "--grace-period",
        "5",
        "--min-runtime",
        "0",
    )

    def __init__(self, procs: Processes) -> None:
        super().__init__(procs)
        self.ray: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.api: subprocess.Popen[bytes] | None = None
        self.scheduler: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.ray is None:
            self._start_ray()
        self.restart("both")

    def _start_ray(self) -> None:
        resources = {f"pool:{POOL}": float(GPUS_PER_NODE * len(NODES))}
        resources.update({f"nuri-node:{n}": 1.0 for n in NODES})
        self.ray, log = self.procs.spawn(
            "ray-head",
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                "--port=0",
                f"--ray-client-server-port={free_port()}",
                "--dashboard-agent-listen-port=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--num-cpus=4",
                f"--num-gpus={GPUS_PER_NODE * len(NODES)}",
                "--resources=" + json.dumps(resources),
            ],
        )

        def found() -> bool:
            assert self.ray is not None and self.ray.poll() is None, log.read_text()
            m = re.search(r"--address='([^']+)'", log.read_text(errors="replace"))
            self.address = m.group(1) if m else ""
            return bool(self.address)

        wait_until(found, START_TIMEOUT_S, "the Ray head")

    def restart(self, part: str) -> None:
        if part in ("api", "both"):
            self.api, _ = self.procs.spawn(
                "api", [str(BIN / "nuri"), "api", "--port", str(self.port), "--workers", "1"]
            )
        if part in ("scheduler", "both"):
            self.scheduler, _ = self.procs.spawn(
                "scheduler",
                [
                    sys.executable,
                    "-m",
                    "controlplane.scheduler",
                    "--ray-address",
                    self.address,
                    *self.SCHEDULER_ARGS,
                ],
            )

    def kill(self, part: str) -> None:
        # The API with its uvicorn workers (a crashed pod); the scheduler alone (its Ray
        # workers belong to the Ray head, not to it).
        if part in ("api", "both") and self.api is not None:
            kill9(self.api, group=True)
        if part in ("scheduler", "both") and self.scheduler is not None:
            kill9(self.scheduler, group=True)

    def sigterm(self) -> float | None:
        started = time.monotonic()
        for proc in (self.api, self.scheduler):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.api, self.scheduler):
            if proc is None:
                continue
            left = 60 - (time.monotonic() - started)
            try:
                proc.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                kill9(proc, group=True)
                return None
        return time.monotonic() - started

    def ray_address(self) -> str:
        return self.address

    def stop(self) -> list[str]:
        for proc in (self.api, self.scheduler):
            if proc is not None:
                terminate(proc, 30)
        if self.ray is not None:
            terminate(self.ray, 60)  # `ray start --block` stops its own processes
            _forget_address(self.address)
        return self.procs.sweep()


class SingleHost(Deployment):
    """`nuri up`; stopped with `nuri down` at the end (its Ray outlives it: issue 17)."""

    name = "single-host"
    parts = ("up",)

    def __init__(self, procs: Processes) -> None:
        super().__init__(procs)
        self.up: subprocess.Popen[bytes] | None = None
        self.up_log: Path | None = None

    def start(self) -> None:
        self.restart("up")

    def restart(self, part: str) -> None:
        self.up, self.up_log = self.procs.spawn(
            "up", [str(BIN / "nuri"), "up", "--port", str(self.port)]
        )

    def kill(self, part: str) -> None:
        # The `nuri up` process only: a Ray it runs as a daemon must survive it.
        if self.up is not None:
            kill9(self.up, group=False)

    def sigterm(self) -> float | None:
        assert self.up is not None
        return terminate(self.up, 60)

    def ray_address(self) -> str:
        """The Ray `nuri up` said it uses (its last start's log line ``ray: <address> ...``)."""
        assert self.up_log is not None
        m = re.search(r"^ray: (\S+)", self.up_log.read_text(errors="replace"), flags=re.M)
        assert m is not None, self.up_log.read_text(errors="replace")
        return m.group(1)

    def stop(self) -> list[str]:
        if self.up is not None:
            terminate(self.up, 60)
        with suppress(subprocess.TimeoutExpired):
            down = subprocess.run(
                [str(BIN / "nuri"), "down"],
                env=self.procs.env(),
                cwd=self.procs.home,
                capture_output=True,
                timeout=120,
            )
            (self.procs.logs / "down.log").write_bytes(down.stdout + down.stderr)
        return self.procs.sweep()


def _forget_address(address: str) -> None:
    """Remove the machine's "last `ray start`" file only while it still names our head."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    try:
        if address and path.read_text().strip() == address:
            path.unlink()
    except OSError:
        pass


def short_home() -> Path:
    """A NURI_HOME under /tmp with a short path (Ray's socket paths have a length limit)."""
    return Path(tempfile.mkdtemp(prefix="nuri-crash-"))
