"""Shared fixtures: real SQLite and PostgreSQL databases, the app, and a two-member world."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from controlplane.api.app import create_app
from controlplane.db.engine import make_engine, migrate
from controlplane.settings import Settings

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray runs its workers at nice 15 by default (RAY_worker_niceness) so that its own daemons stay
# responsive; beside the other pytest worker that starves the jobs of the tests' Rays (a
# one-minute job took eight). The tests' Rays run their workers at the tests' priority.
os.environ.setdefault("RAY_worker_niceness", "0")
# The CLI tests choose their terminal's width (COLUMNS in the runner's env); rich's consoles,
# made when the CLI is imported, would otherwise keep a COLUMNS inherited by the process (an
# xdist worker has COLUMNS=80) and fold the tables' cells.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

# `make test` runs two pytest workers (pytest-xdist, ``--dist loadgroup``). Every module with
# a test that starts Ray (marked ``ray``, or using a Ray fixture) is in one group, so those
# run one after another in one worker, each with the machine's Ray to itself as when run
# alone; every other module is one unit, so its module-scoped fixtures (a portal world, a
# server) start once. Without xdist the marks do nothing.
RAY_FIXTURES = frozenset({"ray_cluster", "local_ray"})


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ray_modules = {
        _module(item)
        for item in items
        if item.get_closest_marker("ray") is not None
        or set(getattr(item, "fixturenames", ())) & RAY_FIXTURES
    }
    for item in items:
        module = _module(item)
        item.add_marker(pytest.mark.xdist_group("ray" if module in ray_modules else module))


PG_URL = os.environ.get("NURI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_TOKEN = "nuri-test-bootstrap-admin-token-0123456789"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head once per run; each test gets a copy (CREATE ... TEMPLATE),
    which is much faster than running every migration again."""
    admin_url = make_url(PG_URL)
    name = f"nuri_tpl_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a clear failure, never a silent skip: make test starts PG
        pytest.fail(f"PostgreSQL at {PG_URL} is not usable ({exc}); run `make postgres`")
    eng = make_engine(admin_url.set(database=name).render_as_string(hide_password=False))
    migrate(eng)
    eng.dispose()  # a template must have no open connections when it is copied
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_empty_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (for migration tests)."""
    yield from _pg_database(None)


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the schema head for one test; dropped afterwards."""
    yield from _pg_database(pg_template)


def _pg_database(template: str | None) -> Iterator[str]:
    admin_url = make_url(PG_URL)
    name = f"nuri_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    clause = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    except Exception as exc:  # a clear failure, never a silent skip: make test starts PG
        pytest.fail(f"PostgreSQL at {PG_URL} is not usable ({exc}); run `make postgres`")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "nuri.db"
    eng = make_engine(f"sqlite:///{path}")
    migrate(eng)
    with eng.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    eng.dispose()
    return path


def _engine_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Engine:
    if backend == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "nuri.db")
        return make_engine(f"sqlite:///{tmp_path / 'nuri.db'}")
    url = request.getfixturevalue("pg_database")
    return make_engine(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = _engine_for(request.param, tmp_path, request)
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no schema at all (for the migration tests)."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    else:
        eng = make_engine(request.getfixturevalue("pg_empty_database"))
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path, sqlite_template: Path) -> Iterator[Engine]:
    shutil.copyfile(sqlite_template, tmp_path / "nuri.db")
    eng = make_engine(f"sqlite:///{tmp_path / 'nuri.db'}")
    yield eng
    eng.dispose()


KEY_DIR = Path(tempfile.mkdtemp(prefix="nuri-test-keys-"))


def make_client(engine: Engine) -> TestClient:
    # Tests never write under the repository's ./.nuri: one throwaway signing key for the run.
    settings = Settings(
        bootstrap_admin_token=ADMIN_TOKEN,
        home=KEY_DIR,
        audit_key_path=KEY_DIR / "audit-signing-key.pem",
    )
    app = create_app(settings, engine)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return make_client(engine)


@pytest.fixture
def sqlite_client(sqlite_engine: Engine) -> TestClient:
    return make_client(sqlite_engine)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Tenant:
    member: dict[str, Any]
    admin_token: str
    user_token: str
    user: dict[str, Any]
    admin: dict[str, Any]
    dataset: dict[str, Any] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    quota: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    artifact: dict[str, Any] = field(default_factory=dict)
    user_token_id: str = ""


@dataclass
class World:
    client: TestClient
    root: dict[str, str]
    pool: dict[str, Any]
    a: Tenant
    b: Tenant
    auditor_token: str

    def as_(self, token: str) -> dict[str, str]:
        return bearer(token)


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


def register_artifact(client: TestClient, job_id: str) -> dict[str, Any]:
    """What the scheduler records when a job succeeds (the job need not have run)."""
    from datetime import UTC, datetime

    from sqlmodel import Session

    from controlplane.db.models import Job
    from controlplane.services.artifacts import register_output

    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine, expire_on_commit=False) as s:
        job = s.get(Job, job_id)
        assert job is not None
        art = register_output(s, job, datetime.now(UTC), f"s3://out/{job_id}", "ab" * 32)
        s.commit()
        return art.model_dump(mode="json")


def build_world(client: TestClient) -> World:
    """Two members with an admin and a user each, a pool, quotas, budgets, datasets, jobs."""
    root = bearer(ADMIN_TOKEN)
    pool = ok(
        client.post(
            "/v1/pools",
            headers=root,
            json={
                "name": "kr-test-h200",
                "gpu_model": "H200",
                "gpu_memory_gib": 141,
                "gpus_per_node": 8,
                "site": "Seoul",
                "region": "kr-seoul",
                "jurisdiction": "KR",
                "max_classification": "classified",
                "interconnect_domains": ["nvl-a", "nvl-b"],
                "node_count": 4,
            },
        ),
        201,
    )
    tenants = []
    for name in ("alpha", "beta"):
        member = ok(
            client.post(
                "/v1/members", headers=root, json={"name": name, "display_name": name.title()}
            ),
            201,
        )
        admin = ok(
            client.post(
                "/v1/users",
                headers=root,
                json={
                    "email": f"admin@{name}.example",
                    "name": "Admin",
                    "role": "member_admin",
                    "member": name,
                },
            ),
            201,
        )
        admin_tok = ok(
            client.post("/v1/tokens", headers=root, json={"name": "t", "user_id": admin["id"]}), 201
        )["token"]
        user = ok(
            client.post(
                "/v1/users",
                headers=bearer(admin_tok),
                json={"email": f"user@{name}.example", "name": "User"},
            ),
            201,
        )
        user_tok = ok(
            client.post(
                "/v1/tokens", headers=bearer(admin_tok), json={"name": "t", "user_id": user["id"]}
            ),
            201,
        )
        t = Tenant(
            member=member,
            admin_token=admin_tok,
            user_token=user_tok["token"],
            user=user,
            admin=admin,
            user_token_id=user_tok["id"],
        )
        t.quota = ok(
            client.post(
                "/v1/quotas",
                headers=root,
                json={"member": name, "pool": "kr-test-h200", "nominal_gpus": 16},
            ),
            201,
        )
        t.budget = ok(
            client.post(
                "/v1/budgets",
                headers=root,
                json={"member": name, "period": "2026-Q4", "gpu_hours": 1000},
            ),
            201,
        )
        t.dataset = ok(
            client.post(
                "/v1/datasets",
                headers=bearer(t.user_token),
                json={
                    "name": f"{name}-corpus",
                    "uri": f"s3://{name}/corpus",
                    "labels": {"jurisdiction": "KR", "allowed_regions": ["kr-seoul"]},
                },
            ),
            201,
        )
        t.job = ok(
            client.post(
                "/v1/jobs",
                headers=bearer(t.user_token),
                json={"kind": "lora", "model": "axk1-tiny", "gpus": 8, "inputs": [t.dataset["id"]]},
            ),
            201,
        )
        t.artifact = register_artifact(client, t.job["id"])
        tenants.append(t)
    auditor = ok(
        client.post(
            "/v1/users",
            headers=root,
            json={"email": "auditor@nuri.example", "name": "Auditor", "role": "auditor"},
        ),
        201,
    )
    auditor_tok = ok(
        client.post("/v1/tokens", headers=root, json={"name": "t", "user_id": auditor["id"]}), 201
    )["token"]
    return World(
        client=client, root=root, pool=pool, a=tenants[0], b=tenants[1], auditor_token=auditor_tok
    )


@pytest.fixture
def world(client: TestClient) -> World:
    return build_world(client)


@pytest.fixture
def sqlite_world(sqlite_client: TestClient) -> World:
    return build_world(sqlite_client)
