"""Worker tables: worktrees, daemon commands, processed messages, the task outbox, dead letters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import EventId, JsonType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contract_worktrees",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("released_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_contract_worktrees_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract_worktrees")),
    )
    op.create_index(op.f("ix_contract_worktrees_contract_id"), "contract_worktrees", ["contract_id"])
    op.create_table(
        "daemon_commands",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("command", sa.String(60), nullable=False),
        sa.Column("payload", JsonType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_daemon_commands_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemon_commands")),
    )
    op.create_index(op.f("ix_daemon_commands_contract_id"), "daemon_commands", ["contract_id"])
    op.create_table(
        "processed_messages",
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_processed_messages_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("contract_id", "message_id", name=op.f("pk_processed_messages")),
    )
    op.create_table(
        "task_outbox",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("payload", JsonType, nullable=False),
        sa.Column("not_before", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_outbox")),
    )
    op.create_index("idx_task_outbox_unsent", "task_outbox", ["sent_at", "id"])
    op.create_table(
        "dead_letters",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(100), nullable=True),
        sa.Column("task_name", sa.String(200), nullable=True),
        sa.Column("message_id", sa.String(200), nullable=True),
        sa.Column("headers", JsonType, nullable=True),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=True),
        sa.Column("content_encoding", sa.String(50), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("first_seen", UTCDateTime(), nullable=False),
        sa.Column("last_seen", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("replayed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_dead_letters_fingerprint")),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("idx_task_outbox_unsent", table_name="task_outbox")
    op.drop_table("task_outbox")
    op.drop_table("processed_messages")
    op.drop_index(op.f("ix_daemon_commands_contract_id"), table_name="daemon_commands")
    op.drop_table("daemon_commands")
    op.drop_index(op.f("ix_contract_worktrees_contract_id"), table_name="contract_worktrees")
    op.drop_table("contract_worktrees")
