"""First start (bootstrap admin, priority classes) and the demo consortium, both idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from controlplane import demo, tokens
from controlplane.db.engine import migrate
from controlplane.db.models import ApiToken, Dataset, Member, Node, Pool, Quota, Role, User
from controlplane.services.bootstrap import bootstrap

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def row_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {
            t.name: int(s.exec(select(func.count()).select_from(t)).one())  # type: ignore[call-overload]
            for t in SQLModel.metadata.sorted_tables
        }


def test_bootstrap_generates_a_token_once(engine: Engine) -> None:
    migrate(engine)
    first = bootstrap(engine, None)
    assert first.generated_token is not None and tokens.well_formed(first.generated_token)
    second = bootstrap(engine, None)
    assert second.generated_token is None, "the secret is shown once, never regenerated"
    assert second.admin_user_id == first.admin_user_id
    with Session(engine) as s:
        admins = s.exec(select(User).where(User.role == Role.PLATFORM_ADMIN.value)).all()
        assert len(admins) == 1
        stored = s.exec(select(ApiToken)).all()
        assert [t.token_hash for t in stored] == [tokens.digest(first.generated_token)]


def test_bootstrap_token_from_the_environment(engine: Engine) -> None:
    migrate(engine)
    secret = "operator-chosen-secret-with-enough-length"
    result = bootstrap(engine, secret)
    assert result.generated_token is None, "an operator's secret is never echoed"
    with Session(engine) as s:
        assert s.exec(select(ApiToken).where(ApiToken.token_hash == tokens.digest(secret))).one()


def test_demo_consortium_is_complete_and_idempotent(engine: Engine) -> None:
    migrate(engine)
    admin = bootstrap(engine, None).admin_user_id
    summary = demo.seed(engine, admin, NOW)
    assert summary.created > 0
    counts = row_counts(engine)
    again = demo.seed(engine, admin, NOW)
    assert again.created == 0
    assert row_counts(engine) == counts
    with Session(engine) as s:
        members = {m.name: m for m in s.exec(select(Member)).all()}
        assert len(members) == 6
        assert {m.kind for m in members.values()} >= {
            "telecom",
            "chipmaker",
            "university",
            "institute",
            "startup",
            "foreign",
        }
        assert members["pacific-research"].country == "US"
        pools = {p.name: p for p in s.exec(select(Pool)).all()}
        assert {p.jurisdiction for p in pools.values()} == {"KR", "US"}
        for pool in pools.values():
            gpus = sum(n.gpus for n in s.exec(select(Node).where(Node.pool_id == pool.id)))
            nominal = sum(
                q.nominal_gpus for q in s.exec(select(Quota).where(Quota.pool_id == pool.id))
            )
            assert nominal <= gpus, pool.name
        assert sum(n.gpus for n in s.exec(select(Node))) == 64 + 32 + 16
        labels = [d.labels for d in s.exec(select(Dataset)).all()]
        assert any(lbl["personal_info"] and not lbl["transfer_basis"] for lbl in labels)
        assert any(lbl["allowed_regions"] == ["kr-seoul"] for lbl in labels)
