"""The heartbeat history keeps one index: its key.

Every stored heartbeat paid for two B-tree entries, the key `(contract_id, id, received_day)`
and `(contract_id, received_at)`. Both lead with the contract id, so each insert lands on a
random leaf page of each, and after every checkpoint the first touch of each page writes a
full-page image to the WAL. Ingestion is the table's hot path (a fleet's every heartbeat);
its readers are rare and narrow: the history of one contract (`GET .../supervisor/heartbeats`)
and the fenced heartbeats of one contract on the way to a 404. Both filter on the contract id,
which the key's leading column finds, and then order at most one contract's last day
(2,880 rows per supervisor at one heartbeat in 30 s) in memory. So the second index goes.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("idx_supervisor_heartbeats_contract_received", table_name="supervisor_heartbeats")


def downgrade() -> None:
    op.create_index(
        "idx_supervisor_heartbeats_contract_received",
        "supervisor_heartbeats",
        ["contract_id", "received_at"],
    )
