"""The Ray side of one machine: a local Ray whose logical resources mirror the pools.

Each pool becomes a custom resource ``pool:<name>`` with as many units as the pool has GPUs,
and the GPUs are declared as logical ``num_gpus``, so placement works on a CPU-only machine
exactly as it would on the real cluster. ``NURI_RAY_ADDRESS`` joins an existing cluster
instead (KubeRay labels each worker group with its pool resource).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("nuri.ray")


@dataclass(frozen=True, slots=True)
class RayInfo:
    address: str
    resources: dict[str, float]


def pool_resources(pool_gpus: dict[str, int], node_names: list[str] = []) -> dict[str, float]:  # noqa: B006
    """``pool:<name>`` per pool (its GPUs) and ``nuri-node:<name>`` per node it hosts."""
    out = {f"pool:{name}": float(gpus) for name, gpus in sorted(pool_gpus.items()) if gpus > 0}
    out.update({f"nuri-node:{n}": 1.0 for n in node_names})
    return out


def start(
    pool_gpus: dict[str, int], address: str | None = None, node_names: list[str] | None = None
) -> RayInfo:
    """Start (or join, when ``address`` is given) Ray for this control plane.

    A local Ray is one Ray node standing in for every registered node: it advertises each
    node's ``nuri-node:<name>`` resource, so placement groups are pinned exactly as they would
    be on a cluster with one Ray node per machine.
    """
    import ray

    if address:
        ctx: Any = ray.init(address=address, namespace="nuri", log_to_driver=False)
    else:
        # address="local": always a new Ray of our own. Without it ray.init joins whatever
        # Ray RAY_ADDRESS or the machine's last `ray start` names (another user's, another
        # test run's) and refuses our resources there.
        ctx = ray.init(
            address="local",
            num_cpus=max(2, os.cpu_count() or 2),
            num_gpus=sum(pool_gpus.values()),
            resources=pool_resources(pool_gpus, node_names or []),
            namespace="nuri",
            include_dashboard=False,
            log_to_driver=False,
        )
    resources = {k: float(v) for k, v in ray.cluster_resources().items()}  # type: ignore[no-untyped-call]
    return RayInfo(
        address=str(getattr(ctx, "address_info", {}).get("address", "")), resources=resources
    )


def stop() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
