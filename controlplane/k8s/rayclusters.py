"""KubeRay status: whether the RayCluster that runs Nuri's work can take new work now.

Nuri places work on one Ray cluster; under Kubernetes that is a KubeRay ``RayCluster``
(``NURI_K8S_RAYCLUSTER=<namespace>/<name>``, the chart's own). :class:`RayClusterWatch` reads
it through ``CustomObjectsApi`` (group ``ray.io``, version ``v1``) every few seconds in the
scheduler leader and keeps what it last saw; the scheduling cycle asks :meth:`pause_reason`
and, while the head is not ready, admits and preempts nothing and tells every waiting job why
(``quotas.pause``, reason code ``placement_paused``). Jobs already running are left alone:
their workers may well outlive a head restart, and the observe phase judges them.

Each change between ready and not ready is an audit event in the platform stream
(``raycluster.unready`` / ``raycluster.ready``). A RayCluster that does not exist pauses
placement too (nothing would run it). When the API server cannot be read, the last state
seen holds: an unreachable API server says nothing about Ray, and Ray's own errors reach the
scheduler anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from sqlalchemy import Engine
from sqlmodel import Session

from controlplane.audit import log as audit_log
from controlplane.audit.chain import PLATFORM_STREAM as PLATFORM
from controlplane.db.types import utcnow
from controlplane.k8s import core

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"


def ray_clusters(api: Any, namespace: str | None = None) -> list[core.RayClusterHealth]:
    """Read the KubeRay RayClusters of ``namespace`` (all namespaces when None)."""
    custom: Any = k8s_client.CustomObjectsApi(api)
    if namespace is None:
        listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    else:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return [core.raycluster_health(obj) for obj in listing.get("items") or ()]


class RayClusterWatch:
    """The health of one RayCluster, polled (see the module docstring)."""

    def __init__(self, db: Engine, api: Any, ref: str) -> None:
        self.db = db
        self.custom: Any = k8s_client.CustomObjectsApi(api)
        self.namespace, self.name = core.parse_raycluster_ref(ref)
        self.health: core.RayClusterHealth | None = None
        self._reason: str | None = None  # what pauses placement now; None: place
        self._polled = False
        self._lock = threading.Lock()

    def pause_reason(self) -> str | None:
        """Why placement must pause now; None while the head is ready (or not yet read)."""
        with self._lock:
            return self._reason

    def poll(self) -> str | None:
        """Read the RayCluster once; record a change of state; return :meth:`pause_reason`.

        Raises what the client raises when the API server cannot answer (the last state holds).
        """
        try:
            obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            health = None
            reason: str | None = f"RayCluster {self.namespace}/{self.name} does not exist"
        else:
            health = core.raycluster_health(obj)
            reason = health.reason
        with self._lock:
            before, self._reason, self.health = self._reason, reason, health
            first, self._polled = not self._polled, True
        if reason != before and (reason is not None or not first):
            self._record(reason, health)
        return reason

    def _record(self, reason: str | None, health: core.RayClusterHealth | None) -> None:
        details: dict[str, Any] = {"raycluster": f"{self.namespace}/{self.name}"}
        if health is not None:
            details.update(
                head_ready=health.head_ready,
                available_workers=health.available_workers,
                desired_workers=health.desired_workers,
                desired_gpus=health.desired_gpus,
            )
        if reason is not None:
            details["reason"] = reason
            log.warning("placement paused: %s", reason)
        else:
            log.info("placement resumed: RayCluster %s/%s is ready", self.namespace, self.name)
        action = "raycluster.unready" if reason is not None else "raycluster.ready"
        with Session(self.db) as s:
            audit_log.record(
                s,
                None,
                action,
                "raycluster",
                f"{self.namespace}/{self.name}",
                stream=PLATFORM,
                now=utcnow(),
                details=details,
            )
            s.commit()

    def run(
        self, stop: threading.Event, poll_s: float = 5.0, active: Callable[[], bool] = lambda: True
    ) -> None:
        """Poll every ``poll_s`` while ``active`` (the scheduler's leader lease) until ``stop``."""
        while not stop.is_set():
            if active():
                try:
                    self.poll()
                except Exception:
                    log.exception("RayCluster %s/%s: cannot read it", self.namespace, self.name)
            stop.wait(poll_s)


def start(
    settings: Any, db: Engine, api: Any, active: Callable[[], bool]
) -> tuple[RayClusterWatch, Callable[[], None]] | None:
    """Start polling ``NURI_K8S_RAYCLUSTER`` in a daemon thread (None when not set)."""
    if not settings.k8s_raycluster:
        return None
    watch = RayClusterWatch(db, api, settings.k8s_raycluster)
    stop = threading.Event()
    thread = threading.Thread(
        target=watch.run,
        args=(stop, settings.k8s_raycluster_poll_s, active),
        name="k8s-raycluster",
        daemon=True,
    )
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(10)

    return watch, stopper
