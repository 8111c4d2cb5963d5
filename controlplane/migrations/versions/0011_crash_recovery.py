"""crash recovery: free requeues, the attempt's Ray session, heartbeats

An attempt lost because the control plane or Ray itself went away does not count against the
job's retries (``free_requeues``); it is recognised by the Ray session it was launched in
(``ray_session``) no longer being the cluster's. ``heartbeat_at`` is when the attempt's
supervisor last answered: an attempt that dies unseen is billed to it, not to the moment a
restarted scheduler noticed.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from controlplane.db.types import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("free_requeues", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("ray_session", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True)
        )
        batch_op.add_column(sa.Column("heartbeat_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("ray_session")
        batch_op.drop_column("free_requeues")
