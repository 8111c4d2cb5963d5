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


def test_a_bootstrap_token_that_could_never_sign_in_is_refused() -> None:
    from controlplane import tokens

    good = tokens.generate()
    broken = good[:-1] + ("A" if good[-1] != "A" else "B")  # checksum wrong
    for bad, says in (
        (broken, "not a well-formed Nuri token"),
        ("nuri_" + "x" * 38, "not a well-formed Nuri token"),
        ("nuri_short", "not a well-formed Nuri token"),
        (good + "\n", "trailing newline"),
        ("operator-chosen-secret-with-enough-length\n", "trailing newline"),
        ("operator chosen secret with enough length", "whitespace"),
        ("operator-chosen-sécret-with-enough-length", "visible ASCII"),
        ("short", "at least 32 characters"),
    ):
        with pytest.raises(ValidationError, match=says) as caught:
            Settings(bootstrap_admin_token=bad)
        assert "nuri token new" in str(caught.value)
        assert bad.strip() not in str(caught.value), "the secret is never echoed"
    for fine in (good, "x" * 32, "nuri-test-bootstrap-admin-token-0123456789", "NURI_" + "y" * 40):
        assert Settings(bootstrap_admin_token=fine).bootstrap_admin_token == fine


def test_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NURI_TRUSTED_PROXIES", raising=False)
    assert Settings().trusted_proxy_networks == ()
    monkeypatch.setenv("NURI_TRUSTED_PROXIES", " 10.0.0.7, 10.1.0.0/16 ,fd00::/8,")
    assert [str(n) for n in Settings().trusted_proxy_networks] == [
        "10.0.0.7/32",
        "10.1.0.0/16",
        "fd00::/8",
    ]
    monkeypatch.setenv("NURI_TRUSTED_PROXIES", "10.0.0.7, ingress.local")
    with pytest.raises(ValidationError, match=r"'ingress\.local' is not an IP address"):
        Settings()
