"""`nuri endpoints create|list|get|delete` against a real server (uvicorn in a thread,
SQLite): options become an EndpointCreate, tables and JSON, and a refused input exits
non-zero with the API's code and message, creating nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.integration.cli.test_cli import nuri, server  # noqa: F401 (the server fixture)

POOL = {
    "name": "kr-test-h100",
    "gpu_model": "H100",
    "gpu_memory_gib": 80,
    "gpus_per_node": 8,
    "site": "Daejeon",
    "region": "kr-daejeon",
    "jurisdiction": "KR",
    "node_count": 2,
}


@pytest.fixture
def member_token(server: str) -> str:  # noqa: F811
    """A member user's token, with a pool and a quota to serve in."""
    root = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server, headers=root, timeout=60) as c:
        assert c.post("/v1/pools", json=POOL).status_code == 201
        member = {"name": "jeju-lab", "display_name": "Jeju Lab"}
        assert c.post("/v1/members", json=member).status_code == 201
        quota = {"member": "jeju-lab", "pool": POOL["name"], "nominal_gpus": 8}
        assert c.post("/v1/quotas", json=quota).status_code == 201
        user = c.post(
            "/v1/users", json={"email": "minji@jeju.example", "name": "M", "member": "jeju-lab"}
        ).json()
        token: str = c.post("/v1/tokens", json={"name": "t", "user_id": user["id"]}).json()["token"]
    return token


def test_create_list_get_delete(server: str, member_token: str) -> None:  # noqa: F811
    r = nuri(
        server,
        member_token,
        "endpoints",
        "create",
        "chat",
        "--model",
        "axk1-tiny",
        "--min-replicas",
        "0",
        "--max-replicas",
        "2",
        "--gpus-per-replica",
        "1",
        "--pool",
        POOL["name"],
        "--priority-class",
        "research",
        "--max-context",
        "512",
        "--max-tokens-default",
        "64",
        "--idle-s",
        "90",
    )
    assert r.exit_code == 0, r.output
    assert "created endpoint chat" in r.output and "'chat' at /openai/v1" in r.output

    r = nuri(server, member_token, "endpoints", "get", "chat", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert (got["min_replicas"], got["max_replicas"], got["gpus_per_replica"]) == (0, 2, 1)
    assert got["allowed_pools"] == [POOL["name"]] and got["priority_class"] == "research"
    assert got["config"]["max_context"] == 512 and got["config"]["max_tokens_default"] == 64
    assert got["config"]["idle_s"] == 90 and got["adapters"] == {}

    r = nuri(server, member_token, "endpoints", "get", "chat")
    assert r.exit_code == 0 and "0/0 ready (0-2)" in r.output and "scaled to zero" in r.output

    assert (
        nuri(server, member_token, "endpoints", "create", "two", "--model", "axk1-tiny").exit_code
        == 0
    )
    r = nuri(server, member_token, "endpoints", "list")
    assert r.exit_code == 0, r.output
    assert "chat" in r.output and "two" in r.output and "waiting" in r.output
    r = nuri(server, member_token, "endpoints", "list", "-q")
    assert sorted(r.output.split()) == ["chat", "two"]

    r = nuri(server, member_token, "endpoints", "delete", "chat")
    assert r.exit_code == 0 and "deleted endpoint chat" in r.output, r.output
    r = nuri(server, member_token, "endpoints", "list", "--json")
    assert [e["name"] for e in json.loads(r.output)["items"]] == ["two"]
    r = nuri(server, member_token, "endpoints", "get", "chat")
    assert r.exit_code == 1 and "404 not_found" in r.output
    r = nuri(server, member_token, "endpoints", "delete", "chat")
    assert r.exit_code == 1 and "404 not_found" in r.output


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (
            ["--min-replicas", "3", "--max-replicas", "2"],
            1,
            "min_replicas (3) exceeds max_replicas (2)",
        ),
        (["--pool", "nowhere"], 1, "422 unknown_pool"),
        (["--gpus-per-replica", "16"], 1, "422 exceeds_capacity"),
        (["--priority-class", "vip"], 1, "unknown priority class 'vip'"),
        (["--adapter", "tuned=art_doesnotexist"], 1, "422 unknown_adapter"),
        (["--max-context", "64", "--max-tokens-default", "64"], 1, "must be below max_context"),
        (["--adapter", "tuned"], 2, "--adapter takes name=art_id"),
    ],
)
def test_bad_input_exits_non_zero_with_the_apis_message(
    server: str,  # noqa: F811
    member_token: str,
    args: list[str],
    code: int,
    needle: str,
) -> None:
    r = nuri(server, member_token, "endpoints", "create", "chat", "--model", "axk1-tiny", *args)
    assert r.exit_code == code, r.output
    assert needle in r.output and "Traceback" not in r.output
    r = nuri(server, member_token, "endpoints", "list", "-q")
    assert r.exit_code == 0 and r.output.split() == []


def test_a_platform_admin_has_no_member_to_serve_for(server: str) -> None:  # noqa: F811
    r = nuri(server, ADMIN_TOKEN, "endpoints", "create", "chat", "--model", "axk1-tiny")
    assert r.exit_code == 1 and "403 member_required" in r.output
