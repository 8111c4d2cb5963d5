"""The chart's ``tracing.otlpEndpoint``: the API and the scheduler get it as the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (which switches tracing on), nothing else does, and an
endpoint that is not an http(s) URL is refused."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.observability import tracing
from tests.integration.charts.test_helm_chart import CHART, by_kind, helm, one, render

pytestmark = [pytest.mark.helm, pytest.mark.timeout(300)]

ENDPOINT = "http://otel-collector.observability:4318"


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_otlp_endpoint_reaches_the_api_and_the_scheduler() -> None:
    docs = render(f"tracing.otlpEndpoint={ENDPOINT}")
    for name in ("nuri-api", "nuri-scheduler"):
        env = env_of(one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ENDPOINT
        assert tracing.exporters({k: str(v) for k, v in env.items()}) == ["otlp"]
    # The Ray pods get it from the scheduler, per job (runtime_env), not from the chart.
    for kind in ("StatefulSet", "RayCluster"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in str(by_kind(docs, kind))


def test_no_endpoint_no_tracing() -> None:
    docs = render()
    for name in ("nuri-api", "nuri-scheduler"):
        box = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert not [k for k in env_of(box) if k.startswith("OTEL_")]


def test_an_endpoint_that_is_no_url_is_refused() -> None:
    done = helm("template", "nuri", str(CHART), "--set", "tracing.otlpEndpoint=collector:4318")
    assert done.returncode != 0
    assert "otlpEndpoint" in done.stderr, done.stderr
