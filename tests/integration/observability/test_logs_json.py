"""``NURI_LOG_FORMAT=json`` under ``nuri api --workers 2``: every log line is JSON (the spawned
workers' included), and each request's access line carries the trace and span ids of that
request's server span, which the API exported (to a receiver in its own process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port, nuri_server
from tests.integration.observability.otlp_receiver import receiver

ADMIN = "nuri-logs-json-admin-token-0123456789abcdef"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_json_log_lines_carry_the_trace_of_the_request_that_wrote_them(tmp_path: Path) -> None:
    port = free_port()
    callers = [f"00-{i:032x}-{i + 0xABC:016x}-01" for i in range(0x5EED, 0x5EED + 6)]
    with receiver(tmp_path) as got:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NURI_"))}
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": got.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "NURI_LOG_FORMAT": "json",
                "NURI_HOME": str(tmp_path / ".nuri"),
                "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
                "NURI_WARM_PLANNER": "false",
            }
        )
        args = ["api", "--workers", "2", "--port", str(port)]
        with nuri_server(args, port, env, tmp_path, tmp_path / "api.log"):
            for traceparent in callers:  # a connection each: both workers get some
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                    headers = {"Authorization": f"Bearer {ADMIN}", "traceparent": traceparent}
                    assert c.get("/v1/pools", headers=headers).status_code == 200
            wanted = {t.split("-")[1] for t in callers}
            spans = got.wait_for(
                lambda spans: (
                    wanted <= {s["trace_id"] for s in spans if s["name"] == "GET /v1/pools"}
                )
            )

    text = (tmp_path / "api.log").read_text().splitlines()
    records = [json.loads(x) for x in text if x.startswith("{")]
    started = [r for r in records if r["message"].startswith("Started server process")]
    assert len({r["pid"] for r in started}) == 2, "both spawned workers log JSON"
    assert not [x for x in text if "INFO:" in x], "no line in uvicorn's text format"
    servers = {s["trace_id"]: s for s in spans if s["name"] == "GET /v1/pools"}
    access = [r for r in records if r["logger"] == "uvicorn.access" and r["path"] == "/v1/pools"]
    assert len(access) == len(callers)
    for traceparent in callers:
        _, trace_id, caller_span, _ = traceparent.split("-")
        (line,) = [r for r in access if r.get("trace_id") == trace_id]
        assert (line["method"], line["status"]) == ("GET", 200)
        server = servers[trace_id]
        assert server["parent_span_id"] == caller_span, "the server span continues the caller"
        assert line["span_id"] == server["span_id"], "written inside that request's span"
        assert server["resource"]["process.pid"] == line["pid"]
    assert all("trace_id" not in r for r in started), "no request, no trace"
