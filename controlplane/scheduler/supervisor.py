"""The Ray side of one job attempt: a detached supervisor actor and one worker per bundle.

The supervisor is named ``nuri-job-<id>`` so a restarted control plane finds it instead of
starting a second one. It owns the worker ranks (they die with it), relays their progress,
checkpoints and log lines, and turns a preemption notice into a stop request. The control
plane polls it; it never writes to the database itself.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

RANK_STATES = ("starting", "running", "succeeded", "failed", "preempted")


class RankWorker:
    """One rank, pinned to one bundle (one node). Runs its payload in a thread so that
    ``poll`` and ``stop`` are served while it works (the actor is threaded)."""

    def __init__(
        self, job_id: str, attempt: int, rank: int, world_size: int, spec: dict[str, Any]
    ) -> None:
        self.job_id, self.attempt, self.rank, self.world_size = job_id, attempt, rank, world_size
        self.spec = spec
        self.state = "starting"
        self.error: str | None = None
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def endpoint(self) -> tuple[str, int]:
        """This rank's address and a free port: rank 0's is everyone's rendezvous."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return ray.util.get_node_ip_address(), port  # type: ignore[no-untyped-call]

    def start(self, master: tuple[str, int]) -> None:
        self._thread = threading.Thread(target=self._run, args=(master,), daemon=True)
        self._thread.start()

    def _emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append({**event, "at": time.time(), "rank": self.rank})

    def _from_worker(self, event: dict[str, Any]) -> None:
        """Translate a ``workers`` report event into the supervisor's event stream."""
        kind = event.get("type")
        if kind == "metrics":
            values = {
                k: v
                for k, v in event.items()
                if isinstance(v, int | float) and k not in ("step", "rank", "at")
            }
            self._emit({"type": "metric", "step": int(event.get("step", 0)), "values": values})
        elif kind == "checkpoint":
            uri = str(event.get("path", self.spec["checkpoint_dir"]))
            self._emit({"type": "checkpoint", "step": int(event.get("step", 0)), "uri": uri})
        else:
            brief = {k: v for k, v in event.items() if k not in ("type", "plan", "manifest")}
            self._emit({"type": "log", "line": f"{kind}: {brief}"[:2000]})

    def _run(self, master: tuple[str, int]) -> None:
        self.state = "running"
        config = self.spec.get("config", {})
        try:
            payload = config.get("payload", "synthetic")
            if payload == "synthetic":
                from workers import synthetic

                self.state = synthetic.run(
                    synthetic.SyntheticConfig.from_config(config),
                    Path(self.spec["checkpoint_dir"]),
                    self.rank,
                    self.world_size,
                    self._stop.is_set,
                    self._emit,
                )
            elif payload == "workers":
                # The real A.X K1 loops: one torch.distributed rank per bundle.
                from workers.reporting import CallbackReporter
                from workers.runtime import run_rank
                from workers.spec import JobSpec

                spec = JobSpec.from_dict(
                    {
                        **config.get("spec", {}),
                        "job_id": self.job_id,
                        "kind": self.spec["kind"],
                        "output_dir": self.spec["checkpoint_dir"],
                    }
                )
                result = run_rank(
                    spec,
                    self.rank,
                    self.world_size,
                    master,
                    self._stop.is_set,
                    CallbackReporter(self._from_worker),
                )
                self.state = result.status if result.status in RANK_STATES else "failed"
                if self.state == "failed":
                    self.error = str(getattr(result, "error", "") or "the payload failed")
            else:
                raise ValueError(f"unknown payload {payload!r}")
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._emit({"type": "log", "line": traceback.format_exc(limit=5)})
            self.state = "failed"

    def poll(self, after: int) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "error": self.error,
                "start": after,
                "events": self.events[after:],
                "total": len(self.events),
            }

    def stop(self) -> None:
        self._stop.set()


class JobSupervisor:
    """Starts the ranks in the placement group's bundles and answers the control plane."""

    def __init__(
        self, job_id: str, attempt: int, spec: dict[str, Any], bundle_gpus: list[int]
    ) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.spec = spec
        self.started_at = time.time()
        self.preempt_deadline: float | None = None
        self._seen = [0] * len(bundle_gpus)
        self._status_lock = threading.Lock()
        self._buffer: list[dict[str, Any]] = []
        pg = ray.util.get_placement_group(spec["placement_group"])
        worker_cls = ray.remote(RankWorker)
        self.ranks: list[Any] = [
            worker_cls.options(
                num_cpus=0,
                num_gpus=gpus,
                max_concurrency=4,
                resources={spec["pool_resource"]: gpus},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                ),
            ).remote(job_id, attempt, i, len(bundle_gpus), spec)
            for i, gpus in enumerate(bundle_gpus)
        ]
        master = ray.get(self.ranks[0].endpoint.remote(), timeout=120)
        for r in self.ranks:
            r.start.remote(master)

    def ping(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt, "started_at": self.started_at}

    def status(self, after_event: int, timeout_s: float = 1.0) -> dict[str, Any]:
        """Aggregate the ranks: overall state, and events after index ``after_event``.

        Events are kept for the whole attempt so a control plane that crashed after reading
        them but before storing them reads them again: it passes how many it has stored.
        Ranks that do not answer within ``timeout_s`` (still starting, or busy) count as
        running; a rank whose actor died fails the attempt.
        """
        # Calls can overlap (the actor is threaded and a control plane that gave up waiting
        # asks again): one at a time, and each rank's events are taken by absolute index.
        with self._status_lock:
            return self._status(after_event, timeout_s)

    def _status(self, after_event: int, timeout_s: float) -> dict[str, Any]:
        refs = {r.poll.remote(self._seen[i]): i for i, r in enumerate(self.ranks)}
        ready, _pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        states = ["running"] * len(self.ranks)
        errors: list[str] = []
        for ref in ready:
            i = refs[ref]
            try:
                out = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                states[i] = "failed"
                errors.append(f"rank {i} lost: {type(exc).__name__}")
                continue
            fresh = out["events"][max(0, self._seen[i] - out["start"]) :]
            self._seen[i] += len(fresh)
            self._buffer.extend(fresh)
            states[i] = out["state"]
            if out["error"]:
                errors.append(f"rank {i}: {out['error']}")
        if "failed" in states:
            state = "failed"
        elif all(s == "succeeded" for s in states):
            state = "succeeded"
        elif all(s in ("preempted", "succeeded") for s in states) and "preempted" in states:
            state = "preempted"
        else:
            state = "running"
        return {
            "attempt": self.attempt,
            "state": state,
            "errors": errors,
            "events": self._buffer[after_event:],
            "total_events": len(self._buffer),
            "preempt_deadline": self.preempt_deadline,
        }

    def preempt(self, deadline: float) -> None:
        """Ask every rank to checkpoint and stop; the control plane kills us at ``deadline``."""
        self.preempt_deadline = deadline
        for r in self.ranks:
            r.stop.remote()

    def stop(self) -> None:
        for r in self.ranks:
            r.stop.remote()
