"""Contract events carry their transaction id, for gap-free live reading; a retention index.

On PostgreSQL every event row gets `xid xid8 NOT NULL DEFAULT pg_current_xact_id()`: the id of
the transaction that wrote it, filled in by the server (the application never writes it). A
live reader delivers only events whose transaction is older than the oldest one still
running (`xid < pg_snapshot_xmin(pg_current_snapshot())`), in `(xid, id)` order, so an event
whose transaction took a lower id but commits later is never skipped (`app.live_events`).
SQLite needs no column: its writers are serial (BEGIN IMMEDIATE), so ids commit in order.

Adding the column with a volatile default rewrites `contract_events` once; existing rows get
the migration's own transaction id (older than every later event, ordered by id among
themselves).

`idx_contract_events_created_at` serves the retention delete (events older than
`event_retention_days`) on both databases.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("idx_contract_events_created_at", "contract_events", ["created_at"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE contract_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.execute("CREATE INDEX idx_contract_events_xid_id ON contract_events (xid, id)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS idx_contract_events_xid_id")
        op.execute("ALTER TABLE contract_events DROP COLUMN IF EXISTS xid")
    op.drop_index("idx_contract_events_created_at", table_name="contract_events")
