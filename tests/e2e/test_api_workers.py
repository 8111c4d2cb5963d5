"""`nuri api --workers 2`: several API processes on one database, as deployed."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import free_port, nuri_server

ADMIN = "nuri-e2e-workers-admin-token-0123456789abcdef"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def test_two_api_workers_share_one_database_and_one_audit_chain(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NURI_HOME": str(tmp_path / ".nuri"),
        "NURI_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
        "NURI_WARM_PLANNER": "false",
    }
    env.pop("NURI_DATABASE_URL", None)
    url = f"http://127.0.0.1:{port}"
    args = ["api", "--workers", "2", "--port", str(port)]
    with nuri_server(args, port, env, tmp_path, tmp_path / "api.log") as proc:
        assert len(children(proc.pid)) >= 2, "the parent supervises two worker processes"

        root = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=url, headers=root, timeout=30) as c:
            pool = {
                "name": "kr-e2e-h200",
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": 8,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "node_count": 4,
            }
            assert c.post("/v1/pools", json=pool).status_code == 201
            assert c.post("/v1/members", json={"name": "m", "display_name": "M"}).status_code == 201
            user = c.post(
                "/v1/users", json={"email": "u@m.example", "name": "U", "member": "m"}
            ).json()
            token = c.post("/v1/tokens", json={"name": "t", "user_id": user["id"]}).json()["token"]
        body = {
            "kind": "lora",
            "model": "axk1-tiny",
            "gpus": 8,
            "allowed_pools": ["kr-e2e-h200"],
            "config": {"payload": "synthetic"},  # nothing runs here: the API is under test
        }
        mine = {"Authorization": f"Bearer {token}"}

        def submit(i: int) -> Any:
            with httpx.Client(base_url=url, headers=mine, timeout=60) as c:
                key = {"Idempotency-Key": f"k{i % 20}"}  # 20 distinct keys, each sent twice
                return c.post("/v1/jobs", json=body, headers=key)

        with ThreadPoolExecutor(8) as pool_:
            responses = list(pool_.map(submit, range(40)))
        assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
        assert sum(r.status_code == 201 for r in responses) == 20
        assert len({r.json()["id"] for r in responses}) == 20
        with httpx.Client(base_url=url, headers=root, timeout=30) as c:
            listed = c.get("/v1/jobs", params={"limit": 100}).json()["items"]
            assert len(listed) == 20
            report = c.get("/v1/audit/verify").json()
        assert report["ok"], report
