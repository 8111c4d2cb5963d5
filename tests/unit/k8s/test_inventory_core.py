"""The pure Kubernetes inventory core, table-driven, on Node objects written from the
documented GPU feature discovery and topology labels."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from controlplane.k8s import core
from controlplane.k8s.core import (
    Add,
    Ignore,
    PoolFacts,
    Quarantine,
    RegisteredNode,
    Remove,
    Update,
)

POOL_LABEL = "nuri.io/pool"
POOLS = {
    "kr-h200": PoolFacts("kr-h200", "kr-central", "KR", 8, ("kr-h200-d0",), "H200"),
    "eu-h100": PoolFacts("eu-h100", "eu-west", "DE", 8, ("eu-h100-d0",), "H100 SXM"),
}


class NodeObj:
    """Builder for a Node as the API server returns it (camelCase JSON)."""

    def __init__(self, name: str) -> None:
        self.obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    POOL_LABEL: "kr-h200",
                    "nvidia.com/gpu.product": "NVIDIA-H200",
                    "nvidia.com/gpu.count": "8",
                    "nvidia.com/gpu.memory": "143771",
                    "nvidia.com/gpu.clique": "7f3c9a.1",
                    "topology.kubernetes.io/region": "kr-central",
                    "topology.kubernetes.io/zone": "kr-central-a",
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "190", "nvidia.com/gpu": "8"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def label(self, key: str, value: str | None) -> NodeObj:
        labels = self.obj["metadata"]["labels"]
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        return self

    def allocatable(self, gpus: str | None) -> NodeObj:
        alloc = self.obj["status"]["allocatable"]
        if gpus is None:
            alloc.pop("nvidia.com/gpu", None)
        else:
            alloc["nvidia.com/gpu"] = gpus
        return self

    def not_ready(self, status: str = "False") -> NodeObj:
        self.obj["status"]["conditions"] = [{"type": "Ready", "status": status}]
        return self

    def cordon(self) -> NodeObj:
        self.obj["spec"]["unschedulable"] = True
        return self

    def taint(self, key: str, effect: str) -> NodeObj:
        self.obj["spec"].setdefault("taints", []).append({"key": key, "effect": effect})
        return self

    def seen(self) -> core.ObservedNode:
        return core.observe(self.obj, POOL_LABEL)


def reg(name: str, **kw: Any) -> RegisteredNode:
    base: dict[str, Any] = {
        "pool": "kr-h200",
        "domain": "7f3c9a-1",
        "gpus": 8,
        "status": "ready",
        "source": "k8s",
    }
    base.update(kw)
    return RegisteredNode(name=name, **base)


# --- observe -------------------------------------------------------------------------------


def test_observe_reads_the_feature_discovery_and_topology_labels() -> None:
    n = NodeObj("gpu-1").seen()
    assert n == core.ObservedNode(
        name="gpu-1",
        pool="kr-h200",
        gpu_product="NVIDIA-H200",
        gpu_count=8,
        gpu_memory_mib=143771,
        domain="7f3c9a-1",
        gpus=8,
        region="kr-central",
        zone="kr-central-a",
        ready=True,
        cordoned=False,
    )
    assert n.status == "ready"


@pytest.mark.parametrize(
    ("node", "status"),
    [
        (NodeObj("n").not_ready(), "down"),
        (NodeObj("n").not_ready("Unknown"), "down"),
        (NodeObj("n").cordon(), "cordoned"),
        (NodeObj("n").cordon().taint("node.kubernetes.io/unschedulable", "NoSchedule"), "cordoned"),
        (NodeObj("n").taint("maintenance", "NoExecute"), "cordoned"),
        (NodeObj("n").taint("maintenance", "NoSchedule"), "cordoned"),
        # GPU nodes carry this taint so that only GPU pods land there: not a cordon.
        (NodeObj("n").taint("nvidia.com/gpu", "NoSchedule"), "ready"),
        (NodeObj("n").taint("maintenance", "PreferNoSchedule"), "ready"),
        (NodeObj("n").cordon().not_ready(), "down"),
    ],
)
def test_status_from_readiness_cordon_and_taints(node: NodeObj, status: str) -> None:
    assert node.seen().status == status


@pytest.mark.parametrize(
    ("value", "gpus"),
    [("8", 8), ("4", 4), (None, 0), ("0", 0), ("garbage", 0), ("-2", 0), ("1500m", 0)],
)
def test_capacity_is_allocatable_not_the_count_label(value: str | None, gpus: int) -> None:
    assert NodeObj("n").allocatable(value).seen().gpus == gpus


def test_observe_tolerates_a_bare_node() -> None:
    n = core.observe({"metadata": {"name": "bare"}}, POOL_LABEL)
    assert (n.pool, n.gpus, n.region, n.ready, n.domain) == (None, 0, None, False, None)
    assert n.status == "down"


# --- selectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels", "match"),
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a", {"a": "x"}, True),
        ("a", {}, False),
        ("a=b, c", {"a": "b", "c": ""}, True),
        ("a=b,c", {"a": "b"}, False),
    ],
)
def test_selector(spec: str, labels: dict[str, str], match: bool) -> None:
    assert core.matches_selector(labels, core.parse_selector(spec)) is match


@pytest.mark.parametrize("spec", ["a!=b", "a==b"])
def test_selector_refuses_what_it_cannot_apply(spec: str) -> None:
    with pytest.raises(ValueError):
        core.parse_selector(spec)


# --- reconcile -----------------------------------------------------------------------------


def plan(observed: list[NodeObj], registered: list[RegisteredNode], complete: bool = True) -> Any:
    """The decisions, without the observed facts they carry (tested on their own below)."""
    out: list[Any] = []
    for d in core.reconcile(
        [o.seen() for o in observed], registered, POOLS, complete=complete
    ).decisions:
        if isinstance(d, Add):
            d = dataclasses.replace(d, observed=None)
        elif isinstance(d, Update):
            d = Update(d.name, {k: v for k, v in d.changes.items() if k != "observed"})
            if not d.changes:
                continue
        out.append(d)
    return tuple(out)


CASES: list[tuple[str, list[NodeObj], list[RegisteredNode], tuple[Any, ...]]] = [
    (
        "new node joins its pool",
        [NodeObj("gpu-1")],
        [],
        (Add("gpu-1", "kr-h200", "7f3c9a-1", 8, "ready"),),
    ),
    (
        "new node without clique takes the pool's first domain",
        [NodeObj("gpu-1").label("nvidia.com/gpu.clique", None)],
        [],
        (Add("gpu-1", "kr-h200", "kr-h200-d0", 8, "ready"),),
    ),
    (
        "new cordoned node joins cordoned",
        [NodeObj("gpu-1").cordon()],
        [],
        (Add("gpu-1", "kr-h200", "7f3c9a-1", 8, "cordoned"),),
    ),
    (
        "no pool label is ignored",
        [NodeObj("cpu-1").label(POOL_LABEL, None)],
        [],
        (Ignore("cpu-1", "no pool label"),),
    ),
    (
        "unknown pool is ignored",
        [NodeObj("gpu-1").label(POOL_LABEL, "us-a100")],
        [],
        (Ignore("gpu-1", "pool 'us-a100' is not registered"),),
    ),
    (
        "unchanged node: nothing to do",
        [NodeObj("gpu-1")],
        [reg("gpu-1")],
        (),
    ),
    (
        "allocatable drops: capacity follows",
        [NodeObj("gpu-1").allocatable("6")],
        [reg("gpu-1")],
        (Update("gpu-1", {"gpus": 6}),),
    ),
    (
        "node goes NotReady",
        [NodeObj("gpu-1").not_ready()],
        [reg("gpu-1")],
        (Update("gpu-1", {"status": "down"}),),
    ),
    (
        "cordon lifted",
        [NodeObj("gpu-1")],
        [reg("gpu-1", status="cordoned")],
        (Update("gpu-1", {"status": "ready"}),),
    ),
    (
        "clique changes: domain follows",
        [NodeObj("gpu-1").label("nvidia.com/gpu.clique", "7f3c9a.2")],
        [reg("gpu-1")],
        (Update("gpu-1", {"domain": "7f3c9a-2"}),),
    ),
    (
        "hand-registered node is adopted",
        [NodeObj("gpu-1")],
        [reg("gpu-1", source=None)],
        (Update("gpu-1", {"source": "k8s"}),),
    ),
    (
        "owned node gone from the full list is removed",
        [],
        [reg("gpu-1")],
        (Remove("gpu-1"),),
    ),
    (
        "hand-registered node absent from the cluster is left alone",
        [],
        [reg("manual-1", source=None)],
        (),
    ),
]


@pytest.mark.parametrize(
    ("observed", "registered", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_reconcile(
    observed: list[NodeObj], registered: list[RegisteredNode], expected: tuple[Any, ...]
) -> None:
    assert plan(observed, registered) == expected


def test_a_watch_event_never_removes_unseen_nodes() -> None:
    assert plan([NodeObj("gpu-2")], [reg("gpu-1")], complete=False) == (
        Add("gpu-2", "kr-h200", "7f3c9a-1", 8, "ready"),
    )


def test_observed_facts_are_carried_and_kept_current() -> None:
    facts = {"pool": "kr-h200", "region": "kr-central", "zone": "kr-central-a"}
    (add,) = core.reconcile([NodeObj("n").seen()], [], POOLS, complete=True).decisions
    assert isinstance(add, Add) and add.observed == facts
    # Unchanged facts: nothing to write.
    assert (
        core.reconcile(
            [NodeObj("n").seen()], [reg("n", observed=facts)], POOLS, complete=True
        ).decisions
        == ()
    )
    # A quarantined node still gets its facts refreshed (placement re-checks them).
    moved = NodeObj("n").label(core.ZONE, "kr-central-b").seen()
    (upd,) = core.reconcile(
        [moved], [reg("n", status="quarantined", observed=facts)], POOLS, complete=True
    ).decisions
    assert upd == Update("n", {"observed": {**facts, "zone": "kr-central-b"}})


@pytest.mark.parametrize(
    ("observed", "contradicts"),
    [
        (None, False),  # typed in by hand: trusted as typed
        ({"pool": "kr-h200", "region": "kr-central", "zone": "kr-central-a"}, False),
        ({"pool": "kr-h200", "region": "kr-central", "zone": None}, False),
        ({"pool": "kr-h200", "region": "us-east", "zone": None}, True),
        ({"pool": "kr-h200", "region": None, "zone": None}, True),
        ({"pool": "kr-h200", "region": "kr-central", "zone": "us-east-1a"}, True),
        ({"pool": "eu-h100", "region": "kr-central", "zone": None}, True),
        ({"pool": None, "region": "kr-central", "zone": None}, True),
    ],
)
def test_location_contradicts(observed: dict[str, Any] | None, contradicts: bool) -> None:
    assert core.location_contradicts(observed, "kr-h200", POOLS["kr-h200"]) is contradicts


# --- quarantine ----------------------------------------------------------------------------

QUARANTINE_CASES: list[tuple[str, NodeObj, str]] = [
    ("region contradicts", NodeObj("n").label(core.REGION, "us-east"), "region_mismatch"),
    ("region missing", NodeObj("n").label(core.REGION, None), "region_unknown"),
    ("zone outside region", NodeObj("n").label(core.ZONE, "eu-west-1a"), "zone_outside_region"),
    ("pool label moved", NodeObj("n").label(POOL_LABEL, "eu-h100"), "pool_label_changed"),
    ("pool label removed", NodeObj("n").label(POOL_LABEL, None), "pool_label_changed"),
    ("more GPUs than the pool", NodeObj("n").allocatable("16"), "too_many_gpus"),
    (
        "another GPU model",
        NodeObj("n").label(core.GPU_PRODUCT, "NVIDIA-A100-SXM4-80GB"),
        "gpu_model",
    ),
    ("a GH200 is no H200", NodeObj("n").label(core.GPU_PRODUCT, "NVIDIA-GH200-480GB"), "gpu_model"),
]


@pytest.mark.parametrize(
    ("product", "model", "matches"),
    [
        ("NVIDIA-H200", "H200", True),
        ("NVIDIA-H100-80GB-HBM3", "H100 SXM", True),
        ("NVIDIA-H100-80GB-HBM3", "h100", True),
        ("NVIDIA-H200-NVL", "H200", True),
        ("NVIDIA-GH200-480GB", "H200", False),
        ("NVIDIA-A100-SXM4-80GB", "H100", False),
        ("Tesla-V100-SXM2-16GB", "A100", False),
        (None, "H200", True),  # no GPU feature discovery on the node: nothing to contradict
        ("NVIDIA-H200", "", True),
    ],
)
def test_gpu_model_matches_the_feature_discovery_product(
    product: str | None, model: str, matches: bool
) -> None:
    assert core.gpu_model_matches(product, model) is matches


@pytest.mark.parametrize(
    ("node", "code"), [c[1:] for c in QUARANTINE_CASES], ids=[c[0] for c in QUARANTINE_CASES]
)
def test_contradicting_registered_node_is_quarantined(node: NodeObj, code: str) -> None:
    decisions = plan([node], [reg("n")])
    quarantines = [d for d in decisions if isinstance(d, Quarantine)]
    assert len(quarantines) == 1, decisions
    assert any(r.startswith(code) for r in quarantines[0].reasons), quarantines[0].reasons
    # The status is never moved by the same event: the quarantine owns it.
    assert not any(isinstance(d, Update) and "status" in d.changes for d in decisions)


@pytest.mark.parametrize(
    "node",
    [
        NodeObj("n").label(core.REGION, "us-east"),
        NodeObj("n").label(core.REGION, None),
        NodeObj("n").label(core.ZONE, "us-east-1b"),
    ],
)
def test_contradicting_new_node_is_added_quarantined(node: NodeObj) -> None:
    (add,) = plan([node], [])
    assert isinstance(add, Add)
    assert add.status == "quarantined" and add.reasons


def test_quarantine_is_sticky_and_not_repeated() -> None:
    # Labels fixed back: the reconciler does not lift the quarantine (only an admin does),
    # and an already quarantined node is not quarantined (audited) again.
    assert plan([NodeObj("n")], [reg("n", status="quarantined")]) == ()
    assert (
        plan([NodeObj("n").label(core.REGION, "us-east")], [reg("n", status="quarantined")]) == ()
    )
    assert plan([NodeObj("n").not_ready()], [reg("n", status="quarantined")]) == ()


def test_lifted_quarantine_with_labels_still_wrong_quarantines_again() -> None:
    (q,) = plan([NodeObj("n").label(core.REGION, "us-east")], [reg("n", status="ready")])
    assert isinstance(q, Quarantine)


def test_pool_region_is_the_truth_not_the_node() -> None:
    # A node in eu-h100 saying kr-central is quarantined even though kr-central is a real
    # region of another pool: the registry's pool decides.
    decisions = plan([NodeObj("n").label(POOL_LABEL, "eu-h100")], [reg("n", pool="eu-h100")])
    (q,) = decisions
    assert isinstance(q, Quarantine)
    assert any(r.startswith("region_mismatch") for r in q.reasons)


# --- purity and the residency invariant under fuzzed label changes ---------------------------


def test_core_imports_nothing_with_io() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(core.__file__).read_text())
    roots = {
        (n.module or "").split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.level == 0
    } | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots <= {"__future__", "collections", "dataclasses", "re", "typing"}


def _apply(registry: dict[str, RegisteredNode], decisions: tuple[Any, ...]) -> None:
    """What the adapter does to the registry, in memory (admin actions aside)."""
    for d in decisions:
        if isinstance(d, Add):
            registry[d.name] = RegisteredNode(
                d.name, d.pool, d.domain, d.gpus, d.status, "k8s", d.observed
            )
        elif isinstance(d, Update):
            registry[d.name] = dataclasses.replace(registry[d.name], **d.changes)
        elif isinstance(d, Quarantine):
            registry[d.name] = dataclasses.replace(registry[d.name], status="quarantined")
        elif isinstance(d, Remove):
            registry.pop(d.name)


REGIONS = ["kr-central", "eu-west", "us-east", None]
ZONES = ["kr-central-a", "eu-west-1a", "us-east-1b", None]
POOL_VALUES = ["kr-h200", "eu-h100", "unknown", None]


def test_fuzzed_label_changes_never_leave_a_contradicting_node_placeable() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    change = st.tuples(
        st.sampled_from(["n1", "n2", "n3"]),
        st.sampled_from(["region", "zone", "pool", "gpus", "ready", "cordon", "delete", "lift"]),
        st.integers(0, 3),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(change, min_size=1, max_size=40), st.booleans())
    def run(changes: list[tuple[str, str, int]], full_lists: bool) -> None:
        cluster: dict[str, NodeObj] = {}
        registry: dict[str, RegisteredNode] = {}
        for name, what, i in changes:
            node = cluster.setdefault(name, NodeObj(name))
            if what == "region":
                node.label(core.REGION, REGIONS[i])
            elif what == "zone":
                node.label(core.ZONE, ZONES[i])
            elif what == "pool":
                node.label(POOL_LABEL, POOL_VALUES[i])
            elif what == "gpus":
                node.allocatable(str(4 * i))
            elif what == "ready":
                node.not_ready("True" if i % 2 else "False")
            elif what == "cordon":
                node.obj["spec"]["unschedulable"] = bool(i % 2)
            elif what == "delete":
                cluster.pop(name)
            elif what == "lift" and name in registry:
                # An admin lifts the quarantine, perhaps before the labels are fixed; no event
                # comes from the cluster for it.
                registry[name] = dataclasses.replace(registry[name], status="ready")
            if what == "lift":
                pass
            elif full_lists:
                observed = [n.seen() for n in cluster.values()]
                _apply(
                    registry,
                    core.reconcile(observed, registry.values(), POOLS, complete=True).decisions,
                )
            else:
                # One watch event for the node that changed (DELETED: reconciled as absent).
                mine = [registry[name]] if name in registry else []
                seen = [cluster[name].seen()] if name in cluster else []
                plan = core.reconcile(seen, mine, POOLS, complete=not seen)
                _apply(registry, plan.decisions)
            # The invariant, after every step: a node placement may use (not quarantined,
            # observed facts inside its pool, as the scheduler's snapshot checks) is where
            # its pool says it is.
            for r in registry.values():
                if r.status == "quarantined" or r.name not in cluster:
                    continue
                if core.location_contradicts(r.observed, r.pool, POOLS[r.pool]):
                    continue
                seen_now = cluster[r.name].seen()
                assert seen_now.pool == r.pool, (r, seen_now)
                assert seen_now.region == POOLS[r.pool].region, (r, seen_now)
                assert seen_now.zone is None or seen_now.zone.startswith(POOLS[r.pool].region)

    run()


def test_settings_refuse_a_selector_the_client_cannot_apply(tmp_path: Any) -> None:
    from controlplane.settings import Settings

    assert Settings(home=tmp_path, k8s_node_selector="a=b,c").k8s_node_selector == "a=b,c"
    with pytest.raises(ValueError, match="equality"):
        Settings(home=tmp_path, k8s_node_selector="a!=b")


# --- RayClusters ---------------------------------------------------------------------------


def raycluster(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "nuri-ray", "namespace": "gpu"},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "ready", "why"),
    [
        (
            {
                "state": "ready",
                "conditions": [{"type": "HeadPodReady", "status": "True"}],
                "availableWorkerReplicas": 4,
                "desiredWorkerReplicas": 4,
                "desiredGPU": "32",
            },
            True,
            None,
        ),
        (
            {
                "state": "ready",  # stale state; the condition is the newer truth
                "conditions": [
                    {"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotFound"}
                ],
            },
            False,
            "HeadPodNotFound",
        ),
        ({"state": "ready"}, True, None),  # KubeRay before conditions
        ({"state": "suspended"}, False, "state is suspended"),
        (None, False, "state is unknown"),
    ],
)
def test_raycluster_health(status: dict[str, Any] | None, ready: bool, why: str | None) -> None:
    h = core.raycluster_health(raycluster(status))
    assert (h.name, h.namespace, h.head_ready) == ("nuri-ray", "gpu", ready)
    if why is None:
        assert h.reason is None
    else:
        assert h.reason is not None and why in h.reason


def test_raycluster_counts() -> None:
    h = core.raycluster_health(
        raycluster(
            {
                "state": "ready",
                "availableWorkerReplicas": 3,
                "desiredWorkerReplicas": 4,
                "desiredGPU": "32",
            }
        )
    )
    assert (h.available_workers, h.desired_workers, h.desired_gpus) == (3, 4, 32)
