"""endpoints and token usage

Online serving (``controlplane.serving``): endpoints, whose replicas are jobs of kind
``serve`` (``job.endpoint_id``), the gateway's per-request token ledger with its
reservations, and a token cap on budgets.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 15:46:03.758086
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import controlplane.db.types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "endpoint",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("member_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("creator_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("adapters", sa.JSON(), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("gpus_per_replica", sa.Integer(), nullable=False),
        sa.Column("allowed_pools", sa.JSON(), nullable=False),
        sa.Column("priority_class", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("desired_replicas", sa.Integer(), nullable=False),
        sa.Column(
            "last_request_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["creator_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["member.id"],
        ),
        sa.ForeignKeyConstraint(
            ["priority_class"],
            ["priorityclass.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("member_id", "name", name="uq_endpoint_member_name"),
    )
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoint_member_id"), ["member_id"], unique=False)

    op.create_table(
        "tokenusage",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("member_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("endpoint_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("token_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("adapter", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("period", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("created_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("settled_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoint.id"],
        ),
        sa.ForeignKeyConstraint(
            ["member_id"],
            ["member.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tokenusage", schema=None) as batch_op:
        batch_op.create_index("ix_tokenusage_member_period", ["member_id", "period"], unique=False)
        batch_op.create_index("ix_tokenusage_open", ["endpoint_id", "settled_at"], unique=False)

    with op.batch_alter_table("budget", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tokens", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("endpoint_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_job_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_foreign_key("fk_job_endpoint_id", "endpoint", ["endpoint_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint("fk_job_endpoint_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_job_endpoint_id"))
        batch_op.drop_column("endpoint_id")

    with op.batch_alter_table("budget", schema=None) as batch_op:
        batch_op.drop_column("tokens")

    with op.batch_alter_table("tokenusage", schema=None) as batch_op:
        batch_op.drop_index("ix_tokenusage_open")
        batch_op.drop_index("ix_tokenusage_member_period")

    op.drop_table("tokenusage")
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoint_member_id"))

    op.drop_table("endpoint")
