"""The Helm chart (charts/nuri), rendered by the real helm binary: it lints, every built-in
object validates against the Kubernetes schemas (kubernetes-validate, strict), the settings it
gives the containers are ones Nuri accepts in prod, the generated audit key is an Ed25519 key
Nuri loads, each pool becomes a Ray worker group advertising its resources, and bad values
fail with a clear message. No API server exists here: the RayCluster (a KubeRay custom
resource) is checked field by field instead."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controlplane.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "nuri"
HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
K8S_VERSION = "1.35.0"

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if HELM is None:  # `make test` installs it; never a silent skip there
        pytest.fail("helm not found: run `make helm` (make test does)")
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*sets: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> list[Any]:
    args = ["template", "nuri", str(CHART), "--namespace", "gpu"]
    for s in sets:
        args += ["--set", s]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[Any], kind: str) -> list[Any]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Any], kind: str, name: str) -> Any:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in by_kind(docs, kind)])
    return found[0]


def secret_data(docs: list[Any]) -> dict[str, str]:
    secret = one(docs, "Secret", "nuri-secrets")
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def container_env(container: dict[str, Any], secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would give it (secret refs resolved)."""
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_chart_lints() -> None:
    done = helm("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_built_in_objects_validate_against_kubernetes_schemas() -> None:
    docs = render("ingress.enabled=true", "ingress.tlsSecretName=nuri-tls")
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Secret", "StatefulSet", "Ingress", "RayCluster"} <= kinds
    for doc in docs:
        if doc["apiVersion"] == "ray.io/v1":
            continue  # a custom resource: checked in test_each_pool_is_a_ray_worker_group
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_containers_get_settings_nuri_accepts_in_prod() -> None:
    docs = render()
    secrets = secret_data(docs)
    api = one(docs, "Deployment", "nuri-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["command"][:2] == ["nuri", "api"] and "--workers" in api["command"]
    env = container_env(api, secrets)
    settings = Settings(
        **{k.removeprefix("NURI_").lower(): v for k, v in env.items() if k.startswith("NURI_")}
    )
    assert settings.env == "prod"
    assert settings.resolved_database_url == (
        f"postgresql+psycopg://nuri:{secrets['postgres-password']}@nuri-postgresql:5432/nuri"
    )
    assert settings.bootstrap_admin_token is not None and len(settings.bootstrap_admin_token) >= 32
    assert settings.ray_address == "ray://nuri-ray-head-svc:10001"  # KubeRay's head service
    # The audit key is mounted where NURI_AUDIT_KEY_PATH points, and Nuri loads it.
    mount = next(m for m in api["volumeMounts"] if m["name"] == "audit-key")
    assert env["NURI_AUDIT_KEY_PATH"].startswith(mount["mountPath"] + "/")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(secrets["audit-signing-key.pem"].encode(), None)
    assert isinstance(key, Ed25519PrivateKey)
    # The jobs area is the shared volume, read-only for the API (artifact downloads).
    jobs = next(m for m in api["volumeMounts"] if m["name"] == "checkpoints")
    assert str(settings.resolved_jobs_dir) == jobs["mountPath"] and jobs["readOnly"] is True
    # The scheduler shares the settings, has the checkpoint volume and names its lease holder.
    sched = one(docs, "Deployment", "nuri-scheduler")["spec"]
    assert sched["replicas"] == 2
    box = sched["template"]["spec"]["containers"][0]
    assert box["command"][:3] == ["python", "-m", "controlplane.scheduler"]
    assert "--holder=$(POD_NAME)" in box["command"]
    assert f"--jobs-root={jobs['mountPath']}" in box["command"]
    assert container_env(box, secrets)["NURI_DATABASE_URL"] == env["NURI_DATABASE_URL"]
    claim = one(docs, "PersistentVolumeClaim", "nuri-checkpoints")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # The API's request limits: the defaults, and values that reach Nuri's settings.
    assert (settings.max_request_bytes, settings.rate_limit_per_s) == (1 << 20, 50.0)
    assert settings.trusted_proxy_networks == ()


def test_request_limits_and_trusted_proxies_reach_the_api(tmp_path: Path) -> None:
    limits = {"perSecond": 2.5, "burst": 10}
    api_values = {"maxRequestBytes": 65536, "rateLimit": limits, "trustedProxies": "10.0.0.0/8"}
    docs = render(values={"api": api_values}, tmp=tmp_path)
    api = one(docs, "Deployment", "nuri-api")["spec"]["template"]["spec"]["containers"][0]
    env = container_env(api, secret_data(docs))
    settings = Settings(
        **{k.removeprefix("NURI_").lower(): v for k, v in env.items() if k.startswith("NURI_")}
    )
    assert settings.max_request_bytes == 65536
    assert (settings.rate_limit_per_s, settings.rate_limit_burst) == (2.5, 10)
    assert [str(n) for n in settings.trusted_proxy_networks] == ["10.0.0.0/8"]


def test_each_pool_is_a_ray_worker_group(tmp_path: Path) -> None:
    values = {
        "pools": [
            {"name": "kr-seoul-h200", "gpusPerNode": 8, "nodes": 8},
            {
                "name": "us-west-h100",
                "gpusPerNode": 4,
                "nodes": 2,
                "resources": {"limits": {"memory": "512Gi"}},
            },
        ]
    }
    docs = render(values=values, tmp=tmp_path)
    cluster = one(docs, "RayCluster", "nuri-ray")
    assert cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]} >= {
        6379,
        10001,
    }
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert list(groups) == ["kr-seoul-h200", "us-west-h100"]
    for pool in values["pools"]:
        group = groups[pool["name"]]
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == pool["nodes"]
        assert group["rayStartParams"]["num-gpus"] == str(pool["gpusPerNode"])
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == pool["gpusPerNode"]
        env = {e["name"]: e for e in worker["env"]}
        override = env["RAY_OVERRIDE_RESOURCES"]["value"].replace("$(NURI_NODE_NAME)", "gpu-node-7")
        # The resources Nuri's scheduler asks for (controlplane.ray_runtime.pool_resources).
        assert json.loads(override) == {
            f"pool:{pool['name']}": pool["gpusPerNode"],
            "nuri-node:gpu-node-7": 1,
        }
        assert env["NURI_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        mounts = {m["mountPath"] for m in worker["volumeMounts"]}
        assert {"/checkpoints", "/dev/shm"} <= mounts
    assert (
        groups["us-west-h100"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        == "512Gi"
    )


def test_external_database_and_existing_secret() -> None:
    url = "postgresql+psycopg://nuri@db.internal:5432/nuri"
    docs = render(f"database.url={url}", "postgresql.enabled=false")
    assert by_kind(docs, "StatefulSet") == []
    assert secret_data(docs)["database-url"] == url
    docs = render("auth.existingSecret=vault-synced", f"database.url={url}")
    assert by_kind(docs, "Secret") == []
    api = one(docs, "Deployment", "nuri-api")["spec"]["template"]["spec"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in api["containers"][0]["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"vault-synced"}
    assert api["volumes"][0]["secret"]["secretName"] == "vault-synced"


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["pools=null"], "pools"),
        (["pools[0].name=Bad_Name", "pools[0].gpusPerNode=8", "pools[0].nodes=1"], "/pools/0/name"),
        (["pools[0].gpusPerNode=0"], "gpusPerNode"),
        (["auth.bootstrapAdminToken=short"], "bootstrapAdminToken"),
        (["database.url=mysql://db/nuri"], "/database/url"),
        (["postgresql.enabled=false"], "Nuri needs a PostgreSQL"),
        (
            [
                'json:pools=[{"name":"a","gpusPerNode":8,"nodes":1},{"name":"a","gpusPerNode":8,"nodes":2}]'
            ],
            'pool "a" is listed twice',
        ),
    ],
)
def test_bad_values_fail_clearly(sets: list[str], words: str) -> None:
    args = ["template", "nuri", str(CHART)]
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    done = helm(*args)
    assert done.returncode != 0
    assert words in done.stderr, done.stderr
