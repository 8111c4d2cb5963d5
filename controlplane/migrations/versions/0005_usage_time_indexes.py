"""usage record time indexes

The scheduler reads only the usage records a cycle needs (open ones, those of the current
budget periods, those recent enough for the decayed fair-share history), by time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 08:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usagerecord", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usagerecord_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_usagerecord_ended_at"), ["ended_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usagerecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usagerecord_ended_at"))
        batch_op.drop_index(batch_op.f("ix_usagerecord_started_at"))
