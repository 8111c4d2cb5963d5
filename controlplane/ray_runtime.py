"""The Ray side of one machine: Nuri's own Ray daemon, whose logical resources mirror the pools.

Each pool becomes a custom resource ``pool:<name>`` with as many units as the pool has GPUs,
and the GPUs are declared as logical ``num_gpus``, so placement works on a CPU-only machine
exactly as it would on the real cluster. ``NURI_RAY_ADDRESS`` joins an existing cluster
instead (KubeRay labels each worker group with its pool resource), without passing resources.

Without it, ``nuri up`` runs Ray as a daemon of its own (``ray start --head --block`` in a
session of its own, its output in ``$NURI_HOME/ray.log``) and records it in
``$NURI_HOME/ray.json``: a control plane killed with ``kill -9`` takes no job with it, and
the next ``nuri up`` re-attaches to the recorded daemon (the detached supervisors and
placement groups are still there). Invariants:

- Nuri only ever connects to the Ray it recorded (checked by its process group and its Ray
  session name) or to ``NURI_RAY_ADDRESS``; never to whatever ``RAY_ADDRESS`` or the
  machine's last ``ray start`` names. Its daemon keeps its own temp dir, so a stranger's
  plain ``ray.init()`` does not join it either.
- Only the recorded process group is ever signalled (never ``ray stop``, which stops every
  Ray on the machine), and only after its members are shown to be that daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("nuri.ray")

RECORD = "ray.json"
LOG = "ray.log"
START_TIMEOUT_S = 180.0  # a loaded machine starts Ray slowly
CONNECT_PROBE_S = 5.0
STOP_GRACE_S = 3.0  # then SIGKILL: `ray start --block` and its GCS may ignore SIGTERM for long
STARTUP_TIMED_OUT = "timed out during startup"  # Ray's fixed 30 s raylet wait; tried again
_ADDRESS_LINE = re.compile(r"--address='([^']+)'")


class RayUnavailable(Exception):
    """Ray could not be started or joined; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Daemon:
    """What ``nuri up`` started, as kept in ``$NURI_HOME/ray.json``."""

    address: str
    gcs_port: int
    pid: int
    pgid: int
    session_name: str
    num_cpus: int
    num_gpus: int
    resources: dict[str, float]
    log: str
    temp_dir: str
    started_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, text: str) -> Daemon:
        raw = json.loads(text)
        return cls(
            address=str(raw["address"]),
            gcs_port=int(raw["gcs_port"]),
            pid=int(raw["pid"]),
            pgid=int(raw["pgid"]),
            session_name=str(raw.get("session_name", "")),
            num_cpus=int(raw["num_cpus"]),
            num_gpus=int(raw["num_gpus"]),
            resources={str(k): float(v) for k, v in raw["resources"].items()},
            log=str(raw.get("log", "")),
            temp_dir=str(raw.get("temp_dir", "")),
            started_at=float(raw.get("started_at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class RayInfo:
    address: str
    resources: dict[str, float]
    # "started" (a new daemon), "re-attached" (the recorded one) or "joined" (NURI_RAY_ADDRESS)
    how: str = "joined"
    daemon: Daemon | None = None
    # One line when the pools changed since the re-attached daemon started; else None.
    drift: str | None = None


def pool_resources(pool_gpus: dict[str, int], node_names: list[str] = []) -> dict[str, float]:  # noqa: B006
    """``pool:<name>`` per pool (its GPUs) and ``nuri-node:<name>`` per node it hosts."""
    out = {f"pool:{name}": float(gpus) for name, gpus in sorted(pool_gpus.items()) if gpus > 0}
    out.update({f"nuri-node:{n}": 1.0 for n in node_names})
    return out


# --- the record -----------------------------------------------------------------------------


def record_path(home: Path) -> Path:
    return home / RECORD


def read_record(home: Path) -> Daemon | None:
    try:
        return Daemon.from_json(record_path(home).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable %s", record_path(home))
        return None


def _write_record(home: Path, daemon: Daemon) -> None:
    path = record_path(home)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(daemon), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _forget(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(home).unlink()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One ``nuri up``/``nuri down`` at a time decides about the daemon of one NURI_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "ray.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- the daemon's processes -----------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def _ours(daemon: Daemon, members: list[int]) -> bool:
    """The group is still the recorded daemon: its leader is our `ray start`, or one of its
    processes runs in our Ray session (a reused process id passes neither)."""
    leader = _cmdline(daemon.pid) if daemon.pid in members else ""
    if "ray" in leader and "start" in leader and f"--port={daemon.gcs_port}" in leader:
        return True
    return bool(daemon.session_name) and any(daemon.session_name in _cmdline(p) for p in members)


def _port_open(address: str, timeout: float = CONNECT_PROBE_S) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port (e.g. ray:// or auto): let Ray say
    with socket.socket() as probe:
        probe.settimeout(timeout)
        try:
            return probe.connect_ex((host.strip("[]"), int(port))) == 0
        except OSError:
            return False


def daemon_alive(daemon: Daemon) -> bool:
    """Whether the recorded daemon still runs (some process of its group is ours)."""
    members = _group_members(daemon.pgid)
    return bool(members) and _ours(daemon, members)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # `ray start --head` makes a new cluster, whatever it says
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _temp_dir() -> Path:
    # Not under NURI_HOME: Ray's socket paths must stay short (AF_UNIX, 107 bytes). Not
    # Ray's default /tmp/ray either: `ray start` writes the machine's "last cluster" file
    # there, and a stranger's plain ray.init() would then join Nuri's Ray.
    return Path(tempfile.gettempdir()) / f"nuri-ray-{os.getuid()}"


def _launch(
    home: Path, num_cpus: int, num_gpus: int, resources: dict[str, float], timeout: float
) -> Daemon:
    """``ray start --head --block`` in a session of its own; waits until it is up."""
    ray_bin = Path(sys.executable).parent / "ray"
    runner = [str(ray_bin)] if ray_bin.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    gcs_port = _free_port()
    temp_dir = _temp_dir()
    cmd = [
        *runner,
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-port={_free_port()}",
        "--dashboard-agent-listen-port=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        "--resources=" + json.dumps(resources, sort_keys=True),
        f"--temp-dir={temp_dir}",
    ]
    log_path = home / LOG
    with open(log_path, "ab") as out:
        out.write(f"\n--- nuri up starts Ray at {time.ctime()}: {' '.join(cmd)}\n".encode())
        out.flush()
        offset = out.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_ray_env(),
            start_new_session=True,  # its own process group: a kill of `nuri up` spares it
        )
    daemon = Daemon(
        address="",
        gcs_port=gcs_port,
        pid=proc.pid,
        pgid=proc.pid,
        session_name="",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        log=str(log_path.resolve()),
        temp_dir=str(temp_dir),
    )
    _write_record(home, daemon)  # at once: a `nuri up` killed from here on leaks nothing
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _read_from(log_path, offset)
        found = _ADDRESS_LINE.search(text)
        if found and "Ray runtime started" in text:
            daemon = _with(daemon, address=found.group(1))
            _write_record(home, daemon)
            return daemon
        if proc.poll() is not None:
            if _group_members(daemon.pgid):  # what it started before it died: ours alone
                _stop_group(daemon, STOP_GRACE_S)
            _forget(home)
            raise RayUnavailable(
                f"Ray did not start (exit {proc.returncode}): {_last_error(text)} (see {log_path})"
            )
        time.sleep(0.3)  # poll interval
    _stop_group(daemon, STOP_GRACE_S)
    _forget(home)
    raise RayUnavailable(f"Ray did not start within {timeout:.0f} s (see {log_path})")


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def _with(daemon: Daemon, **changes: Any) -> Daemon:
    return Daemon(**{**asdict(daemon), **changes})


def _stop_group(daemon: Daemon, grace: float) -> None:
    """SIGTERM the daemon's process group, wait ``grace``, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(daemon.pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_members(daemon.pgid):
                return
            time.sleep(0.2)  # poll interval
    if _group_members(daemon.pgid):
        raise RayUnavailable(f"Ray's process group {daemon.pgid} did not stop")


# --- connecting -----------------------------------------------------------------------------


def _connect(address: str) -> Any:
    import ray

    return ray.init(address=address, namespace="nuri", log_to_driver=False)


def _session_name() -> str:
    import ray

    return str(ray.get_runtime_context().get_session_name())


def _drift(daemon: Daemon, num_gpus: int, resources: dict[str, float]) -> str | None:
    if daemon.num_gpus == num_gpus and daemon.resources == resources:
        return None
    added = sorted(set(resources) - set(daemon.resources))
    gone = sorted(set(daemon.resources) - set(resources))
    changed = sorted(
        k for k in resources if k in daemon.resources and resources[k] != daemon.resources[k]
    )
    parts = [f"{daemon.num_gpus} -> {num_gpus} GPUs"] if daemon.num_gpus != num_gpus else []
    parts += [f"new {', '.join(added)}"] if added else []
    parts += [f"gone {', '.join(gone)}"] if gone else []
    parts += [f"changed {', '.join(changed)}"] if changed else []
    return (
        f"the pools changed since Nuri's Ray started ({'; '.join(parts)}); it keeps its old "
        "resources: `nuri down` then `nuri up` applies them"
    )


def _attach(home: Path, daemon: Daemon) -> bool:
    """Connect to the recorded daemon when it is alive and still the same Ray."""
    import ray

    if not daemon.address or not daemon_alive(daemon) or not _port_open(daemon.address):
        return False
    try:
        _connect(daemon.address)
    except Exception as exc:
        log.warning("the recorded Ray at %s did not answer: %s", daemon.address, exc)
        ray.shutdown()
        return False
    session = _session_name()
    if daemon.session_name and session != daemon.session_name:
        log.warning(
            "%s is another Ray now (%s, not %s)", daemon.address, session, daemon.session_name
        )
        ray.shutdown()
        return False
    if not daemon.session_name:  # recorded before its first connection completed
        _write_record(home, _with(daemon, session_name=session))
    return True


def start(
    pool_gpus: dict[str, int],
    address: str | None = None,
    node_names: list[str] | None = None,
    home: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> RayInfo:
    """Join ``address`` (NURI_RAY_ADDRESS), or re-attach to the daemon recorded under ``home``,
    or start a new one with the pools' resources. Raises RayUnavailable with one line.

    The daemon is one Ray node standing in for every registered node: it advertises each
    node's ``nuri-node:<name>`` resource, so placement groups are pinned exactly as they would
    be on a cluster with one Ray node per machine.
    """

    if address:
        if not _port_open(address):
            raise RayUnavailable(f"nothing answers at {address} (NURI_RAY_ADDRESS)")
        try:
            ctx = _connect(address)
        except Exception as exc:
            raise RayUnavailable(f"cannot join the Ray cluster at {address}: {exc}") from exc
        return RayInfo(address=_address_of(ctx, address), resources=_cluster_resources())

    if home is None:
        raise ValueError("a local Ray needs NURI_HOME")
    num_cpus = max(2, os.cpu_count() or 2)
    num_gpus = sum(pool_gpus.values())
    resources = pool_resources(pool_gpus, node_names or [])
    with _locked(home):
        recorded = read_record(home)
        if recorded is not None and _attach(home, recorded):
            daemon = read_record(home) or recorded
            return RayInfo(
                address=daemon.address,
                resources=_cluster_resources(),
                how="re-attached",
                daemon=daemon,
                drift=_drift(daemon, num_gpus, resources),
            )
        if recorded is not None:
            log.warning(
                "the recorded Ray (pid %d) is gone or not ours: starting a new one", recorded.pid
            )
            _stop_leftovers(recorded)
            _forget(home)
        daemon = _start_daemon(home, num_cpus, num_gpus, resources, timeout)
        try:
            ctx = _connect(daemon.address)
        except Exception as exc:
            raise RayUnavailable(f"Nuri's Ray at {daemon.address} did not answer: {exc}") from exc
        daemon = _with(daemon, session_name=_session_name())
        _write_record(home, daemon)
        return RayInfo(
            address=_address_of(ctx, daemon.address),
            resources=_cluster_resources(),
            how="started",
            daemon=daemon,
        )
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the lock may swallow)


def _start_daemon(
    home: Path, num_cpus: int, num_gpus: int, resources: dict[str, float], timeout: float
) -> Daemon:
    for attempt in (1, 2):
        try:
            return _launch(home, num_cpus, num_gpus, resources, timeout)
        except RayUnavailable as exc:
            if STARTUP_TIMED_OUT not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _stop_leftovers(daemon: Daemon) -> None:
    """A recorded daemon whose leader died may leave its GCS and raylet: stop those only."""
    members = _group_members(daemon.pgid)
    if members and _ours(daemon, members):
        _stop_group(daemon, STOP_GRACE_S)


def _address_of(ctx: Any, fallback: str) -> str:
    return str(getattr(ctx, "address_info", {}).get("address", "") or fallback)


def _cluster_resources() -> dict[str, float]:
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}  # type: ignore[no-untyped-call]


def stop() -> None:
    """Disconnect this process from Ray (the daemon keeps running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def stop_daemon(home: Path, grace: float = STOP_GRACE_S) -> Daemon | None:
    """Stop the daemon recorded under ``home`` and forget it; None when none was running."""
    with _locked(home):
        daemon = read_record(home)
        if daemon is None:
            return None
        members = _group_members(daemon.pgid)
        if not members or not _ours(daemon, members):
            _forget(home)
            return None
        _stop_group(daemon, grace)
        _forget(home)
        return daemon
