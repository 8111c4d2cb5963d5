"""execution plans, teachers, dataset fingerprints

A job stores the execution plan its workers run (resolved at admission) and, for
distillation, its teacher; a dataset stores the SHA-256 and size staging verifies.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 09:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("teacher", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch_op.add_column(sa.Column("execution_plan", sa.JSON(), nullable=True))
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset", schema=None) as batch_op:
        batch_op.drop_column("size_bytes")
        batch_op.drop_column("sha256")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("execution_plan")
        batch_op.drop_column("teacher")
