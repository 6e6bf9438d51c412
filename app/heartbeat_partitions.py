"""The day partitions of `supervisor_heartbeats` on PostgreSQL: created ahead, dropped whole.

Why partitions: heartbeats arrive by the tens of thousands a second and are kept 24 hours.
Deleting expired rows would be as much work as inserting them (and long transactions, and
bloat); dropping a day's partition is one catalogue change. Each partition covers one UTC day
of `received_day` and lives in the `heartbeat_partitions` schema, so the public schema holds
exactly the tables the models describe.

Partitions are created ahead (today and the next `AHEAD_DAYS` days) by the migration and the
retention task, and an ingesting worker makes sure its day exists the first time it sees that
day (once per process per day), so a missed beat never stops ingestion. SQLite has no
partitions: there, the retention task deletes expired rows in bounded chunks.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Final

from sqlalchemy import Connection, text

SCHEMA: Final = "heartbeat_partitions"
PARENT: Final = "supervisor_heartbeats"
AHEAD_DAYS: Final = 2
_NAME = re.compile(rf"^{PARENT}_p(\d{{8}})$")


def partition_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def day_of(name: str) -> date | None:
    match = _NAME.match(name)
    if match is None:
        return None
    raw = match.group(1)
    return date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))


def ensure_schema(conn: Connection) -> None:
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))


def ensure_partitions(conn: Connection, first: date, last: date) -> list[date]:
    """Create the day partitions from `first` to `last` (inclusive) that do not exist yet."""
    existing = set(list_partitions(conn))
    created = []
    day = first
    while day <= last:
        if day not in existing:
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{partition_name(day)} PARTITION OF {PARENT} "
                    f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
                )
            )
            created.append(day)
        day += timedelta(days=1)
    return created


def list_partitions(conn: Connection) -> list[date]:
    """The days that have a partition, oldest first."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :parent"
        ),
        {"parent": PARENT},
    ).scalars()
    return sorted(d for d in (day_of(name) for name in rows) if d is not None)


def drop_partitions_before(conn: Connection, day: date) -> list[date]:
    """Drop every partition whose whole day lies before `day`; returns the days dropped."""
    dropped = []
    for existing in list_partitions(conn):
        if existing < day:
            conn.execute(text(f"DROP TABLE IF EXISTS {SCHEMA}.{partition_name(existing)}"))
            dropped.append(existing)
    return dropped


__all__ = [
    "AHEAD_DAYS",
    "PARENT",
    "SCHEMA",
    "day_of",
    "drop_partitions_before",
    "ensure_partitions",
    "ensure_schema",
    "list_partitions",
    "partition_name",
]
