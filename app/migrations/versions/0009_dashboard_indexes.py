"""Indexes for the dashboard's aggregates (`app.dashboard`) over every owner's contracts.

`idx_contracts_status_phase` serves the active contracts counted by phase (an index-only
scan instead of reading every active row); `idx_contracts_status_activity` serves the stale
rule (`status IN ('active', 'created') AND last_activity_at < cutoff`): its count and its
oldest-first list. An owner's queries start from `idx_contracts_owner_created` already.
Measured by `bench/dashboard.py` (100,000 contracts, 1,000,000 events).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("idx_contracts_status_phase", "contracts", ["status", "phase"])
    op.create_index("idx_contracts_status_activity", "contracts", ["status", "last_activity_at"])


def downgrade() -> None:
    op.drop_index("idx_contracts_status_activity", table_name="contracts")
    op.drop_index("idx_contracts_status_phase", table_name="contracts")
