"""Supervisor state, conversation history and questions; daemons named on commands and worktrees.

`supervisor_states` is what a restarted daemon needs (seed 3.4), `supervisor_conversation` its
history one message a row (appended in increments), `supervisor_questions` the questions a
supervisor asked a person. `daemon_commands.daemon_id` lets each daemon read its own commands;
`contract_worktrees` learns which daemon holds a worktree and when it was removed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import JsonType, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _contract_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["contract_id"], ["contracts.id"], name=op.f(f"fk_{table}_contract_id_contracts"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "supervisor_states",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=False),
        sa.Column("state_version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("current_activity", sa.Text(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("spawned_task_ids", JsonType, nullable=False),
        sa.Column("waiting_on_task_ids", JsonType, nullable=False),
        sa.Column("history_length", sa.Integer(), nullable=False),
        sa.Column("checkpoint", JsonType, nullable=True),
        sa.Column("daemon_id", sa.String(200), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        _contract_fk("supervisor_states"),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_supervisor_states")),
    )
    op.create_index(op.f("ix_supervisor_states_contract_id"), "supervisor_states", ["contract_id"])

    op.create_table(
        "supervisor_conversation",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("message", JsonType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        _contract_fk("supervisor_conversation"),
        sa.PrimaryKeyConstraint("task_id", "seq", name=op.f("pk_supervisor_conversation")),
    )
    op.create_index(
        op.f("ix_supervisor_conversation_contract_id"), "supervisor_conversation", ["contract_id"]
    )

    op.create_table(
        "supervisor_questions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("question_type", sa.String(40), nullable=False),
        sa.Column("options", JsonType, nullable=False),
        sa.Column("context", sa.Text(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("asked_by", sa.String(200), nullable=False),
        sa.Column("asked_at", UTCDateTime(), nullable=False),
        sa.Column("answer", JsonType, nullable=True),
        sa.Column("answered_by", sa.String(200), nullable=True),
        sa.Column("answered_at", UTCDateTime(), nullable=True),
        sa.Column("daemon_id", sa.String(200), nullable=True),
        _contract_fk("supervisor_questions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_supervisor_questions")),
    )
    op.create_index(
        "idx_supervisor_questions_contract_status",
        "supervisor_questions",
        ["contract_id", "status", "asked_at"],
    )

    with op.batch_alter_table("daemon_commands") as batch:
        batch.add_column(sa.Column("daemon_id", sa.String(200), nullable=True))
    op.create_index("idx_daemon_commands_daemon_id", "daemon_commands", ["daemon_id", "id"])

    with op.batch_alter_table("contract_worktrees") as batch:
        batch.add_column(sa.Column("daemon_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("removed_at", UTCDateTime(), nullable=True))
    op.create_index(op.f("ix_contract_worktrees_daemon_id"), "contract_worktrees", ["daemon_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_contract_worktrees_daemon_id"), table_name="contract_worktrees")
    with op.batch_alter_table("contract_worktrees") as batch:
        batch.drop_column("removed_at")
        batch.drop_column("daemon_id")
    op.drop_index("idx_daemon_commands_daemon_id", table_name="daemon_commands")
    with op.batch_alter_table("daemon_commands") as batch:
        batch.drop_column("daemon_id")
    op.drop_index("idx_supervisor_questions_contract_status", table_name="supervisor_questions")
    op.drop_table("supervisor_questions")
    op.drop_index(op.f("ix_supervisor_conversation_contract_id"), table_name="supervisor_conversation")
    op.drop_table("supervisor_conversation")
    op.drop_index(op.f("ix_supervisor_states_contract_id"), table_name="supervisor_states")
    op.drop_table("supervisor_states")
