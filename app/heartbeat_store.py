"""How a list of heartbeats is written: what every store does, and the store for a database.

Kept apart from `app.heartbeats` (which decides what a list means: who sent it, which
supervisor state wins, what is fenced) because this is the part that differs by database.
This module holds what does not: the store's interface (`HeartbeatStore`: only the day's
preparation, the one call both paths make), what a write answers (`BatchCounts`, `FoldResult`),
the supervisors' columns and their record (`supervisor_record`, read by `app.supervisors` and
`app.incarnations` too), the counter shard, the process's record of the history's day
partitions, and `store_for`, which picks one of the two stores, each in its own module:

- PostgreSQL (`app.heartbeat_store_pg`): the list goes as one JSON parameter expanded
  server-side, in prepared statements (their text: `app.heartbeat_sql`), into the
  day-partitioned history.
- SQLite (`app.heartbeat_store_sqlite`): `executemany`, where a statement is a function call,
  not a round trip.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, Table

from app import heartbeat_partitions as partitions
from app.config import Settings
from app.domain.records import EventType
from app.domain.supervisors import SupervisorRecord, SupervisorState
from app.models import HeartbeatCounter, Supervisor, SupervisorHeartbeat

if TYPE_CHECKING:  # each store imports this module; `store_for` imports them when called
    from app.heartbeat_store_pg import PostgresStore
    from app.heartbeat_store_sqlite import SqliteStore

COUNTER_SHARDS: Final = 16
STATE_CHANGED: Final = EventType.SUPERVISOR_STATE_CHANGED.value


@dataclass(frozen=True, slots=True)
class BatchCounts:
    received: int
    fenced: int
    refused: int
    in_batch_duplicates: int


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What the fold did: counts, and the few things the worker still needs by name."""

    stored: int
    offered: int
    fenced: int
    touched: int
    state_changes: int  # the supervisor_state_changed events written (`ev`: the one type it writes)
    applied: int
    refused: list[int]  # positions (`n`) of heartbeats whose task id is another contract's
    fenced_supervisors: list[dict[str, Any]]  # one per (supervisor, sent incarnation)
    notices: str  # when asked for: the live notices of the supervisors written, a JSON array


class HeartbeatStore:
    """What `app.heartbeats.ingest` asks of either store before it picks the path by database.

    Only the day's preparation: the two paths read and write through different calls (the
    PostgreSQL fold; the SQLite reads and `executemany` writes), each on its own store.
    """

    def prepare(self, engine: Engine, day: date) -> None:
        return None


HISTORY: Table = SupervisorHeartbeat.__table__  # type: ignore[assignment]
COUNTERS: Table = HeartbeatCounter.__table__  # type: ignore[assignment]

SUPERVISOR_COLUMNS = (
    Supervisor.task_id,
    Supervisor.contract_id,
    Supervisor.incarnation,
    Supervisor.state,
    Supervisor.phase,
    Supervisor.current_activity,
    Supervisor.progress,
    Supervisor.pending_task_ids,
    Supervisor.heartbeat_id,
    Supervisor.sent_at,
    Supervisor.last_received_at,
    Supervisor.alive,
    Supervisor.dead_at,
    Supervisor.daemon_id,
    Supervisor.host,
    Supervisor.version,
)


def supervisor_record(row: Sequence[Any]) -> SupervisorRecord:
    return SupervisorRecord(
        task_id=as_uuid(row[0]),
        contract_id=as_uuid(row[1]),
        incarnation=row[2],
        state=SupervisorState(row[3]),
        phase=row[4],
        current_activity=row[5],
        progress=row[6],
        pending_task_ids=tuple(row[7] or ()),
        heartbeat_id=as_uuid(row[8]) if row[8] is not None else None,
        sent_at=_aware(row[9]),
        last_received_at=_aware(row[10]) or datetime.min.replace(tzinfo=UTC),
        alive=bool(row[11]),
        dead_at=_aware(row[12]),
        daemon_id=row[13],
        host=row[14],
        version=row[15],
    )


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def event_payload(change: Any) -> dict[str, Any]:
    return {"contractId": str(change.contract_id), **change.payload()}


def counter_shard() -> int:
    return os.getpid() % COUNTER_SHARDS


def store_for(engine: Engine, settings: Settings) -> PostgresStore | SqliteStore:
    """The store for this database.

    Each store imports this module (its interface and helpers), so this one imports them when
    asked: after the first call that is a lookup in `sys.modules`.
    """
    if engine.dialect.name == "postgresql":
        from app.heartbeat_store_pg import PostgresStore

        return PostgresStore(settings)
    from app.heartbeat_store_sqlite import SqliteStore

    return SqliteStore()


# The days whose partition this process made sure of (PostgreSQL: `PostgresStore.prepare`).
_ensured: set[date] = set()
_ensure_lock = threading.Lock()


def ensure_partitions_once(engine: Engine, day: date) -> None:
    """Make sure today's partition (and tomorrow's) exists: once per process per day."""
    if day in _ensured:
        return
    with _ensure_lock:
        if day in _ensured:
            return
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            partitions.ensure_schema(conn)
            partitions.ensure_partitions(conn, day, day + timedelta(days=1))
        _ensured.add(day)


def forget_partitions(days: Iterable[date]) -> None:
    """Partitions dropped by retention are no longer known to exist in this process."""
    _ensured.difference_update(days)


__all__ = [
    "COUNTERS",
    "COUNTER_SHARDS",
    "HISTORY",
    "STATE_CHANGED",
    "SUPERVISOR_COLUMNS",
    "BatchCounts",
    "FoldResult",
    "HeartbeatStore",
    "as_uuid",
    "counter_shard",
    "ensure_partitions_once",
    "event_payload",
    "forget_partitions",
    "store_for",
    "supervisor_record",
]
