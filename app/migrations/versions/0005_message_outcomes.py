"""Message outcomes: what became of each report a sender handed us (pending/applied/refused).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import JsonType, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_outcomes",
        sa.Column("principal_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("payload", JsonType, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("event_ids", JsonType, nullable=True),
        sa.Column("error_code", sa.String(60), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("accepted_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("principal_id", "message_id", name=op.f("pk_message_outcomes")),
    )
    op.create_index("idx_message_outcomes_message_id", "message_outcomes", ["message_id"])
    op.create_index(op.f("ix_message_outcomes_contract_id"), "message_outcomes", ["contract_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_message_outcomes_contract_id"), table_name="message_outcomes")
    op.drop_index("idx_message_outcomes_message_id", table_name="message_outcomes")
    op.drop_table("message_outcomes")
