"""Settings: safe local defaults, refusal of unsafe production configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controlplane.settings import Settings


def test_defaults_are_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NURI_DATABASE_URL", "NURI_HOME", "NURI_PORT", "NURI_ENV", "NURI_RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.env == "dev" and s.host == "127.0.0.1" and s.port == 8000
    assert s.ray_address is None
    assert s.resolved_database_url == f"sqlite:///{(Path('.nuri') / 'nuri.db').resolve()}"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURI_DATABASE_URL", "postgresql+psycopg://u@db/nuri")
    monkeypatch.setenv("NURI_PORT", "9001")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u@db/nuri" and s.port == 9001


def test_prod_refuses_sqlite_and_weak_bootstrap_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NURI_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(env="prod")
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(
            env="prod", database_url="postgresql+psycopg://u@db/n", bootstrap_admin_token="short"
        )
    Settings(env="prod", database_url="postgresql+psycopg://u@db/n", bootstrap_admin_token="x" * 40)


def test_bad_port_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(port=70000)
