"""pool default borrowing: what members without a quota row may do in a pool

``pool.default_borrowing_limit``: 0 keeps members without a quota row in the pool out of
it, N lets them borrow up to N GPUs, NULL is unlimited borrowing. Existing pools get NULL,
the behaviour they had before the column (unlimited borrowing for members without a quota);
an admin changes that per pool (``PATCH /v1/pools/{pool}``, ``nuri admin pools update``, the
portal's cluster page).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pool", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_borrowing_limit", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pool", schema=None) as batch_op:
        batch_op.drop_column("default_borrowing_limit")
