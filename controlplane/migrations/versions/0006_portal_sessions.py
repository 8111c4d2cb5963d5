"""portal sessions

Browsers signed in to the portal: a hashed cookie secret per session, tied to the API token
it was opened with.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 11:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import controlplane.db.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portalsession",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("secret_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("created_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", controlplane.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["token_id"], ["apitoken.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("portalsession", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_portalsession_secret_hash"), ["secret_hash"], unique=True
        )
        batch_op.create_index(batch_op.f("ix_portalsession_token_id"), ["token_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("portalsession", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portalsession_token_id"))
        batch_op.drop_index(batch_op.f("ix_portalsession_secret_hash"))
    op.drop_table("portalsession")
