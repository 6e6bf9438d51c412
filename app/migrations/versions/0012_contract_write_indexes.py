"""Drop the two contract indexes that others cover, so every contract write maintains fewer.

A contract row is rewritten by every guarded change and report (`last_activity_at`,
`updated_at`, and often `phase`, `status`, `version`), never as a HOT update, so each of its
indexes takes a new entry on every write. `idx_contracts_status` is the leading column of
`idx_contracts_status_phase` and `idx_contracts_status_activity`, which serve every status
filter; `idx_contracts_last_activity` is only ever asked together with a status (the stale
rule, `app.sweeps.stale_criteria`), which `idx_contracts_status_activity` answers. Measured
by `bench/phase_change.py` and `bench/task_completed.py`.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("idx_contracts_last_activity", table_name="contracts")
    op.drop_index("idx_contracts_status", table_name="contracts")


def downgrade() -> None:
    op.create_index("idx_contracts_status", "contracts", ["status"])
    op.create_index("idx_contracts_last_activity", "contracts", ["last_activity_at"])
