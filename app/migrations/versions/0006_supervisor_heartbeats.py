"""Supervisor heartbeats, supervisors and daemons — filled in by the heartbeat work.

`supervisors` holds each supervisor's current state; `supervisor_heartbeats` the last 24 hours
of heartbeats (on PostgreSQL partitioned by received day, partitions in the
`heartbeat_partitions` schema; see `app.heartbeat_partitions`); `heartbeat_counters` the
counters the metrics will read.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from app.heartbeat_partitions import AHEAD_DAYS, SCHEMA, ensure_partitions, ensure_schema
from app.models import JsonType, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "supervisors",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("current_activity", sa.Text(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("pending_task_ids", JsonType, nullable=False),
        sa.Column("heartbeat_id", sa.Uuid(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("last_received_at", UTCDateTime(), nullable=False),
        sa.Column("alive", sa.Boolean(), nullable=False),
        sa.Column("dead_at", UTCDateTime(), nullable=True),
        sa.Column("daemon_id", sa.String(200), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_supervisors_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_supervisors")),
        # Room on each page for the per-batch rewrite to stay a HOT update (no index touched).
        **({"postgresql_with": {"fillfactor": 70}} if postgres else {}),
    )
    op.create_index(op.f("ix_supervisors_contract_id"), "supervisors", ["contract_id"])
    op.create_index(op.f("ix_supervisors_daemon_id"), "supervisors", ["daemon_id"])

    op.create_table(
        "supervisor_heartbeats",
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("received_day", sa.Date(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("incarnation", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("current_activity", sa.Text(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("pending_task_ids", JsonType, nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("fenced", sa.Boolean(), nullable=False),
        sa.Column("daemon_id", sa.String(200), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("contract_id", "id", "received_day", name=op.f("pk_supervisor_heartbeats")),
        **({"postgresql_partition_by": "RANGE (received_day)"} if postgres else {}),
    )
    op.create_index(
        "idx_supervisor_heartbeats_contract_received",
        "supervisor_heartbeats",
        ["contract_id", "received_at"],
    )

    op.create_table(
        "heartbeat_counters",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("fenced", sa.BigInteger(), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("shard", name=op.f("pk_heartbeat_counters")),
    )

    if postgres:
        conn = op.get_bind()
        ensure_schema(conn)
        today = datetime.now(UTC).date()
        ensure_partitions(conn, today - timedelta(days=1), today + timedelta(days=AHEAD_DAYS))


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_table("heartbeat_counters")
    op.drop_index("idx_supervisor_heartbeats_contract_received", table_name="supervisor_heartbeats")
    # Dropping the partitioned parent drops its partitions with it.
    op.drop_table("supervisor_heartbeats")
    op.drop_index(op.f("ix_supervisors_daemon_id"), table_name="supervisors")
    op.drop_index(op.f("ix_supervisors_contract_id"), table_name="supervisors")
    op.drop_table("supervisors")
    if postgres:
        op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
