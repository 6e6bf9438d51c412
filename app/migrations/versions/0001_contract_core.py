"""Contract core: principals and tokens, contracts, deliverables, tasks, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models import EventId, JsonType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
    )
    op.create_index(op.f("ix_principals_owner_id"), "principals", ["owner_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("principal_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_api_tokens_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_principal_id"), "api_tokens", ["principal_id"])
    op.create_table(
        "contracts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("contract_type", sa.String(100), nullable=False),
        sa.Column("phase_config", JsonType, nullable=True),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("phase_guard", sa.Boolean(), nullable=False),
        sa.Column("auto_complete_enabled", sa.Boolean(), nullable=False),
        sa.Column("status_changed_at", UTCDateTime(), nullable=False),
        sa.Column("last_activity_at", UTCDateTime(), nullable=False),
        sa.Column("waiting_for", sa.Text(), nullable=True),
        sa.Column("blocked_reason", sa.Text(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("completion_detected_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contracts")),
    )
    op.create_index("idx_contracts_status", "contracts", ["status"])
    op.create_index("idx_contracts_last_activity", "contracts", ["last_activity_at"])
    op.create_index("idx_contracts_owner_created", "contracts", ["owner_id", "created_at", "id"])
    op.create_table(
        "contract_deliverables",
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("deliverable_id", sa.String(200), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("completed_by", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_contract_deliverables_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "contract_id", "phase", "deliverable_id", name=op.f("pk_contract_deliverables")
        ),
    )
    op.create_table(
        "contract_tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("is_supervisor", sa.Boolean(), nullable=False),
        sa.Column("phase", sa.String(100), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_contract_tasks_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract_tasks")),
    )
    op.create_index("idx_contract_tasks_contract_phase", "contract_tasks", ["contract_id", "phase"])
    op.create_table(
        "contract_events",
        sa.Column("id", EventId, autoincrement=True, nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("payload", JsonType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contract_id"],
            ["contracts.id"],
            name=op.f("fk_contract_events_contract_id_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contract_events")),
    )
    op.create_index("idx_contract_events_contract_id", "contract_events", ["contract_id", "id"])


def downgrade() -> None:
    op.drop_index("idx_contract_events_contract_id", table_name="contract_events")
    op.drop_table("contract_events")
    op.drop_index("idx_contract_tasks_contract_phase", table_name="contract_tasks")
    op.drop_table("contract_tasks")
    op.drop_table("contract_deliverables")
    op.drop_index("idx_contracts_owner_created", table_name="contracts")
    op.drop_index("idx_contracts_last_activity", table_name="contracts")
    op.drop_index("idx_contracts_status", table_name="contracts")
    op.drop_table("contracts")
    op.drop_index(op.f("ix_api_tokens_principal_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_principals_owner_id"), table_name="principals")
    op.drop_table("principals")
