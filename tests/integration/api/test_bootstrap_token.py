"""NURI_BOOTSTRAP_ADMIN_TOKEN: every form Settings accepts signs in as the platform admin;
what would lock the operator out is refused before anything is stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane import tokens
from controlplane.api.app import create_app
from controlplane.db.models import ApiToken, User
from controlplane.services.bootstrap import bootstrap
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, KEY_DIR, bearer, ok


def settings_with(token: str) -> Settings:
    return Settings(
        bootstrap_admin_token=token,
        home=KEY_DIR,
        audit_key_path=KEY_DIR / "audit-signing-key.pem",
        warm_planner=False,
    )


def whoami(engine: Engine, token: str, settings: Settings | None = None) -> dict[str, str]:
    client = TestClient(create_app(settings or settings_with(token), engine))
    return ok(client.get("/v1/users/me", headers=bearer(token)))  # type: ignore[no-any-return]


ACCEPTED = [
    pytest.param(tokens.generate(), id="nuri-token"),
    pytest.param(ADMIN_TOKEN, id="test-suite-constant"),
    pytest.param("nuri-bootstrap-" + "Ab3" * 14, id="helm-chart-form"),
    pytest.param("x" * tokens.MIN_SECRET_LEN, id="shortest"),
    pytest.param("NURI_" + "k" * 40, id="other-case-prefix"),
    pytest.param("q3J+/aZ9=~._-!#$%&'*^`|" + "0" * 20, id="punctuation"),
]


@pytest.mark.parametrize("token", ACCEPTED)
def test_accepted_bootstrap_tokens_sign_in(engine: Engine, token: str) -> None:
    me = whoami(engine, token)
    assert me["role"] == "platform_admin"


def test_a_token_set_on_a_later_start_also_signs_in(sqlite_engine: Engine) -> None:
    first, later = tokens.generate(), "operator-rotated-secret-0123456789abcdef"
    assert whoami(sqlite_engine, first)["role"] == "platform_admin"
    assert whoami(sqlite_engine, later)["role"] == "platform_admin"
    assert whoami(sqlite_engine, first, settings_with(later))["role"] == "platform_admin"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("nuri_" + "x" * 38, id="bad-checksum"),
        pytest.param(tokens.generate()[:-1], id="truncated"),
        pytest.param(tokens.generate() + "\n", id="trailing-newline"),
        pytest.param("short-secret", id="short"),
    ],
)
def test_bootstrap_refuses_what_could_never_sign_in(sqlite_engine: Engine, token: str) -> None:
    with pytest.raises(ValueError, match="nuri token new"):
        settings_with(token)
    # bootstrap() checks too (for callers that build no Settings) and writes nothing.
    with pytest.raises(ValueError, match="nuri token new"):
        bootstrap(sqlite_engine, token)
    with Session(sqlite_engine) as s:
        assert s.exec(select(User)).first() is None
        assert s.exec(select(ApiToken)).first() is None


def test_the_lockout_it_prevents(sqlite_engine: Engine) -> None:
    """Why: a malformed nuri_ secret, had it been stored, answers 401 however it is sent."""
    bad = "nuri_" + "x" * 38
    client = TestClient(create_app(settings_with(ADMIN_TOKEN), sqlite_engine))
    with Session(sqlite_engine) as s:
        admin = s.exec(select(User)).one()
        s.add(
            ApiToken(
                user_id=admin.id,
                name="legacy",
                token_hash=tokens.digest(bad),
                display_prefix=bad[:12],
                scopes=["read"],
            )
        )
        s.commit()
    assert client.get("/v1/users/me", headers=bearer(bad)).status_code == 401
