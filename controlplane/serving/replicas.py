"""The Ray side of one replica: a Ray Serve application pinned to the node the engine chose.

A replica is a job of kind ``serve``, launched like any job: the scheduler reserves a
placement group (for a replica it holds only the node's pin, see
``RayExecutor._placement_group``) and starts the job's supervisor there, which stages the
plan's inputs and then deploys one Serve application, ``names.replica_app_name(job, attempt)``,
whose single deployment reserves the replica's GPUs in a bundle pinned to that node
(``workers.serving.build_replica_app``). So the GPUs the engine counts are the GPUs Ray holds,
on the node the engine chose, and each replica starts, drains and dies on its own.

One application per replica rather than one per endpoint: Serve re-versions every deployment
of an application redeployed through the Python API (Ray 2.60), so adding a replica to a
shared application would restart the others, and one deployment's replicas cannot be pinned
to different nodes. The gateway routes among an endpoint's applications itself (it must
anyway: a request may only reach a replica in a pool its labels allow).

Serve runs without HTTP proxies (``proxy_location="Disabled"``): requests reach replicas
through deployment handles from the gateway, and nothing binds a port on the nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# Serve states -> what the supervisor reports.
RUNNING, STARTING, FAILED, GONE = "running", "starting", "failed", "gone"
# How long an application may stay UNHEALTHY (Serve restarting a dead replica) before the
# attempt counts as failed and the scheduler requeues the replica elsewhere.
UNHEALTHY_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class AppState:
    state: str  # running | starting | failed | gone
    message: str = ""


def ensure_serve() -> None:
    """Start Serve's controller on the cluster (once; later calls find it)."""
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return
    except ValueError:
        pass
    try:
        serve.start(proxy_location="Disabled")
    except Exception:
        # Another process started it between the look and the start: fine if it is there.
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)


def deploy(
    plan: dict[str, Any], *, app: str, deployment: str, pool: str, node: str, gpus: int
) -> None:
    """Deploy the replica's application without waiting for it to run (``state`` tells)."""
    from ray import serve

    from workers.serving import build_replica_app

    ensure_serve()
    target = build_replica_app(plan, pool=pool, node=node, gpus=gpus, name=deployment)
    serve.run_many(
        [serve.RunTarget(target=target, name=app, route_prefix=None)],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )


class Watch:
    """The state of one replica application, with the UNHEALTHY grace."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._unhealthy_since: float | None = None

    def state(self) -> AppState:
        from ray import serve

        status = serve.status().applications.get(self.app)
        if status is None:
            return AppState(GONE, f"Serve application {self.app} does not exist")
        name = getattr(status.status, "value", str(status.status))
        message = str(status.message or "")
        if name != "UNHEALTHY":
            self._unhealthy_since = None
        if name == "RUNNING":
            return AppState(RUNNING)
        if name in ("NOT_STARTED", "DEPLOYING"):
            return AppState(STARTING, message)
        if name == "DEPLOY_FAILED":
            return AppState(FAILED, f"the replica could not start: {message}"[:2000])
        if name == "UNHEALTHY":
            now = time.monotonic()
            since = self._unhealthy_since = self._unhealthy_since or now
            if now - since > UNHEALTHY_GRACE_S:
                return AppState(FAILED, f"the replica stayed unhealthy: {message}"[:2000])
            return AppState(STARTING, message)
        return AppState(GONE, f"Serve application {self.app} is {name.lower()}")


def delete(app: str) -> None:
    """Delete the replica's application (idempotent; does not wait for it to be gone)."""
    from ray import serve

    try:
        serve.delete(app, _blocking=False)
    except Exception:  # no Serve, no such application: nothing to delete
        return
