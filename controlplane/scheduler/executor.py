"""Ray adapter: inventory, placement groups pinned to the engine's nodes, supervisors.

Every object is named from the job (``nuri-job-<id>`` for the supervisor,
``nuri-job-<id>-a<attempt>`` for the placement group) so that a retry, or a control plane
restarted mid-launch, finds what an earlier attempt created instead of creating it twice.

Nodes are identified by a custom resource ``nuri-node:<name>`` that each Ray node advertises
for the Nuri nodes it hosts (one each on a real cluster; all of them on a one-machine local
Ray). Pools are ``pool:<name>`` resources; GPUs are Ray's ``GPU`` (logical on CPU machines).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from controlplane.observability import tracing
from controlplane.scheduler.supervisor import JobSupervisor
from controlplane.serving.names import SERVE_KIND, replica_app_name

log = logging.getLogger("nuri.scheduler.ray")

NODE_PREFIX = "nuri-node:"
POOL_PREFIX = "pool:"
# A token amount of the node's resource: enough to pin a bundle, never a real constraint.
PIN = 0.001


def supervisor_name(job_id: str) -> str:
    return f"nuri-job-{job_id}"


def placement_group_name(job_id: str, attempt: int) -> str:
    return f"nuri-job-{job_id}-a{attempt}"


class PlacementFailed(Exception):
    """Ray could not reserve the bundles in time (inventory and Ray disagree)."""


class SupervisorLost(Exception):
    """The supervisor actor died or its node is gone."""


class Unanswered(Exception):
    """The supervisor did not reply within this cycle's deadline."""


@dataclass(frozen=True, slots=True)
class Inventory:
    # Nuri node name -> Ray node id, for alive Ray nodes only.
    alive: dict[str, str] = field(default_factory=dict)
    # Ray nodes advertising Nuri nodes or pools that the admin registry does not know.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    job_id: str
    attempt: int
    pool: str
    assignment: tuple[tuple[str, int], ...]
    # The job's ExecutionPlan (workers.execution) as stored: the only thing the workers get.
    plan: dict[str, Any]
    # W3C traceparent the supervisor's ``job.run`` span continues (observability.tracing).
    traceparent: str | None = None


class RayExecutor:
    def __init__(self, ready_timeout_s: float = 30.0, call_timeout_s: float = 15.0) -> None:
        self.ready_timeout_s = ready_timeout_s
        self.call_timeout_s = call_timeout_s

    def session(self) -> str | None:
        """The Ray session this process is connected to (a new one each time a Ray cluster
        starts): an attempt launched in another session went away with its Ray."""
        try:
            return str(ray.get_runtime_context().get_session_name())
        except Exception:  # not connected, or a client without a session name
            return None

    # --- inventory -------------------------------------------------------------------------

    def inventory(self, registered: set[str]) -> Inventory:
        alive: dict[str, str] = {}
        unknown: list[str] = []
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            if not node.get("Alive"):
                continue
            resources: dict[str, float] = node.get("Resources", {})
            names = [k[len(NODE_PREFIX) :] for k in resources if k.startswith(NODE_PREFIX)]
            for name in names:
                if name in registered:
                    alive[name] = node["NodeID"]
                else:
                    unknown.append(
                        f"ray node {node['NodeID'][:12]} advertises unregistered node {name}"
                    )
            if not names and any(k.startswith(POOL_PREFIX) for k in resources):
                unknown.append(
                    f"ray node {node['NodeID'][:12]} offers a pool but names no Nuri node"
                )
        return Inventory(alive=alive, unknown=tuple(sorted(unknown)))

    # --- launch ----------------------------------------------------------------------------

    def _placement_group(self, spec: LaunchSpec, ray_nodes: dict[str, str]) -> PlacementGroup:
        name = placement_group_name(spec.job_id, spec.attempt)
        try:
            found: PlacementGroup = ray.util.get_placement_group(name)
            return found
        except ValueError:
            pass
        if spec.plan.get("kind") == SERVE_KIND:
            # A replica's GPUs are reserved by its Serve deployment's own bundle, pinned to
            # the same node (``controlplane.serving.replicas``): this group holds the pin only.
            bundles: list[dict[str, float]] = [
                {f"{NODE_PREFIX}{n}": PIN} for n, _ in spec.assignment
            ]
        else:
            bundles = [
                {"GPU": float(g), f"{POOL_PREFIX}{spec.pool}": float(g), f"{NODE_PREFIX}{n}": PIN}
                for n, g in spec.assignment
            ]
        hosts = {ray_nodes.get(n, n) for n, _ in spec.assignment}
        if len(bundles) == 1:
            strategy = "STRICT_PACK"
        elif len(hosts) == len(bundles):
            strategy = "STRICT_SPREAD"
        else:  # several Nuri nodes on one Ray node (local mode): the pins do the placing
            strategy = "PACK"
        created: PlacementGroup = placement_group(
            bundles, strategy=strategy, name=name, lifetime="detached"
        )
        return created

    def launch(self, spec: LaunchSpec, ray_nodes: dict[str, str]) -> None:
        """Reserve the bundles and start the supervisor; safe to call again after a crash."""
        failure = self.launch_many([spec], ray_nodes).get(spec.job_id)
        if failure is not None:
            raise failure

    def launch_many(
        self, specs: list[LaunchSpec], ray_nodes: dict[str, str]
    ) -> dict[str, PlacementFailed]:
        """Launch several jobs at once; returns the ones whose bundles Ray could not reserve.

        Every placement group is requested first and their readiness is awaited together
        (one wait instead of a round trip each; Ray's control service still reserves them
        one after another, so a burst is admitted about as fast as before). A group
        that makes no progress for ``ready_timeout_s`` while none of the others gets ready
        either is removed and its job reported (the scheduler puts it back in the queue).
        """
        if any(spec.plan.get("kind") == SERVE_KIND for spec in specs):
            from controlplane.serving import replicas

            replicas.ensure_serve()  # once, here, before replicas' supervisors deploy
        groups = {spec.job_id: self._placement_group(spec, ray_nodes) for spec in specs}
        waiting = {groups[spec.job_id].ready(): spec for spec in specs}
        failed: dict[str, PlacementFailed] = {}
        while waiting:
            ready, _ = ray.wait(
                list(waiting), num_returns=len(waiting), timeout=self.ready_timeout_s
            )
            if not ready:  # no progress in a whole timeout: give the rest up
                for spec in waiting.values():
                    remove_placement_group(groups[spec.job_id])
                    failed[spec.job_id] = PlacementFailed(
                        f"placement group for {spec.job_id} not ready in {self.ready_timeout_s}s"
                    )
                break
            for ref in ready:
                del waiting[ref]
        for spec in specs:
            if spec.job_id not in failed:
                self._start_supervisor(spec, groups[spec.job_id])
        return failed

    def _start_supervisor(self, spec: LaunchSpec, pg: PlacementGroup) -> None:
        existing = self._supervisor(spec.job_id)
        if existing is not None:
            info = ray.get(existing.ping.remote(), timeout=self.call_timeout_s)
            if info["attempt"] == spec.attempt:
                return
            ray.kill(existing)  # a stale attempt's supervisor: its bundles are gone
        payload = {
            "plan": spec.plan,
            "placement_group": placement_group_name(spec.job_id, spec.attempt),
            "pool_resource": f"{POOL_PREFIX}{spec.pool}",
            "pool": spec.pool,
            "assignment": [[n, g] for n, g in spec.assignment],
            "traceparent": spec.traceparent,
        }
        ray.remote(JobSupervisor).options(
            name=supervisor_name(spec.job_id),
            lifetime="detached",
            num_cpus=0,
            max_concurrency=8,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0
            ),
            **tracing.worker_options(),  # the OTEL_* settings, when this process traces
        ).remote(spec.job_id, spec.attempt, payload, [g for _, g in spec.assignment])

    # --- observe and control ---------------------------------------------------------------

    def _supervisor(self, job_id: str) -> Any | None:
        try:
            return ray.get_actor(supervisor_name(job_id))
        except ValueError:
            return None

    def status_many(
        self, jobs: list[tuple[str, int, int]], timeout_s: float | None = None
    ) -> dict[str, dict[str, Any] | Exception | None]:
        """Ask every supervisor at once; ``(job_id, attempt, events already stored)`` each.

        Per job: the report; None when no supervisor of that attempt exists; SupervisorLost
        when its actor died; Unanswered when it did not reply in time (still starting, or
        its node is slow) -- the caller decides how long that may last. One slow supervisor
        never holds up the cycle for the others.
        """
        out: dict[str, dict[str, Any] | Exception | None] = {}
        refs: dict[Any, tuple[str, int]] = {}
        for job_id, attempt, after in jobs:
            sup = self._supervisor(job_id)
            if sup is None:
                out[job_id] = None
            else:
                refs[sup.status.remote(after)] = (job_id, attempt)
        if refs:
            ready, _ = ray.wait(
                list(refs),
                num_returns=len(refs),
                timeout=timeout_s if timeout_s is not None else 0.5,
            )
            for ref in refs:
                job_id, attempt = refs[ref]
                if ref not in ready:
                    out[job_id] = Unanswered(f"supervisor of {job_id} has not answered yet")
                    continue
                try:
                    report: dict[str, Any] = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                    out[job_id] = SupervisorLost(
                        f"supervisor of {job_id} lost: {type(exc).__name__}"
                    )
                    continue
                out[job_id] = report if report["attempt"] == attempt else None
        return out

    def status(self, job_id: str, attempt: int, after_event: int) -> dict[str, Any] | None:
        """One supervisor's report (see ``status_many``); raises on loss or silence."""
        got = self.status_many([(job_id, attempt, after_event)], timeout_s=self.call_timeout_s)[
            job_id
        ]
        if isinstance(got, Exception):
            raise SupervisorLost(str(got))
        return got

    def preempt(self, job_id: str, deadline: float) -> None:
        sup = self._supervisor(job_id)
        if sup is not None:
            sup.preempt.remote(deadline)

    def teardown(self, job_id: str, attempt: int, serve: bool = False) -> None:
        """Kill the supervisor (its ranks die with it) and free the bundles; ``serve``: an
        endpoint's replica, whose Serve application is deleted too. Idempotent."""
        sup = self._supervisor(job_id)
        if sup is not None:
            ray.kill(sup, no_restart=True)
        if serve:
            from controlplane.serving import replicas

            replicas.delete(replica_app_name(job_id, attempt))
        try:
            pg = ray.util.get_placement_group(placement_group_name(job_id, attempt))
        except ValueError:
            return
        remove_placement_group(pg)

    def placement(self, job_id: str, attempt: int) -> list[str] | None:
        """Ray node ids holding the job's bundles, in bundle order (for checks and tests)."""
        try:
            pg = ray.util.get_placement_group(placement_group_name(job_id, attempt))
        except ValueError:
            return None
        table = ray.util.placement_group_table(pg)
        nodes = table.get("bundles_to_node_id", {})
        return [nodes[i] for i in sorted(nodes)]
