"""Daemon commands carry their transaction id, so a daemon's HTTP feed never skips one.

A daemon that cannot read the broker reads its commands over HTTP with `after=<commandId>`.
Command ids come from a sequence taken before COMMIT, so a reader asking for `id > after` could
pass over a command whose transaction took a lower id but committed later (a remove_worktree
the completion flow wrote while a heartbeat's supervisor_fenced committed first). As for
contract events (migration 0008), each row gets, on PostgreSQL,
`xid xid8 NOT NULL DEFAULT pg_current_xact_id()`: the id of the transaction that wrote it,
filled in by the server. The feed delivers only commands of transactions older than the
oldest one still running, in `(xid, id)` order (`app.daemon_commands`). SQLite needs no column:
its writers are serial, so ids commit in order.

`idx_daemon_commands_daemon_xid` is the feed's read: one daemon's commands in stream order.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE daemon_commands ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id()")
    op.execute("CREATE INDEX idx_daemon_commands_daemon_xid ON daemon_commands (daemon_id, xid, id)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS idx_daemon_commands_daemon_xid")
    op.execute("ALTER TABLE daemon_commands DROP COLUMN IF EXISTS xid")
