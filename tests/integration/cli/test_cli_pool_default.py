"""`nuri admin pools create|update --default-borrowing`: what members without a quota row may
do in a pool, set from the CLI (a real server, SQLite)."""

from __future__ import annotations

import json

from tests.conftest import ADMIN_TOKEN
from tests.integration.cli.test_cli import nuri, server  # noqa: F401 (the server fixture)

POOL_ARGS = (
    "--gpu-model",
    "H100",
    "--gpu-memory-gib",
    "80",
    "--gpus-per-node",
    "8",
    "--site",
    "Daejeon",
    "--region",
    "kr-daejeon",
    "--jurisdiction",
    "KR",
)


def test_pool_default_borrowing_from_the_cli(server: str) -> None:  # noqa: F811
    r = nuri(server, ADMIN_TOKEN, "admin", "pools", "create", "kr-cli", *POOL_ARGS, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["default_borrowing_limit"] == "unlimited"
    r = nuri(
        server,
        ADMIN_TOKEN,
        "admin",
        "pools",
        "update",
        "kr-cli",
        "--default-borrowing",
        "3",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["default_borrowing_limit"] == 3
    r = nuri(server, ADMIN_TOKEN, "admin", "pools", "update", "kr-cli", "--default-borrowing", "-2")
    assert r.exit_code != 0 and "default_borrowing_limit" in r.output, r.output
    r = nuri(server, ADMIN_TOKEN, "admin", "pools", "update", "kr-cli")
    assert r.exit_code != 0 and "nothing to change" in r.output, r.output
    r = nuri(server, ADMIN_TOKEN, "admin", "pools", "list")
    assert r.exit_code == 0 and "default_borrowing_limit" in r.output, r.output
