"""Heartbeat history's retention: kept a day, then dropped whole (PostgreSQL) or deleted in chunks.

Its own module because it is its own job on its own cadence (`sweeps.heartbeat_retention`,
`workers.heartbeats`), with nothing of a list's ingestion in it but the tables: on PostgreSQL
it creates the day partitions ahead and drops expired ones (`app.heartbeat_partitions`), and
tells this process's store that a dropped day no longer exists
(`app.heartbeat_store.forget_partitions`); on SQLite it deletes expired rows in bounded
transactions. `RETENTION` is also how far back the supervisor reads look (`app.supervisors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from sqlalchemy import Engine, delete, select

from app import heartbeat_partitions as partitions
from app.db import get_engine
from app.heartbeat_store import HISTORY, forget_partitions
from app.models import utcnow

# How long heartbeat history is kept (issue: 24 h).
RETENTION: Final = timedelta(hours=24)
# SQLite retention deletes at most this many rows per transaction.
DELETE_CHUNK: Final = 5000


@dataclass(frozen=True, slots=True)
class RetentionReport:
    created: list[date]
    dropped: list[date]
    deleted_rows: int


def apply_retention(
    *, engine: Engine | None = None, now: datetime | None = None, retention: timedelta = RETENTION
) -> RetentionReport:
    """Remove heartbeats older than `retention`, without long transactions.

    PostgreSQL: drop the day partitions that ended before `now - retention` (one catalogue
    change each, with a lock timeout so a busy table makes it wait for the next run instead
    of queueing inserts behind it), and create today's and the next days' ahead. SQLite:
    delete expired rows in chunks of `DELETE_CHUNK`, one short transaction each.
    """
    bind = engine or get_engine()
    now = now or utcnow()
    cutoff = now - retention
    if bind.dialect.name == "postgresql":
        today = now.date()
        with bind.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            partitions.ensure_schema(conn)
            created = partitions.ensure_partitions(conn, today, today + timedelta(days=partitions.AHEAD_DAYS))
        dropped: list[date] = []
        # A partition [d, d+1) holds only expired rows once d+1 <= cutoff.
        first_kept = cutoff.date()
        for day in _days_before(bind, first_kept):
            with bind.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
                name = f"{partitions.SCHEMA}.{partitions.partition_name(day)}"
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            dropped.append(day)
        forget_partitions(dropped)
        return RetentionReport(created, dropped, 0)
    deleted = 0
    hist = HISTORY
    while True:
        with bind.begin() as conn:
            keys = conn.execute(
                select(hist.c.contract_id, hist.c.id, hist.c.received_day)
                .where(hist.c.received_at < cutoff)
                .limit(DELETE_CHUNK)
            ).all()
            if not keys:
                break
            for contract_id, hb_id, day in keys:
                conn.execute(
                    delete(hist).where(
                        hist.c.contract_id == contract_id, hist.c.id == hb_id, hist.c.received_day == day
                    )
                )
            deleted += len(keys)
        if len(keys) < DELETE_CHUNK:
            break
    return RetentionReport([], [], deleted)


def _days_before(engine: Engine, day: date) -> list[date]:
    with engine.connect() as conn:
        return [d for d in partitions.list_partitions(conn) if d < day]


def partition_days(engine: Engine | None = None) -> list[date]:
    """The days that have a partition (PostgreSQL); [] elsewhere."""
    bind = engine or get_engine()
    if bind.dialect.name != "postgresql":
        return []
    with bind.connect() as conn:
        return partitions.list_partitions(conn)


__all__ = ["DELETE_CHUNK", "RETENTION", "RetentionReport", "apply_retention", "partition_days"]
