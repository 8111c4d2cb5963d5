"""Liveness and readiness are separate: /healthz (alive) and /readyz (takes submissions at
full speed: the planner warmed up), both unauthenticated, as the chart's probes use them."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from controlplane import planning
from tests.integration.api.test_errors import assert_error


def test_ready_only_once_the_planner_is_warm(
    sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planning, "_warm", threading.Event())  # as in a process just started
    assert sqlite_client.get("/healthz").status_code == 200, "alive while warming up"
    resp = sqlite_client.get("/readyz")
    body = assert_error(resp, 503, "not_ready")
    assert body["details"] == {"waiting_for": ["planner"]}
    assert resp.headers["retry-after"] == "1"
    planning.warm_up()
    ready = sqlite_client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "sqlite"}
