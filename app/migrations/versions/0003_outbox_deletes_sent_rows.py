"""The task outbox deletes rows once the broker has them: `sent_at` and its index go.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows already marked sent were delivered; only unsent ones are still owed to the broker.
    op.execute("DELETE FROM task_outbox WHERE sent_at IS NOT NULL")
    op.drop_index("idx_task_outbox_unsent", table_name="task_outbox")
    with op.batch_alter_table("task_outbox") as batch:
        batch.drop_column("sent_at")


def downgrade() -> None:
    with op.batch_alter_table("task_outbox") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("idx_task_outbox_unsent", "task_outbox", ["sent_at", "id"])
