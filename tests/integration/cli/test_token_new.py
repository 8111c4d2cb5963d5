"""`nuri token new`: one well-formed token, usable as NURI_BOOTSTRAP_ADMIN_TOKEN."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from controlplane import tokens
from controlplane.api.app import create_app
from controlplane.cli.main import app
from controlplane.settings import Settings
from tests.conftest import KEY_DIR, bearer, ok

runner = CliRunner()


def test_token_new_prints_one_well_formed_token() -> None:
    made = set()
    for _ in range(3):
        r = runner.invoke(app, ["token", "new"])
        assert r.exit_code == 0, r.output
        assert r.output.endswith("\n") and r.output.count("\n") == 1
        token = r.output.strip()
        assert tokens.well_formed(token)
        made.add(token)
    assert len(made) == 3


def test_its_output_signs_in_as_the_bootstrap_admin(sqlite_engine: Engine) -> None:
    token = runner.invoke(app, ["token", "new"]).output.strip()
    settings = Settings(
        bootstrap_admin_token=token,
        home=KEY_DIR,
        audit_key_path=KEY_DIR / "audit-signing-key.pem",
        warm_planner=False,
    )
    client = TestClient(create_app(settings, sqlite_engine))
    assert ok(client.get("/v1/users/me", headers=bearer(token)))["role"] == "platform_admin"


def test_start_up_refuses_a_token_that_could_never_sign_in(tmp_path: Path) -> None:
    env = {"NURI_HOME": str(tmp_path), "NURI_BOOTSTRAP_ADMIN_TOKEN": "nuri_" + "x" * 38}
    for command in (["up", "--no-ray"], ["api"]):
        r = runner.invoke(app, command, env=env)
        assert r.exit_code == 2, r.output
        assert "nuri token new" in r.output and "x" * 38 not in r.output
    assert not (tmp_path / "nuri.db").exists(), "nothing was stored"
