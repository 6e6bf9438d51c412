"""What the database keeps on PostgreSQL only and the models do not map.

These are filled in by the server and never written by the application (so they are not
mapped: the commit's one INSERT lists mapped columns): `contract_events.xid` is the writing
transaction's id, `pg_current_xact_id()`, which the live reader compares with the commit horizon
(`app.live_events`); and `daemon_commands.xid` likewise, for a daemon's command feed
(`app.daemon_commands`, 0011). A schema comparison of the models with the migrations leaves
these out.
"""

from __future__ import annotations

SERVER_ONLY_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("contract_events", "xid"), ("daemon_commands", "xid")}
)
SERVER_ONLY_INDEXES: frozenset[str] = frozenset(
    {"idx_contract_events_xid_id", "idx_daemon_commands_daemon_xid"}
)
