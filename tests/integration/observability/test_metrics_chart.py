"""The chart exposes the metrics port: in the pods (bound to the pod's own, private address),
in the Services (never behind the Ingress), with scrape annotations and an optional
ServiceMonitor."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.observability.metrics import open_without_token
from controlplane.settings import Settings
from tests.integration.charts.test_helm_chart import by_kind, one, render

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_api_and_scheduler_pods_serve_metrics_on_their_own_address() -> None:
    docs = render()
    for name in ("nuri-api", "nuri-scheduler"):
        pod = one(docs, "Deployment", name)["spec"]["template"]
        assert pod["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "prometheus.io/path": "/metrics",
        }
        box = pod["spec"]["containers"][0]
        env = env_of(box)
        assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env["NURI_METRICS_HOST"] == "$(POD_IP)"
        settings = Settings(metrics_port=env["NURI_METRICS_PORT"], metrics_host="10.42.0.7")
        assert settings.metrics_port == 9090
        # A pod address is private: the listener starts and asks no token.
        assert open_without_token(settings.metrics_host or "", settings.metrics_public)
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in box["ports"]
    api = one(docs, "Service", "nuri")
    assert {p["name"] for p in api["spec"]["ports"]} == {"http", "metrics"}
    scheduler = one(docs, "Service", "nuri-scheduler-metrics")
    assert scheduler["spec"]["clusterIP"] == "None"
    assert [p["targetPort"] for p in scheduler["spec"]["ports"]] == ["metrics"]
    assert by_kind(docs, "ServiceMonitor") == []
    docs = render("ingress.enabled=true")
    rules = one(docs, "Ingress", "nuri")["spec"]["rules"]
    ports = {p["backend"]["service"]["port"]["name"] for r in rules for p in r["http"]["paths"]}
    assert ports == {"http"}, "the metrics port is not published"


def test_optional_service_monitor_scrapes_both() -> None:
    docs = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
        "metrics.podAnnotations=false",
    )
    monitor = one(docs, "ServiceMonitor", "nuri")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    expr = monitor["spec"]["selector"]["matchExpressions"]
    assert expr == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["api", "scheduler"]}
    ]
    pod = one(docs, "Deployment", "nuri-api")["spec"]["template"]
    assert "annotations" not in pod["metadata"]
