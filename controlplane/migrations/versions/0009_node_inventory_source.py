"""node inventory source and quarantine reason

The Kubernetes inventory (``controlplane.k8s``) marks the nodes it owns, so that it removes
only those when they leave the cluster, records why it quarantined a node, and keeps the
location the cluster last reported so that placement can re-check it every cycle.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "quarantine_reason", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True
            )
        )
        batch_op.add_column(sa.Column("observed", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node", schema=None) as batch_op:
        batch_op.drop_column("observed")
        batch_op.drop_column("quarantine_reason")
        batch_op.drop_column("source")
