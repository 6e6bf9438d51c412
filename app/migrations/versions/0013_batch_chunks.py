"""A batch records the contracts each chunk acted on as one row per chunk (`batch_chunks`).

Until now every affected contract was its own `batch_items` row: an `archive_old` over
100,000 contracts wrote 100,000 rows beside the 100,000 updates and events, and each chunk's
search for contracts not yet done read all of them. A chunk now writes one `batch_chunks` row
(the ids it acted on, `uuid[]` on PostgreSQL, a JSON list on SQLite) together with the cursor
it moved to (`through_id`); errors, deferrals and skips stay one `batch_items` row per contract.
No contract is acted on twice because a chunk claims only ids above the committed cursor, and
one done on its own has its item.

Existing items are left where they are: an affected item still counts as affected.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime, UuidList

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_chunks",
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("through_id", sa.Uuid(), nullable=False),
        sa.Column("affected_ids", UuidList, nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batch_operations.id"],
            name=op.f("fk_batch_chunks_batch_id_batch_operations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "through_id", name=op.f("pk_batch_chunks")),
    )


def downgrade() -> None:
    op.drop_table("batch_chunks")
