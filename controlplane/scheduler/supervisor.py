"""The Ray side of one job attempt: a detached supervisor actor and one rank per GPU.

The supervisor is named ``nuri-job-<id>`` so a restarted control plane finds it instead of
starting a second one. It receives the job's ExecutionPlan (``workers.execution``) and
nothing else: it stages the plan's inputs into the job's directory (verifying each against
its registered SHA-256), then starts one rank per GPU of each placement-group bundle (world
size = the job's GPUs; ``LOCAL_RANK`` = the GPU's index on its node; Ray gives each rank its
own device). It owns the ranks (they die with it), relays their progress, checkpoints and log
lines, and turns a preemption notice or a cancel into a stop request. The control plane
polls it; it never writes to the database itself.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from controlplane.observability import tracing
from controlplane.serving.names import SERVE_KIND, replica_app_name, replica_deployment_name

RANK_STATES = ("starting", "running", "succeeded", "failed", "preempted")
ENDED = ("succeeded", "failed", "preempted")


class RankWorker:
    """One rank: one GPU of a bundle (one per bundle for the synthetic payload). Runs its
    payload in a thread so that ``poll`` and ``stop`` are served while it works.

    Traced as ``job.rank`` under the supervisor's ``job.run``: checkpoints, sampled steps and
    the stop request are its events; it is exported before ``poll`` first reports the end."""

    def __init__(
        self,
        job_id: str,
        attempt: int,
        rank: int,
        world_size: int,
        local_rank: int,
        plan: dict[str, Any],
        traceparent: str | None = None,
    ) -> None:
        self.job_id, self.attempt, self.rank, self.world_size = job_id, attempt, rank, world_size
        self.local_rank = local_rank
        self.plan = plan
        self.state = "starting"
        self.error: str | None = None
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        tracing.configure("nuri-worker")
        self._span = tracing.start_span(
            "job.rank",
            traceparent,
            {
                "nuri.job.id": job_id,
                "nuri.job.attempt": attempt,
                "nuri.rank": rank,
                "nuri.world_size": world_size,
                "nuri.local_rank": local_rank,
            },
        )
        self._exported = False

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
        kind = event.get("type")
        if kind == "checkpoint":
            step, uri = int(event.get("step", 0)), str(event.get("uri"))
            self._span.add_event("checkpoint", {"nuri.step": step, "nuri.checkpoint.uri": uri})
        elif kind == "metric" and tracing.sampled_step(int(event.get("step", 0))):
            values = {f"nuri.metric.{k}": float(v) for k, v in event.get("values", {}).items()}
            self._span.add_event("step", {"nuri.step": int(event["step"]), **values})

    def _from_worker(self, event: dict[str, Any]) -> None:
        """Translate a ``workers`` report event into the supervisor's event stream."""
        kind = event.get("type")
        if kind == "metrics":
            values = {
                k: v
                for k, v in event.items()
                if isinstance(v, int | float) and k not in ("step", "rank", "at", "ts")
            }
            self._emit({"type": "metric", "step": int(event.get("step", 0)), "values": values})
        elif kind == "checkpoint":
            uri = str(event.get("path", self.plan["dirs"]["checkpoints"]))
            self._emit({"type": "checkpoint", "step": int(event.get("step", 0)), "uri": uri})
        else:
            brief = {k: v for k, v in event.items() if k not in ("type", "plan", "manifest")}
            self._emit({"type": "log", "line": f"{kind}: {brief}"[:2000]})

    def _run(self, master: tuple[str, int]) -> None:
        self.state = "running"
        try:
            state = self._work(master)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._emit({"type": "log", "line": traceback.format_exc(limit=5)})
            state = "failed"
        # The span ends before the state says so: ``poll`` exports it when it reports the end.
        failed = (self.error or "the payload failed") if state == "failed" else None
        tracing.end(self._span, {"nuri.job.outcome": state}, error=failed)
        self.state = state

    def _work(self, master: tuple[str, int]) -> str:
        """Run the plan's payload in this thread; returns how the rank ended."""
        from workers.confine import confine_job
        from workers.execution import ExecutionPlan, job_spec, synthetic_knobs

        plan = ExecutionPlan.from_dict(self.plan)
        # From here on this thread (and all it starts) reads only its inputs and the
        # software it runs, and writes only in its own job directory: kernel-enforced.
        confinement = confine_job(Path(plan.dirs.root))
        self._emit({"type": "log", "line": confinement.describe()})
        if plan.payload == "synthetic":
            from workers import synthetic

            knobs = synthetic_knobs(plan).model_dump()
            return synthetic.run(
                synthetic.SyntheticConfig.from_config(knobs),
                Path(plan.dirs.checkpoints),
                self.rank,
                self.world_size,
                self._stop.is_set,
                self._emit,
            )
        # The real loops: one torch.distributed rank per GPU, applying the plan exactly.
        from workers.reporting import CallbackReporter
        from workers.runtime import run_rank

        os.environ["LOCAL_RANK"] = str(self.local_rank)
        result = run_rank(
            job_spec(plan),
            self.rank,
            self.world_size,
            master,
            self._stop.is_set,
            CallbackReporter(self._from_worker),
        )
        state = result.status if result.status in RANK_STATES else "failed"
        if state == "failed":
            self.error = str(getattr(result, "error", "") or "the payload failed")
        return state

    def poll(self, after: int) -> dict[str, Any]:
        if self.state in ENDED and not self._exported:
            # Before the supervisor learns the rank ended: the actor may be killed soon after.
            tracing.flush()
            self._exported = True
        with self._lock:
            return {
                "state": self.state,
                "error": self.error,
                "start": after,
                "events": self.events[after:],
                "total": len(self.events),
            }

    def stop(self) -> None:
        if self.state not in ENDED:  # an ended span takes no more events
            self._span.add_event("stop requested")
        self._stop.set()


class JobSupervisor:
    """Stages the plan's inputs, starts one rank per GPU in the placement group's bundles,
    and answers the control plane.

    Traced as ``job.run``, continuing the scheduler's ``job.place`` (``spec["traceparent"]``):
    staging and the preemption notice are its events, the ranks' spans its children. It is
    exported before ``status`` first reports the end (the control plane kills the actor next).
    """

    def __init__(
        self, job_id: str, attempt: int, spec: dict[str, Any], bundle_gpus: list[int]
    ) -> None:
        self.job_id, self.attempt = job_id, attempt
        self.spec = spec
        self.plan: dict[str, Any] = spec["plan"]
        self.bundle_gpus = bundle_gpus
        self.started_at = time.time()
        self.preempt_deadline: float | None = None
        self.ranks: list[Any] = []
        self._seen: list[int] = []
        self._phase = "staging"  # -> started | failed
        self._failure: str | None = None
        self._stopping = False
        self._status_lock = threading.Lock()
        self._buffer: list[dict[str, Any]] = []
        self._last_at = 0.0  # when a rank last reported anything (billing of an unseen end)
        self._replica: Any = None  # kind serve: the Serve application's watch
        self._replica_now: Any = None  # its last state (``_watch_replica``)
        self._replica_seen = ""
        tracing.configure("nuri-worker")
        self._span = tracing.start_span(
            "job.run",
            spec.get("traceparent"),
            {
                "nuri.job.id": job_id,
                "nuri.job.attempt": attempt,
                "nuri.job.kind": self.plan["kind"],
                "nuri.job.payload": self.plan["payload"],
                "nuri.placement.group": spec["placement_group"],
                "nuri.placement.gpus": bundle_gpus,
            },
        )
        self._span_open = True
        # Staging can take long (large inputs): the actor answers status calls meanwhile.
        threading.Thread(target=self._start, name=f"nuri-start-{job_id}", daemon=True).start()

    def _record(self, event: dict[str, Any]) -> None:
        with self._status_lock:
            self._buffer.append({"at": time.time(), "rank": 0, **event})
            self._last_at = max(self._last_at, float(self._buffer[-1]["at"]))

    def _start(self) -> None:
        try:
            if self.plan["payload"] == "model":
                self._stage()
            if self._stopping:
                self._phase = "stopped"
                return
            if self.plan["kind"] == SERVE_KIND:
                self._start_replica()
            else:
                self._start_ranks()
            self._phase = "started"
        except Exception as exc:
            from workers.staging import StagingError

            if isinstance(exc, StagingError):
                self._failure = f"staging failed ({exc.code}): {exc}"
            else:
                self._failure = f"could not start: {type(exc).__name__}: {exc}"
            self._record({"type": "log", "line": self._failure[:2000]})
            self._phase = "failed"

    def _stage(self) -> None:
        """Copy every input the plan names into the job's directory, verifying each."""
        from workers.execution import ExecutionPlan
        from workers.staging import stage_plan, storage_options_from_env

        plan = ExecutionPlan.from_dict(self.plan)
        for d in (plan.dirs.inputs, plan.dirs.checkpoints, plan.dirs.output, plan.dirs.scratch):
            Path(d).mkdir(parents=True, exist_ok=True)
        records = stage_plan(plan, storage_options_from_env())
        for r in records:  # where inside the job's own directory, not where on the server
            r["local_path"] = str(Path(r["local_path"]).relative_to(plan.dirs.root))
        self._record({"type": "staged", "records": records})
        self._span.add_event(
            "inputs staged",
            {
                "nuri.inputs": len(records),
                "nuri.inputs.bytes": sum(int(r["size_bytes"]) for r in records),
                "nuri.inputs.reused": sum(1 for r in records if r.get("reused")),
            },
        )
        for r in records:
            how = "reused" if r.get("reused") else "staged"
            self._record(
                {
                    "type": "log",
                    "line": f"{how} {r['role']} {r['name']} ({r['id']}): {r['size_bytes']} bytes, "
                    f"{r['files']} file(s), sha256 {r['sha256'][:16]}...",
                }
            )

    def _start_ranks(self) -> None:
        pg = ray.util.get_placement_group(self.spec["placement_group"])
        worker_cls = ray.remote(RankWorker)
        per_gpu = self.plan["payload"] == "model"
        # (bundle, GPUs of this rank, local rank): one rank per GPU for the real loops; the
        # synthetic payload has no devices and runs one process per bundle.
        layout = [
            (i, 1 if per_gpu else gpus, local)
            for i, gpus in enumerate(self.bundle_gpus)
            for local in range(gpus if per_gpu else 1)
        ]
        world = len(layout)
        self._span.set_attribute("nuri.world_size", world)
        run_span = tracing.traceparent_of(self._span)  # each rank's span is a child of it
        ranks: list[Any] = [
            worker_cls.options(
                num_cpus=0,
                num_gpus=gpus,
                max_concurrency=4,
                resources={self.spec["pool_resource"]: gpus},
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle
                ),
                **tracing.worker_options(),  # this actor's OTEL_* settings, as it got them
            ).remote(self.job_id, self.attempt, rank, world, local, self.plan, run_span)
            for rank, (bundle, gpus, local) in enumerate(layout)
        ]
        master = ray.get(ranks[0].endpoint.remote(), timeout=120)
        with self._status_lock:
            self.ranks = ranks
            self._seen = [0] * len(ranks)
        for r in ranks:
            r.start.remote(master)
        if self._stopping:
            for r in ranks:
                r.stop.remote()

    def _start_replica(self) -> None:
        """An endpoint's replica: one Serve application whose deployment reserves the GPUs
        on the node the engine chose (``controlplane.serving.replicas``)."""
        from controlplane.serving import replicas

        node, gpus = self.spec["assignment"][0]
        app = replica_app_name(self.job_id, self.attempt)
        replicas.deploy(
            self.plan,
            app=app,
            deployment=replica_deployment_name(self.job_id),
            pool=self.spec["pool"],
            node=str(node),
            gpus=int(gpus),
        )
        self._replica = replicas.Watch(app)
        threading.Thread(
            target=self._watch_replica, name=f"nuri-replica-{self.job_id}", daemon=True
        ).start()
        self._record({"type": "log", "line": f"Serve application {app} deployed on {node}"})
        self._span.add_event("replica deployed", {"nuri.serve.app": app})
        if self._stopping:
            replicas.delete(app)

    def _watch_replica(self) -> None:
        """Read the application's state every second, off the ``status`` path: Serve's
        controller can be slow to answer (deleting an application waits out its graceful
        shutdown), and ``status`` must answer the control plane at once."""
        from controlplane.serving import replicas

        while True:
            try:
                got = self._replica.state()
            except Exception as exc:  # the controller unreachable for now: say so, go on
                got = replicas.AppState(replicas.STARTING, f"Serve status unavailable: {exc}")
            self._replica_now = got
            if got.state != self._replica_seen:  # the job's log says how the replica fares
                self._replica_seen = got.state
                line = f"replica {got.state}" + (f": {got.message}" if got.message else "")
                self._record({"type": "log", "line": line[:2000]})
            if self._stopping and got.state == replicas.GONE:
                return
            time.sleep(1.0)

    def _replica_state(self) -> tuple[list[str], list[str]]:
        """The replica's Serve application as rank states (a replica never succeeds).
        Called under ``_status_lock``: reads the watch's last state, records nothing."""
        from controlplane.serving import replicas

        got = self._replica_now
        if got is None:
            return ["running"], []  # deployed, not read yet
        if self._stopping:
            if got.state == replicas.GONE:
                return ["preempted"], []
            return ["running"], []
        if got.state in (replicas.FAILED, replicas.GONE):
            return ["failed"], [got.message]
        return ["running"], []

    def ping(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "attempt": self.attempt, "started_at": self.started_at}

    def status(self, after_event: int, timeout_s: float = 1.0) -> dict[str, Any]:
        """Aggregate the ranks: overall state, and events after index ``after_event``.

        Events are kept for the whole attempt so a control plane that crashed after reading
        them but before storing them reads them again: it passes how many it has stored.
        Ranks that do not answer within ``timeout_s`` (still starting, or busy) count as
        running; a rank whose actor died fails the attempt. While inputs are being staged
        the attempt is running; a staging failure fails it.
        """
        # Calls can overlap (the actor is threaded and a control plane that gave up waiting
        # asks again): one at a time, and each rank's events are taken by absolute index.
        with self._status_lock:
            return self._status(after_event, timeout_s)

    def _status(self, after_event: int, timeout_s: float) -> dict[str, Any]:
        states: list[str] = []
        errors: list[str] = []
        if self._phase == "failed":
            states, errors = ["failed"], [self._failure or "could not start"]
        elif self._phase == "stopped":
            states = ["preempted"]
        elif self._replica is not None:
            states, errors = self._replica_state()
        elif self.ranks:
            states, errors = self._poll_ranks(timeout_s)
        else:
            states = ["running"]
        if "failed" in states:
            state = "failed"
        elif all(s == "succeeded" for s in states):
            state = "succeeded"
        elif all(s in ("preempted", "succeeded") for s in states) and "preempted" in states:
            state = "preempted"
        else:
            state = "running"
        if state != "running" and self._span_open:
            # Exported before the control plane hears of the end and kills this actor.
            self._span_open = False
            failed = ("; ".join(errors) or "a rank failed") if state == "failed" else None
            tracing.end(self._span, {"nuri.job.outcome": state}, error=failed)
            tracing.flush()
        return {
            "attempt": self.attempt,
            "state": state,
            "errors": errors,
            "events": self._buffer[after_event:],
            "total_events": len(self._buffer),
            "preempt_deadline": self.preempt_deadline,
            # The attempt's work ended by then when it is over (the control plane may hear of
            # it much later: after its own restart): it is billed to this moment.
            "last_event_at": self._last_at or None,
        }

    def _poll_ranks(self, timeout_s: float) -> tuple[list[str], list[str]]:
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
            self._last_at = max([self._last_at, *(float(e.get("at", 0.0)) for e in fresh)])
            states[i] = out["state"]
            if out["error"]:
                errors.append(f"rank {i}: {out['error']}")
        return states, errors

    def preempt(self, deadline: float) -> None:
        """Ask every rank to checkpoint and stop; the control plane kills us at ``deadline``."""
        self.preempt_deadline = deadline
        if self._span_open:
            self._span.add_event("preemption notice", {"nuri.preemption.deadline": deadline})
        self.stop()

    def stop(self) -> None:
        self._stopping = True
        for r in self.ranks:
            r.stop.remote()
        if self._replica is not None:
            from controlplane.serving import replicas

            replicas.delete(self._replica.app)  # drains: the gateway stops routing to it
