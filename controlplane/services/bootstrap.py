"""First start: default priority classes and the platform admin with its token."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controlplane import tokens
from controlplane.auth import default_scopes
from controlplane.db.models import ApiToken, Role, User
from controlplane.services.inventory import ensure_priority_classes
from controlplane.services.tenancy import issue_token

ADMIN_EMAIL = "admin@nuri.local"


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    admin_user_id: str
    # The new secret when one was generated now; None when the admin existed or the operator
    # supplied NURI_BOOTSTRAP_ADMIN_TOKEN (never echo an operator's secret back).
    generated_token: str | None


def bootstrap(engine: Engine, bootstrap_token: str | None) -> BootstrapResult:
    """Idempotent: creates what is missing, never rotates an existing admin's token.

    A ``bootstrap_token`` that could never sign in (see :func:`tokens.bootstrap_problem`) is
    refused with ValueError before anything is written; Settings refuses it first.
    """
    problem = None if bootstrap_token is None else tokens.bootstrap_problem(bootstrap_token)
    if problem is not None:
        raise ValueError(problem)
    with Session(engine, expire_on_commit=False) as session:
        ensure_priority_classes(session)
        admin = session.exec(select(User).where(User.role == Role.PLATFORM_ADMIN.value)).first()
        generated: str | None = None
        if admin is None:
            admin = User(email=ADMIN_EMAIL, name="Platform admin", role=Role.PLATFORM_ADMIN.value)
            session.add(admin)
            session.flush()
            secret = bootstrap_token or tokens.generate()
            issue_token(
                session,
                admin,
                "bootstrap",
                default_scopes(Role.PLATFORM_ADMIN),
                None,
                secret=secret,
            )
            generated = None if bootstrap_token else secret
        elif bootstrap_token is not None:
            # Operators may set the variable on a later start too; honour it if not yet known.
            digest = tokens.digest(bootstrap_token)
            if session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first() is None:
                issue_token(
                    session,
                    admin,
                    "bootstrap",
                    default_scopes(Role.PLATFORM_ADMIN),
                    None,
                    secret=bootstrap_token,
                )
        session.commit()
        return BootstrapResult(admin_user_id=admin.id, generated_token=generated)
