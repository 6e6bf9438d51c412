"""Batch operations, sweeps and the deletion audit: stale episodes, batches and their items,
the audit of deleted contracts, counters several processes add to.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import EventId, JsonType, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stale_episodes",
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_stale_episodes_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("contract_id", name=op.f("pk_stale_episodes")),
    )
    op.create_table(
        "batch_operations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("operation", sa.String(40), nullable=False),
        sa.Column("parameters", JsonType, nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("requested_by_owner", sa.String(200), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("as_of", UTCDateTime(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("affected_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.Uuid(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_operations")),
    )
    op.create_index(
        "uq_batch_operations_idempotency",
        "batch_operations",
        ["requested_by", "idempotency_key"],
        unique=True,
    )
    op.create_index("idx_batch_operations_created", "batch_operations", ["created_at"])
    op.create_table(
        "batch_items",
        sa.Column("batch_id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("error_code", sa.String(60), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batch_operations.id"],
            name=op.f("fk_batch_items_batch_id_batch_operations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "contract_id", name=op.f("pk_batch_items")),
    )
    op.create_table(
        "deletion_audit",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("contract_name", sa.String(500), nullable=False),
        sa.Column("owner_id", sa.String(200), nullable=False),
        sa.Column("contract_type", sa.String(100), nullable=False),
        sa.Column("archived_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_by", sa.Uuid(), nullable=True),
        sa.Column("deleted_by_owner", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("sweep", sa.String(60), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletion_audit")),
    )
    op.create_index("idx_deletion_audit_deleted_at", "deletion_audit", ["deleted_at", "id"])
    op.create_index(op.f("ix_deletion_audit_contract_id"), "deletion_audit", ["contract_id"])
    op.create_index(op.f("ix_deletion_audit_batch_id"), "deletion_audit", ["batch_id"])
    op.create_table(
        "metric_counters",
        sa.Column("metric", sa.String(100), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "label", name=op.f("pk_metric_counters")),
    )


def downgrade() -> None:
    op.drop_table("metric_counters")
    op.drop_index(op.f("ix_deletion_audit_batch_id"), table_name="deletion_audit")
    op.drop_index(op.f("ix_deletion_audit_contract_id"), table_name="deletion_audit")
    op.drop_index("idx_deletion_audit_deleted_at", table_name="deletion_audit")
    op.drop_table("deletion_audit")
    op.drop_table("batch_items")
    op.drop_index("idx_batch_operations_created", table_name="batch_operations")
    op.drop_index("uq_batch_operations_idempotency", table_name="batch_operations")
    op.drop_table("batch_operations")
    op.drop_table("stale_episodes")
