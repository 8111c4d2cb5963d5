"""Pure core of the Kubernetes inventory: node objects in, Nuri's view and decisions out.

Nothing here talks to Kubernetes or the database, reads the environment or a clock. The
adapter (``controlplane.k8s.reconciler``) lists and watches Nodes, turns each into a plain
dict (what the API server sends, or ``ApiClient().sanitize_for_serialization(V1Node)``),
and hands them here with the registry as plain data.

Residency is the point: a pool's region is an admin-asserted fact and a node's labels are
only what the node (or whoever can label it) claims. A node whose observed region or zone
contradicts its pool, or whose pool label moved away from the pool it was registered in, is
*quarantined*: it stays in the registry, keeps its running work, takes no new admissions, and
stays quarantined until an admin lifts it. The reconciler never lifts a quarantine itself,
because relabelling a node back is exactly what an attacker who relabelled it would do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# NVIDIA GPU feature discovery labels (k8s-device-plugin/gpu-feature-discovery).
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_COUNT = "nvidia.com/gpu.count"
GPU_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU
GPU_CLIQUE = "nvidia.com/gpu.clique"  # <cluster uuid>.<clique id>: one NVLink domain
GPU_RESOURCE = "nvidia.com/gpu"
REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
# Taints that only keep non-GPU pods away; GPU workloads tolerate them.
DEFAULT_TOLERATED_TAINTS = ("nvidia.com/gpu",)
BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")

# Registry node statuses (controlplane.db.models.NodeStatus values; kept as strings so that
# this module imports nothing from the database layer).
READY, CORDONED, DOWN, QUARANTINED = "ready", "cordoned", "down", "quarantined"
# ``Node.source`` of the nodes this reconciler owns (and may remove).
SOURCE = "k8s"


@dataclass(frozen=True)
class ObservedNode:
    """What a Kubernetes Node says about itself."""

    name: str
    pool: str | None
    gpu_product: str | None
    gpu_count: int | None
    gpu_memory_mib: int | None
    domain: str | None
    gpus: int
    region: str | None
    zone: str | None
    ready: bool
    cordoned: bool
    taints: tuple[str, ...] = ()

    @property
    def facts(self) -> dict[str, str | None]:
        """What the registry keeps (``Node.observed``) so placement can re-check residency
        without the cluster: the pool label, region and zone last seen."""
        return {"pool": self.pool, "region": self.region, "zone": self.zone}

    @property
    def status(self) -> str:
        """The registry status these facts give (before any quarantine)."""
        if not self.ready:
            return DOWN
        if self.cordoned or self.taints:
            return CORDONED
        return READY


@dataclass(frozen=True)
class PoolFacts:
    """A registered pool's admin-asserted facts the check needs."""

    name: str
    region: str
    jurisdiction: str
    gpus_per_node: int
    interconnect_domains: tuple[str, ...] = ()
    gpu_model: str = ""  # "H200", "H100 SXM": its first word must name the node's product


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9A-Za-z]+", text.upper()) if w]


def gpu_model_matches(product: str | None, model: str) -> bool:
    """Whether GPU feature discovery's ``nvidia.com/gpu.product`` ("NVIDIA-H100-80GB-HBM3")
    names the pool's GPU model ("H100", "H100 SXM"): the model's first word is one of the
    product's words. Unknown on either side is not a contradiction."""
    words = _words(model)
    return not product or not words or words[0] in _words(product)


@dataclass(frozen=True)
class RegisteredNode:
    name: str
    pool: str
    domain: str
    gpus: int
    status: str
    source: str | None = None
    observed: Mapping[str, str | None] | None = None


@dataclass(frozen=True)
class Add:
    name: str
    pool: str
    domain: str
    gpus: int
    status: str
    reasons: tuple[str, ...] = ()  # why it is added quarantined, if it is
    observed: Mapping[str, str | None] | None = None


@dataclass(frozen=True)
class Update:
    name: str
    changes: Mapping[str, Any]  # field -> new value: gpus, domain, status, source


@dataclass(frozen=True)
class Quarantine:
    name: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Ignore:
    """A node Nuri does not take in, and why (shown in the reconciler's log and report)."""

    name: str
    reason: str


Decision = Add | Update | Quarantine | Remove | Ignore


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    def of(self, kind: type[Any]) -> list[Any]:
        return [d for d in self.decisions if isinstance(d, kind)]


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _quantity(value: Any) -> int:
    """A GPU count quantity ("8"); anything unreadable or fractional counts as none."""
    n = _int(value)
    return n if n is not None and n > 0 else 0


def matches_selector(labels: Mapping[str, str], selector: Mapping[str, str | None]) -> bool:
    """Equality selector (``key: value``, or ``key: None`` for "the key exists").

    Applied on the client side as well as sent to the API server: emulators and some proxies
    ignore ``labelSelector``, and a node outside the selection must never become a pool node.
    """
    for key, want in selector.items():
        if key not in labels or (want is not None and labels[key] != want):
            return False
    return True


def parse_selector(spec: str) -> dict[str, str | None]:
    """``"a=b,c"`` -> ``{"a": "b", "c": None}`` (the equality subset of label selectors)."""
    out: dict[str, str | None] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if key.endswith("!") or value.startswith("="):
            raise ValueError(f"only equality selectors are supported, not {part!r}")
        out[key.strip()] = value.strip() if sep else None
    return out


def observe(
    obj: Mapping[str, Any],
    pool_label: str,
    tolerated_taints: Iterable[str] = DEFAULT_TOLERATED_TAINTS,
) -> ObservedNode:
    """Nuri's view of one Node object (API JSON: camelCase keys)."""
    meta = obj.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    tolerated = set(tolerated_taints)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    taints = tuple(
        sorted(
            f"{t.get('key')}:{t.get('effect')}"
            for t in spec.get("taints") or ()
            if t.get("effect") in BLOCKING_EFFECTS
            and t.get("key") not in tolerated
            # The cordon taint is the cordon itself, reported as ``cordoned``.
            and t.get("key") != "node.kubernetes.io/unschedulable"
        )
    )
    clique = labels.get(GPU_CLIQUE)
    return ObservedNode(
        name=str(meta.get("name", "")),
        pool=labels.get(pool_label) or None,
        gpu_product=labels.get(GPU_PRODUCT),
        gpu_count=_int(labels.get(GPU_COUNT)),
        gpu_memory_mib=_int(labels.get(GPU_MEMORY)),
        domain=clique.replace(".", "-") if clique else None,
        gpus=_quantity((status.get("allocatable") or {}).get(GPU_RESOURCE)),
        region=labels.get(REGION) or None,
        zone=labels.get(ZONE) or None,
        ready=ready,
        cordoned=bool(spec.get("unschedulable")),
        taints=taints,
    )


def location_contradicts(
    observed: Mapping[str, str | None] | None, registered_pool: str, pool: PoolFacts
) -> bool:
    """Whether a registry node's last observed facts (``Node.observed``) place it outside
    its pool. Nodes typed in by hand have none and are trusted as the admin typed them.

    The scheduler's snapshot applies this on every cycle, so a node an admin released from
    quarantine before its labels were fixed still takes no new work.
    """
    if observed is None:
        return False
    region, zone = observed.get("region"), observed.get("zone")
    return (
        observed.get("pool") != registered_pool
        or region != pool.region
        or (zone is not None and not zone.startswith(pool.region))
    )


def contradictions(node: ObservedNode, pool: PoolFacts) -> tuple[str, ...]:
    """Why the node's observed location cannot be trusted to be in ``pool`` (empty: fine).

    A node with no region label is quarantined too: residency that cannot be checked is not
    assumed. A zone must lie inside the pool's region (zones are named ``<region><suffix>``
    by every provider and by the Kubernetes topology convention).
    """
    reasons = []
    if node.region is None:
        reasons.append(f"region_unknown: no {REGION} label (pool {pool.name} is in {pool.region})")
    elif node.region != pool.region:
        reasons.append(
            f"region_mismatch: node says {node.region}, pool {pool.name} is in {pool.region} "
            f"({pool.jurisdiction})"
        )
    if node.zone is not None and not node.zone.startswith(pool.region):
        reasons.append(
            f"zone_outside_region: zone {node.zone} is not in pool {pool.name}'s region "
            f"{pool.region}"
        )
    if not gpu_model_matches(node.gpu_product, pool.gpu_model):
        reasons.append(
            f"gpu_model_mismatch: node has {node.gpu_product}, pool {pool.name} is {pool.gpu_model}"
        )
    if node.gpus > pool.gpus_per_node:
        reasons.append(
            f"too_many_gpus: {node.gpus} allocatable, pool {pool.name} has {pool.gpus_per_node} "
            "per node"
        )
    return tuple(reasons)


def reconcile(
    observed: Iterable[ObservedNode],
    registered: Iterable[RegisteredNode],
    pools: Mapping[str, PoolFacts],
    *,
    complete: bool,
) -> Plan:
    """The registry changes that bring Nuri in step with what Kubernetes reports.

    ``complete`` says ``observed`` is the whole (selected) node list, as after a list call:
    only then are registered nodes this reconciler owns and did not see removed. A watch
    event passes one node with ``complete=False``.
    """
    reg = {r.name: r for r in registered}
    seen: set[str] = set()
    out: list[Decision] = []
    for node in sorted(observed, key=lambda n: n.name):
        seen.add(node.name)
        mine = reg.get(node.name)
        if mine is None:
            out.extend(_new(node, pools))
        else:
            out.extend(_known(node, mine, pools))
    if complete:
        for name in sorted(set(reg) - seen):
            if reg[name].source == SOURCE:
                out.append(Remove(name))
    return Plan(tuple(out))


def _new(node: ObservedNode, pools: Mapping[str, PoolFacts]) -> list[Decision]:
    if node.pool is None:
        return [Ignore(node.name, "no pool label")]
    pool = pools.get(node.pool)
    if pool is None:
        return [Ignore(node.name, f"pool {node.pool!r} is not registered")]
    reasons = contradictions(node, pool)
    domain = node.domain or (pool.interconnect_domains[0] if pool.interconnect_domains else "")
    return [
        Add(
            name=node.name,
            pool=pool.name,
            domain=domain or f"{pool.name}-d0",
            gpus=min(node.gpus, pool.gpus_per_node),
            status=QUARANTINED if reasons else node.status,
            reasons=reasons,
            observed=node.facts,
        )
    ]


def _known(
    node: ObservedNode, mine: RegisteredNode, pools: Mapping[str, PoolFacts]
) -> list[Decision]:
    out: list[Decision] = []
    pool = pools.get(mine.pool)
    reasons: list[str] = []
    if node.pool != mine.pool:
        reasons.append(
            f"pool_label_changed: registered in {mine.pool}, "
            f"label now says {node.pool or 'nothing'}"
        )
    if pool is not None:
        reasons.extend(contradictions(node, pool))
    changes: dict[str, Any] = {}
    gpus = min(node.gpus, pool.gpus_per_node) if pool is not None else node.gpus
    if gpus != mine.gpus:
        changes["gpus"] = gpus
    if node.domain is not None and node.domain != mine.domain:
        changes["domain"] = node.domain
    if mine.source != SOURCE:
        changes["source"] = SOURCE  # adopted: typed in by hand, now seen in the cluster
    if dict(mine.observed or {}) != node.facts:
        changes["observed"] = node.facts
    # A quarantine is sticky: only an admin lifts it (see the module docstring).
    if mine.status != QUARANTINED and not reasons and node.status != mine.status:
        changes["status"] = node.status
    if changes:
        out.append(Update(node.name, changes))
    if reasons and mine.status != QUARANTINED:
        out.append(Quarantine(node.name, tuple(reasons)))
    return out


# --- KubeRay RayClusters -------------------------------------------------------------------


@dataclass(frozen=True)
class RayClusterHealth:
    """What a RayCluster's status says about placing work on it (KubeRay ``ray.io/v1``)."""

    name: str
    namespace: str
    head_ready: bool
    available_workers: int
    desired_workers: int
    desired_gpus: int
    reason: str | None  # why placement should pause; None when the head is ready


def parse_raycluster_ref(ref: str) -> tuple[str, str]:
    """``"<namespace>/<name>"`` -> (namespace, name); ValueError on anything else."""
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"a RayCluster is named <namespace>/<name>, not {ref!r}")
    return namespace, name


def raycluster_health(obj: Mapping[str, Any]) -> RayClusterHealth:
    """Read a RayCluster object. The ``HeadPodReady`` condition decides when KubeRay reports
    conditions (1.2+); older operators only set ``status.state`` ("ready" when the head is up).
    A cluster with no status yet is not ready: the operator has not seen it."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    head = conditions.get("HeadPodReady")
    if head is not None:
        ready = head.get("status") == "True"
        why = head.get("reason") or head.get("message") or "HeadPodReady is not True"
    else:
        state = status.get("state")
        ready = state == "ready"
        why = f"state is {state or 'unknown'}"
    return RayClusterHealth(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        head_ready=ready,
        available_workers=_int(status.get("availableWorkerReplicas")) or 0,
        desired_workers=_int(status.get("desiredWorkerReplicas")) or 0,
        desired_gpus=_quantity(status.get("desiredGPU")),
        reason=None if ready else f"Ray head of {meta.get('name', '?')} is not ready ({why})",
    )
