"""The Kubernetes inventory reconciler with the real ``kubernetes`` client, over HTTP, against
kmock's ``KubernetesEmulator`` (an in-memory API server in its own process,
``tests.k8s_emulator``), on SQLite and PostgreSQL.

The emulator ignores label selectors, so the node outside the selector here is also what
proves the reconciler filters on the client side. Every wait is on a condition, bounded.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from sqlalchemy import Engine
from sqlmodel import Session, select

import quotas
from controlplane.db.models import AuditEvent, Job, Node, Pool
from controlplane.k8s import rayclusters, reconciler
from controlplane.k8s.reconciler import NodeInventory, Report
from controlplane.scheduler import snapshot
from controlplane.settings import Settings
from tests.conftest import World, ok
from tests.k8s_emulator import EmulatedApiServer

pytestmark = pytest.mark.timeout(300)

POOL_LABEL = "nuri.io/pool"
SELECTOR = "nuri.io/gpu-node=true"


Emulator = EmulatedApiServer


def node_obj(
    name: str,
    *,
    pool: str | None = "kr-h200",
    region: str = "kr-central",
    zone: str = "kr-central-a",
    gpus: str = "8",
    selected: bool = True,
) -> dict[str, Any]:
    labels = {
        "nvidia.com/gpu.product": "NVIDIA-H200",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "143771",
        "nvidia.com/gpu.clique": "c0ffee.1",
        "topology.kubernetes.io/region": region,
        "topology.kubernetes.io/zone": zone,
    }
    if pool is not None:
        labels[POOL_LABEL] = pool
    if selected:
        labels["nuri.io/gpu-node"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "190", "nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def pool(engine: Engine) -> str:
    with Session(engine) as s:
        s.add(
            Pool(
                name="kr-h200",
                gpu_model="H200",
                gpu_memory_gib=141,
                gpus_per_node=8,
                site="Pangyo",
                region="kr-central",
                jurisdiction="KR",
                interconnect_domains=["kr-h200-d0"],
            )
        )
        s.commit()
    return "kr-h200"


def nodes(engine: Engine) -> dict[str, Node]:
    with Session(engine) as s:
        return {n.name: n for n in s.exec(select(Node)).all()}


def actions(engine: Engine, stream: str = "platform") -> list[tuple[str, str | None]]:
    with Session(engine) as s:
        rows = s.exec(
            select(AuditEvent).where(AuditEvent.stream == stream).order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
        return [(e.action, e.details.get("node") or e.details.get("name")) for e in rows]


def placeable(engine: Engine) -> set[str]:
    """Nodes the scheduler's snapshot offers for new admissions."""
    with Session(engine) as s:
        snap = snapshot.build(s, set(nodes(engine)), datetime.now(UTC), quotas.EngineConfig())
    return {n.name for n in snap.nodes if n.alive and n.free_gpus > 0}


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Watching:
    """``NodeInventory.watch`` in a thread, with every event's report kept."""

    def __init__(self, inv: NodeInventory, api: Any) -> None:
        self.inv, self.api = inv, api
        self.reports: list[Report] = []
        self.thread = threading.Thread(target=inv.watch, args=(self.reports.append,), daemon=True)

    def __enter__(self) -> Watching:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inv.stop_watch()
        self.thread.join(30)
        assert not self.thread.is_alive()


def inventory(engine: Engine, emulator: Emulator) -> tuple[NodeInventory, Any]:
    api_client = emulator.api_client()
    inv = NodeInventory(engine, api_client, pool_label=POOL_LABEL, selector=SELECTOR)
    return inv, k8s_client.CoreV1Api(api_client)


def test_list_registers_selected_pool_nodes_with_allocatable_capacity(
    engine: Engine, emulator: Emulator, pool: str
) -> None:
    inv, api = inventory(engine, emulator)
    api.create_node(node_obj("gpu-a"))
    api.create_node(node_obj("gpu-b", gpus="6"))
    api.create_node(node_obj("gpu-eu", region="eu-west", zone="eu-west-1a"))
    api.create_node(node_obj("cpu-1", pool=None))  # selected, but in no pool
    api.create_node(node_obj("other-team", selected=False))  # pool label, not selected

    inv.resync()

    got = nodes(engine)
    assert set(got) == {"gpu-a", "gpu-b", "gpu-eu"}
    assert (got["gpu-a"].gpus, got["gpu-b"].gpus) == (8, 6)
    assert got["gpu-a"].domain == "c0ffee-1" and got["gpu-a"].source == "k8s"
    assert got["gpu-a"].observed == {
        "pool": "kr-h200",
        "region": "kr-central",
        "zone": "kr-central-a",
    }
    # The GPU taint every GPU node carries is not a cordon.
    assert got["gpu-a"].status == "ready"
    assert got["gpu-eu"].status == "quarantined"
    assert "region_mismatch" in (got["gpu-eu"].quarantine_reason or "")
    with Session(engine) as s:
        assert "c0ffee-1" in s.exec(select(Pool)).one().interconnect_domains
    assert actions(engine).count(("node.quarantine", None)) == 1
    # A second list changes nothing and audits nothing.
    before = actions(engine)
    report = inv.resync()
    assert report.applied == [] and actions(engine) == before


def test_watch_follows_add_change_delete(engine: Engine, emulator: Emulator, pool: str) -> None:
    inv, api = inventory(engine, emulator)
    api.create_node(node_obj("gpu-a"))
    inv.resync()
    with Watching(inv, api):
        api.create_node(node_obj("other-team", selected=False))
        api.create_node(node_obj("gpu-b"))
        wait_for(lambda: "gpu-b" in nodes(engine), "gpu-b added")
        # Events arrive in order: the unselected node came first and was filtered out here.
        assert "other-team" not in nodes(engine)

        api.patch_node("gpu-b", {"status": {"allocatable": {"nvidia.com/gpu": "4"}}})
        wait_for(lambda: nodes(engine)["gpu-b"].gpus == 4, "capacity follows allocatable")

        api.patch_node("gpu-b", {"spec": {"unschedulable": True}})
        wait_for(lambda: nodes(engine)["gpu-b"].status == "cordoned", "cordon")

        api.patch_node("gpu-b", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
        wait_for(lambda: nodes(engine)["gpu-b"].status == "down", "not ready")

        api.delete_node("gpu-a")
        wait_for(lambda: "gpu-a" not in nodes(engine), "gpu-a removed")
    acts = [a for a, _ in actions(engine)]
    assert acts.count("node.k8s.add") == 2
    assert acts.count("node.k8s.update") == 3
    assert acts.count("node.k8s.remove") == 1


def test_label_drift_quarantines_within_one_event_and_blocks_admission(
    engine: Engine, emulator: Emulator, pool: str
) -> None:
    inv, api = inventory(engine, emulator)
    api.create_node(node_obj("gpu-a"))
    api.create_node(node_obj("gpu-b"))
    inv.resync()
    with Watching(inv, api) as watching:
        # The watch replays existing nodes first; wait until it has caught up.
        wait_for(lambda: len(watching.reports) >= 2, "watch caught up")
        seen = len(watching.reports)
        api.patch_node(
            "gpu-a", {"metadata": {"labels": {"topology.kubernetes.io/region": "us-east"}}}
        )
        wait_for(lambda: len(watching.reports) > seen, "the drift event")
        # That very event quarantined it.
        kinds = [type(d).__name__ for d in watching.reports[seen].applied]
        assert kinds == ["Update", "Quarantine"]  # the new facts, then the quarantine
        assert nodes(engine)["gpu-a"].status == "quarantined"

        # Fixing the label back does not lift it: only an admin does.
        seen = len(watching.reports)
        api.patch_node(
            "gpu-a", {"metadata": {"labels": {"topology.kubernetes.io/region": "kr-central"}}}
        )
        wait_for(lambda: len(watching.reports) > seen, "the fix event")
        assert nodes(engine)["gpu-a"].status == "quarantined"

        # A pool label moved to another pool quarantines too.
        seen = len(watching.reports)
        api.patch_node("gpu-b", {"metadata": {"labels": {POOL_LABEL: "eu-h100"}}})
        wait_for(lambda: len(watching.reports) > seen, "the pool move event")
        assert nodes(engine)["gpu-b"].status == "quarantined"
        assert "pool_label_changed" in (nodes(engine)["gpu-b"].quarantine_reason or "")

    # No new admission can land there: the scheduler's snapshot leaves them out of placement.
    assert placeable(engine) == set()

    # An admin lifts both quarantines. gpu-a's labels were fixed: it takes work again.
    # gpu-b still says another pool: placement keeps refusing it, from its observed facts,
    # even before the reconciler hears anything more about it.
    with Session(engine) as s:
        for row in s.exec(select(Node)).all():
            row.status = "ready"
            s.add(row)
        s.commit()
    assert placeable(engine) == {"gpu-a"}
    quarantines = [a for a in actions(engine) if a[0] == "node.quarantine"]
    assert quarantines == [("node.quarantine", "gpu-a"), ("node.quarantine", "gpu-b")]


def test_off_unless_configured(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.k8s_inventory == "off" and settings.k8s_raycluster == ""
    assert reconciler.start(settings, engine, lambda: True) is None
    for bad in ("nuri-ray", "/nuri-ray", "gpu/", "gpu/nuri/ray"):
        with pytest.raises(ValueError, match="namespace"):
            Settings(home=tmp_path, k8s_raycluster=bad)


def test_kubeconfig_mode_lists_and_watches_while_leading(
    engine: Engine, emulator: Emulator, pool: str, tmp_path: Path
) -> None:
    """The whole loop as the scheduler starts it: kubeconfig, list, watch, leader gate."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": emulator.url}}],
                "users": [{"name": "nuri", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "nuri"}}],
                "current-context": "emu",
            }
        )
    )
    settings = Settings(
        home=tmp_path,
        k8s_inventory="kubeconfig",
        k8s_kubeconfig=kubeconfig,
        k8s_pool_label=POOL_LABEL,
        k8s_node_selector=SELECTOR,
        k8s_raycluster="gpu/nuri-ray",
        k8s_raycluster_poll_s=0.1,
    )
    api = k8s_client.CoreV1Api(emulator.api_client())
    api.create_node(node_obj("gpu-a"))
    leading = threading.Event()
    asked: list[bool] = []

    def active() -> bool:
        asked.append(leading.is_set())
        return asked[-1]

    started = reconciler.start(settings, engine, active, retry_s=0.1)
    assert started is not None
    try:
        api.create_node(node_obj("gpu-b"))
        # A standby writes nothing: the loop went round twice without the lease.
        wait_for(lambda: len(asked) >= 2, "two rounds as standby")
        assert nodes(engine) == {}
        leading.set()
        wait_for(lambda: set(nodes(engine)) == {"gpu-a", "gpu-b"}, "the list")
        api.create_node(node_obj("gpu-c"))
        wait_for(lambda: "gpu-c" in nodes(engine), "the watch")
        # The RayCluster watch started with it: a cluster that does not exist pauses placement.
        wait_for(lambda: started.pause_reason() is not None, "the RayCluster read")
        assert "gpu/nuri-ray does not exist" in (started.pause_reason() or "")
        custom: Any = k8s_client.CustomObjectsApi(emulator.api_client())
        body = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "nuri-ray"}}
        ready = {"conditions": [{"type": "HeadPodReady", "status": "True"}]}
        custom.create_namespaced_custom_object(
            "ray.io", "v1", "gpu", "rayclusters", {**body, "status": ready}
        )
        wait_for(lambda: started.pause_reason() is None, "the RayCluster's head ready")
    finally:
        started.stop()


def test_quarantine_tells_running_owners_and_only_an_admin_lifts_it(
    world: World, emulator: Emulator
) -> None:
    """Through the API world: hand-typed nodes are adopted, owners of work on a quarantined
    node get the event in their own stream, and the admin's lift still places nothing there
    while the node's labels say another region."""
    engine = world.client.app.state.engine  # type: ignore[attr-defined]
    inv, api = inventory(engine, emulator)
    for name in ("kr-test-h200-000", "kr-test-h200-001"):
        api.create_node(node_obj(name, pool="kr-test-h200", region="kr-seoul", zone="kr-seoul-1"))
    inv.resync()
    got = nodes(engine)
    assert got["kr-test-h200-000"].source == "k8s"  # adopted
    assert got["kr-test-h200-002"].source is None  # typed in by hand, not in the cluster: kept
    with Session(engine) as s:
        job = s.get(Job, world.a.job["id"])
        assert job is not None
        job.status, job.pool = "running", "kr-test-h200"
        job.assignment = [["kr-test-h200-000", 8]]
        s.add(job)
        s.commit()

    api.patch_node(
        "kr-test-h200-000", {"metadata": {"labels": {"topology.kubernetes.io/region": "us-east"}}}
    )
    inv.resync()

    member_a, member_b = world.a.job["member_id"], world.b.job["member_id"]
    with Session(engine) as s:
        told = s.exec(
            select(AuditEvent).where(
                AuditEvent.action == "node.quarantine", AuditEvent.stream == member_a
            )
        ).one()
        assert told.details["jobs"] == [world.a.job["id"]]
        not_told = s.exec(
            select(AuditEvent).where(
                AuditEvent.stream == member_b, AuditEvent.action == "node.quarantine"
            )
        ).first()
        assert not_told is None
    shown = ok(world.client.get("/v1/nodes/kr-test-h200-000", headers=world.root))
    assert shown["status"] == "quarantined"
    assert shown["quarantine_reason"].startswith("region_mismatch")
    assert shown["observed"] == {"pool": "kr-test-h200", "region": "us-east", "zone": "kr-seoul-1"}
    # The running job keeps its node; new work does not land there.
    assert "kr-test-h200-000" not in placeable(engine)

    lifted = ok(
        world.client.patch(
            "/v1/nodes/kr-test-h200-000", headers=world.root, json={"status": "ready"}
        )
    )
    assert lifted["status"] == "ready" and lifted["quarantine_reason"] is None
    assert "kr-test-h200-000" not in placeable(engine)  # its labels still say us-east
    assert "kr-test-h200-001" in placeable(engine)
    inv.resync()  # the next list quarantines it again
    assert nodes(engine)["kr-test-h200-000"].status == "quarantined"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_label_changes_never_leave_a_contradicting_node_placeable(
    engine: Engine, emulator: Emulator, pool: str, seed: int
) -> None:
    """Random relabelling (region, zone, pool, capacity, cordon) and admin lifts, through the
    real client and watch: after every event, each node the scheduler's snapshot offers for
    new work is, by the cluster's current labels, where its pool says it is."""
    rng = random.Random(seed)
    inv, api = inventory(engine, emulator)
    names = ["gpu-a", "gpu-b", "gpu-c"]
    for name in names:
        api.create_node(node_obj(name))
    inv.resync()
    labels_now = {n: dict(node_obj(n)["metadata"]["labels"]) for n in names}
    choices: dict[str, list[str | None]] = {
        "topology.kubernetes.io/region": ["kr-central", "eu-west", "us-east"],
        "topology.kubernetes.io/zone": ["kr-central-a", "kr-central-b", "eu-west-1a"],
        POOL_LABEL: ["kr-h200", "eu-h100", "other"],
    }
    with Watching(inv, api) as watching:
        wait_for(lambda: len(watching.reports) >= len(names), "watch caught up")
        for _ in range(30):
            name = rng.choice(names)
            if rng.random() < 0.2:
                with Session(engine) as s:  # an admin lifts whatever is quarantined
                    for row in s.exec(select(Node).where(Node.status == "quarantined")).all():
                        row.status = "ready"
                        s.add(row)
                    s.commit()
            else:
                key = rng.choice(list(choices))
                value = rng.choice(choices[key])
                labels_now[name][key] = str(value)
                seen = len(watching.reports)
                api.patch_node(name, {"metadata": {"labels": {key: value}}})
                wait_for(lambda seen=seen: len(watching.reports) > seen, "the event")
            for node in placeable(engine):
                labels = labels_now[node]
                assert labels[POOL_LABEL] == "kr-h200", (node, labels)
                assert labels["topology.kubernetes.io/region"] == "kr-central", (node, labels)
                assert labels["topology.kubernetes.io/zone"].startswith("kr-central"), labels


def test_raycluster_whose_head_goes_unready(emulator: Emulator) -> None:
    """The RayCluster read through CustomObjectsApi: ready, then the head pod is lost."""
    client = emulator.api_client()
    custom: Any = k8s_client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        "ray.io",
        "v1",
        "gpu",
        "rayclusters",
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "nuri-ray", "namespace": "gpu"},
            "spec": {},
            "status": {
                "state": "ready",
                "conditions": [{"type": "HeadPodReady", "status": "True"}],
                "availableWorkerReplicas": 2,
                "desiredWorkerReplicas": 2,
                "desiredGPU": "16",
            },
        },
    )
    (health,) = rayclusters.ray_clusters(client, "gpu")
    assert health.head_ready and health.reason is None and health.desired_gpus == 16

    custom.patch_namespaced_custom_object(
        "ray.io",
        "v1",
        "gpu",
        "rayclusters",
        "nuri-ray",
        {
            "status": {
                "conditions": [
                    {"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotFound"}
                ],
                "availableWorkerReplicas": 1,
            }
        },
    )
    (health,) = rayclusters.ray_clusters(client)
    assert not health.head_ready
    assert health.reason is not None and "HeadPodNotFound" in health.reason
    assert health.available_workers == 1
