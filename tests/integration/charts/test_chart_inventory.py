"""The chart's Kubernetes inventory values: off by default (no RBAC, no token in the pod);
enabled, a read-only ClusterRole bound to the scheduler's ServiceAccount, the token mounted in
the scheduler alone, and settings Nuri accepts. Rendered by the real helm binary and validated
against the Kubernetes schemas, as in test_helm_chart.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controlplane.settings import Settings

CHART = Path(__file__).resolve().parents[3] / "charts" / "nuri"
HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]


def render(*sets: str) -> list[Any]:
    if HELM is None:
        pytest.fail("helm not found: run `make helm` (make test does)")
    args = [HELM, "template", "nuri", str(CHART), "--namespace", "gpu"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def deployment(docs: list[Any], name: str) -> Any:
    (found,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return found


def test_off_by_default_grants_nothing() -> None:
    docs = render()
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    pod = deployment(docs, "nuri-scheduler")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert not any(n.startswith("NURI_K8S_") for n in env)


def test_enabled_reads_nodes_and_rayclusters_only(tmp_path: Path) -> None:
    docs = render(
        "inventory.enabled=true",
        "inventory.poolLabel=example.org/pool",
        "inventory.nodeSelector=nvidia.com/gpu.present=true",
    )
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            kubernetes_validate.validate(d, "1.35.0", strict=True)
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("",), ("nodes",)): {"get", "list", "watch"},
        (("ray.io",), ("rayclusters",)): {"get", "list", "watch"},
    }
    (binding,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nuri", "namespace": "gpu"}]

    pod = deployment(docs, "nuri-scheduler")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nuri" and pod["automountServiceAccountToken"] is True
    # The API pods never get the token.
    assert (
        deployment(docs, "nuri-api")["spec"]["template"]["spec"]["automountServiceAccountToken"]
        is False
    )
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    k8s = {k: v for k, v in env.items() if k.startswith("NURI_K8S_")}
    assert k8s == {
        "NURI_K8S_INVENTORY": "incluster",
        "NURI_K8S_POOL_LABEL": "example.org/pool",
        "NURI_K8S_NODE_SELECTOR": "nvidia.com/gpu.present=true",
        "NURI_K8S_TOLERATED_TAINTS": "nvidia.com/gpu",
        # The release's own RayCluster, where the chart renders it.
        "NURI_K8S_RAYCLUSTER": "gpu/nuri-ray",
        "NURI_K8S_RAYCLUSTER_POLL_S": "5",
    }
    (ray,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert f"{ray['metadata'].get('namespace', 'gpu')}/{ray['metadata']['name']}" == "gpu/nuri-ray"
    settings = Settings(
        home=tmp_path,
        k8s_inventory=k8s["NURI_K8S_INVENTORY"],  # type: ignore[arg-type]
        k8s_pool_label=k8s["NURI_K8S_POOL_LABEL"],
        k8s_node_selector=k8s["NURI_K8S_NODE_SELECTOR"],
        k8s_raycluster=k8s["NURI_K8S_RAYCLUSTER"],
        k8s_raycluster_poll_s=float(k8s["NURI_K8S_RAYCLUSTER_POLL_S"]),
    )
    assert settings.k8s_inventory == "incluster"


def test_another_raycluster_can_be_named_and_a_bad_name_fails() -> None:
    docs = render("inventory.enabled=true", "inventory.rayCluster=ray-system/shared")
    pod = deployment(docs, "nuri-scheduler")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["NURI_K8S_RAYCLUSTER"] == "ray-system/shared"
    assert HELM is not None
    done = subprocess.run(
        [HELM, "template", "nuri", str(CHART), "--set", "inventory.rayCluster=no-namespace"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "rayCluster" in done.stderr


def test_unknown_inventory_value_fails() -> None:
    assert HELM is not None
    done = subprocess.run(
        [HELM, "template", "nuri", str(CHART), "--set", "inventory.poolLable=x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "poolLable" in done.stderr
