"""How a list of heartbeats is written: one store per dialect, a constant number of statements.

Kept apart from `app.heartbeats` (which decides what a list means: who sent it, which
supervisor state wins, what is fenced) because this is the part that differs by database:

- PostgreSQL (`PostgresStore`): the list goes as one JSON parameter expanded server-side
  (`jsonb_to_recordset`), in prepared statements, into the day-partitioned history.
- SQLite (`SqliteStore`): `executemany`, where a statement is a function call, not a round trip.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, Table, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from app import heartbeat_partitions as partitions
from app.config import Settings
from app.domain.records import EventType
from app.domain.supervisors import BatchPlan, Heartbeat, SupervisorRecord, SupervisorState
from app.models import Contract, ContractEvent, HeartbeatCounter, Supervisor, SupervisorHeartbeat
from app.prepared import execute_sql

COUNTER_SHARDS: Final = 16
STATE_CHANGED: Final = EventType.SUPERVISOR_STATE_CHANGED.value


@dataclass(frozen=True, slots=True)
class BatchCounts:
    received: int
    fenced: int
    refused: int
    in_batch_duplicates: int


class HeartbeatStore:
    def prepare(self, engine: Engine, day: date) -> None:
        return None

    def owners(self, session: Session, contract_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not contract_ids:
            return {}
        rows = session.execute(select(Contract.id, Contract.owner_id).where(Contract.id.in_(contract_ids)))
        return {cid: owner for cid, owner in rows}

    def supervisors(
        self, session: Session, task_ids: Iterable[uuid.UUID], *, lock: bool
    ) -> dict[uuid.UUID, SupervisorRecord]:
        ids = sorted(set(task_ids))
        if not ids:
            return {}
        query = select(*SUPERVISOR_COLUMNS).where(Supervisor.task_id.in_(ids)).order_by(Supervisor.task_id)
        if lock:
            query = query.with_for_update()
        return {row[0]: supervisor_record(row) for row in session.execute(query)}

    def upsert_supervisors(
        self,
        session: Session,
        writes: list[tuple[SupervisorRecord | None, SupervisorRecord]],
        now: datetime,
    ) -> set[uuid.UUID]:
        raise NotImplementedError

    def write_rest(
        self,
        session: Session,
        rows: list[tuple[Heartbeat, bool]],
        plan: BatchPlan,
        live: list[uuid.UUID],
        received_at: datetime,
        bump_before: datetime,
        counts: BatchCounts,
    ) -> tuple[int, int]:
        raise NotImplementedError


_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]
HISTORY: Table = SupervisorHeartbeat.__table__  # type: ignore[assignment]
_EVENTS: Table = ContractEvent.__table__  # type: ignore[assignment]
_CONTRACTS: Table = Contract.__table__  # type: ignore[assignment]
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
        task_id=_as_uuid(row[0]),
        contract_id=_as_uuid(row[1]),
        incarnation=row[2],
        state=SupervisorState(row[3]),
        phase=row[4],
        current_activity=row[5],
        progress=row[6],
        pending_task_ids=tuple(row[7] or ()),
        heartbeat_id=_as_uuid(row[8]) if row[8] is not None else None,
        sent_at=_aware(row[9]),
        last_received_at=_aware(row[10]) or datetime.min.replace(tzinfo=UTC),
        alive=bool(row[11]),
        dead_at=_aware(row[12]),
        daemon_id=row[13],
        host=row[14],
        version=row[15],
    )


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _sup_values(after: SupervisorRecord, now: datetime) -> dict[str, Any]:
    return {
        "task_id": after.task_id,
        "contract_id": after.contract_id,
        "incarnation": after.incarnation,
        "version": after.version + 1,
        "state": after.state.value,
        "phase": after.phase,
        "current_activity": after.current_activity,
        "progress": after.progress,
        "pending_task_ids": list(after.pending_task_ids),
        "heartbeat_id": after.heartbeat_id,
        "sent_at": after.sent_at,
        "last_received_at": after.last_received_at,
        "alive": after.alive,
        "dead_at": after.dead_at,
        "daemon_id": after.daemon_id,
        "host": after.host,
        "created_at": now,
        "updated_at": now,
    }


def _hist_values(hb: Heartbeat, fenced: bool, received_at: datetime) -> dict[str, Any]:
    return {
        "contract_id": hb.contract_id,
        "id": hb.id,
        "received_day": received_at.date(),
        "received_at": received_at,
        "task_id": hb.task_id,
        "incarnation": hb.incarnation,
        "state": hb.state.value,
        "phase": hb.phase,
        "current_activity": hb.current_activity,
        "progress": hb.progress,
        "pending_task_ids": list(hb.pending_task_ids),
        "sent_at": hb.timestamp,
        "fenced": fenced,
        "daemon_id": hb.daemon_id,
        "host": hb.host,
    }


def _shard() -> int:
    return os.getpid() % COUNTER_SHARDS


class SqliteStore(HeartbeatStore):
    """The embedded default: one writer at a time (BEGIN IMMEDIATE), so read-then-write is exact."""

    def upsert_supervisors(
        self,
        session: Session,
        writes: list[tuple[SupervisorRecord | None, SupervisorRecord]],
        now: datetime,
    ) -> set[uuid.UUID]:
        if not writes:
            return set()
        table = _SUPERVISORS
        stmt = sqlite.insert(table)
        columns = [c.name for c in table.c if c.name not in ("task_id", "created_at")]
        stmt = stmt.on_conflict_do_update(
            index_elements=["task_id"],
            set_={c: stmt.excluded[c] for c in columns},
            where=table.c.version == stmt.excluded.version - 1,
        )
        rows = [_sup_values(after, now) for _, after in sorted(writes, key=lambda w: w[1].task_id)]
        session.execute(stmt, rows)
        return set()

    def write_rest(
        self,
        session: Session,
        rows: list[tuple[Heartbeat, bool]],
        plan: BatchPlan,
        live: list[uuid.UUID],
        received_at: datetime,
        bump_before: datetime,
        counts: BatchCounts,
    ) -> tuple[int, int]:
        hist = HISTORY
        stored = 0
        if rows:
            ids = {hb.id for hb, _ in rows}
            existing = set(
                session.execute(select(hist.c.contract_id, hist.c.id).where(hist.c.id.in_(ids))).tuples()
            )
            fresh = [
                _hist_values(hb, f, received_at) for hb, f in rows if (hb.contract_id, hb.id) not in existing
            ]
            if fresh:
                session.execute(sqlite.insert(hist).on_conflict_do_nothing(), fresh)
            stored = len(fresh)
        if plan.changes:
            session.execute(
                insert(_EVENTS),
                [
                    {
                        "contract_id": c.contract_id,
                        "type": STATE_CHANGED,
                        "payload": _event_payload(c),
                        "created_at": received_at,
                    }
                    for c in plan.changes
                ],
            )
        touched = 0
        if live:
            result = session.execute(
                update(_CONTRACTS)
                .where(Contract.id.in_(live), Contract.last_activity_at < bump_before)
                .values(last_activity_at=received_at)
            )
            touched = int(getattr(result, "rowcount", 0) or 0)
        counter = COUNTERS
        up = sqlite.insert(counter).values(
            shard=_shard(),
            received=counts.received,
            stored=stored,
            duplicates=counts.in_batch_duplicates + len(rows) - stored,
            fenced=counts.fenced,
            refused=counts.refused,
            updated_at=received_at,
        )
        session.execute(
            up.on_conflict_do_update(
                index_elements=["shard"],
                set_={
                    name: counter.c[name] + up.excluded[name]
                    for name in ("received", "stored", "duplicates", "fenced", "refused")
                }
                | {"updated_at": up.excluded.updated_at},
            )
        )
        return stored, touched


def _event_payload(change: Any) -> dict[str, Any]:
    return {"contractId": str(change.contract_id), **change.payload()}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


_SUP_UPSERT = """
INSERT INTO supervisors AS s (task_id, contract_id, incarnation, version, state, phase, current_activity,
  progress, pending_task_ids, heartbeat_id, sent_at, last_received_at, alive, dead_at, daemon_id, host,
  created_at, updated_at)
SELECT r.task_id, r.contract_id, r.incarnation, r.version, r.state, r.phase, r.current_activity, r.progress,
  r.pending_task_ids, r.heartbeat_id, r.sent_at, r.last_received_at, r.alive, r.dead_at, r.daemon_id, r.host,
  %(now)s::timestamptz, %(now)s::timestamptz
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(task_id uuid, contract_id uuid, incarnation int, version int,
  state text, phase text, current_activity text, progress int, pending_task_ids jsonb, heartbeat_id uuid,
  sent_at timestamptz, last_received_at timestamptz, alive boolean, dead_at timestamptz, daemon_id text,
  host text)
ORDER BY r.task_id
ON CONFLICT (task_id) DO UPDATE SET incarnation = EXCLUDED.incarnation, version = EXCLUDED.version,
  state = EXCLUDED.state, phase = EXCLUDED.phase, current_activity = EXCLUDED.current_activity,
  progress = EXCLUDED.progress, pending_task_ids = EXCLUDED.pending_task_ids,
  heartbeat_id = EXCLUDED.heartbeat_id, sent_at = EXCLUDED.sent_at,
  last_received_at = EXCLUDED.last_received_at, alive = EXCLUDED.alive, dead_at = EXCLUDED.dead_at,
  daemon_id = EXCLUDED.daemon_id, host = EXCLUDED.host, updated_at = EXCLUDED.updated_at
WHERE s.version = EXCLUDED.version - 1
  AND (s.incarnation, coalesce(s.sent_at, '-infinity'::timestamptz))
      <= (EXCLUDED.incarnation, coalesce(EXCLUDED.sent_at, '-infinity'::timestamptz))
RETURNING task_id
"""

_WRITE_REST = """
WITH b AS (
  SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(contract_id uuid, id uuid, task_id uuid,
    incarnation int, state text, phase text, current_activity text, progress int, pending_task_ids jsonb,
    sent_at timestamptz, fenced boolean, daemon_id text, host text)
),
ins AS (
  INSERT INTO supervisor_heartbeats (contract_id, id, received_day, received_at, task_id, incarnation, state,
    phase, current_activity, progress, pending_task_ids, sent_at, fenced, daemon_id, host)
  SELECT b.contract_id, b.id, %(day)s::date, %(received_at)s::timestamptz, b.task_id, b.incarnation, b.state,
    b.phase, b.current_activity, b.progress, b.pending_task_ids, b.sent_at, b.fenced, b.daemon_id, b.host
  FROM b
  WHERE NOT EXISTS (
    SELECT 1 FROM supervisor_heartbeats h
    WHERE h.contract_id = b.contract_id AND h.id = b.id
      AND h.received_day < %(day)s::date AND h.received_day >= %(oldest)s::date)
  ON CONFLICT (contract_id, id, received_day) DO NOTHING
  RETURNING 1
),
ev AS (
  INSERT INTO contract_events (contract_id, type, payload, created_at)
  SELECT e.contract_id, e.type, e.payload, %(received_at)s::timestamptz
  FROM jsonb_to_recordset(%(events)s::jsonb) AS e(contract_id uuid, type text, payload jsonb)
  RETURNING id
),
due AS (
  SELECT id FROM contracts
  WHERE id = ANY(%(live)s::uuid[]) AND last_activity_at < %(bump_before)s::timestamptz
  ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
),
bump AS (
  UPDATE contracts c SET last_activity_at = %(received_at)s::timestamptz FROM due WHERE c.id = due.id
  RETURNING 1
),
n AS (SELECT count(*) AS stored FROM ins),
cnt AS (
  INSERT INTO heartbeat_counters AS k (shard, received, stored, duplicates, fenced, refused, updated_at)
  SELECT %(shard)s, %(received)s, n.stored, %(offered)s - n.stored, %(fenced)s, %(refused)s,
    %(received_at)s::timestamptz FROM n
  ON CONFLICT (shard) DO UPDATE SET received = k.received + EXCLUDED.received,
    stored = k.stored + EXCLUDED.stored, duplicates = k.duplicates + EXCLUDED.duplicates,
    fenced = k.fenced + EXCLUDED.fenced, refused = k.refused + EXCLUDED.refused,
    updated_at = EXCLUDED.updated_at
  RETURNING 1
)
SELECT (SELECT stored FROM n), (SELECT count(*) FROM bump), (SELECT count(*) FROM ev),
  (SELECT count(*) FROM cnt)
"""

_ensured: set[date] = set()
_ensure_lock = threading.Lock()


class PostgresStore(HeartbeatStore):
    """One JSON parameter per statement, expanded by `jsonb_to_recordset` on the server."""

    def __init__(self, settings: Settings) -> None:
        self.prepare_statements = settings.database_prepared_statements

    def prepare(self, engine: Engine, day: date) -> None:
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

    def _run(self, session: Session, sql: str, params: dict[str, Any]) -> Any:
        return execute_sql(session.connection(), sql, params, prepare=self.prepare_statements)

    def owners(self, session: Session, contract_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        if not contract_ids:
            return {}
        rows = self._run(
            session,
            "SELECT id, owner_id FROM contracts WHERE id = ANY(%(ids)s::uuid[])",
            {"ids": sorted(contract_ids)},
        )
        return {_as_uuid(cid): owner for cid, owner in rows}

    def supervisors(
        self, session: Session, task_ids: Iterable[uuid.UUID], *, lock: bool
    ) -> dict[uuid.UUID, SupervisorRecord]:
        ids = sorted(set(task_ids))
        if not ids:
            return {}
        columns = ", ".join(c.key for c in SUPERVISOR_COLUMNS)
        sql = f"SELECT {columns} FROM supervisors WHERE task_id = ANY(%(ids)s::uuid[]) ORDER BY task_id"
        if lock:
            sql += " FOR UPDATE"
        rows = self._run(session, sql, {"ids": ids})
        return {rec.task_id: rec for rec in (supervisor_record(row) for row in rows)}

    def upsert_supervisors(
        self,
        session: Session,
        writes: list[tuple[SupervisorRecord | None, SupervisorRecord]],
        now: datetime,
    ) -> set[uuid.UUID]:
        if not writes:
            return set()
        rows = [
            {
                "task_id": str(a.task_id),
                "contract_id": str(a.contract_id),
                "incarnation": a.incarnation,
                "version": a.version + 1,
                "state": a.state.value,
                "phase": a.phase,
                "current_activity": a.current_activity,
                "progress": a.progress,
                "pending_task_ids": list(a.pending_task_ids),
                "heartbeat_id": str(a.heartbeat_id) if a.heartbeat_id else None,
                "sent_at": _iso(a.sent_at),
                "last_received_at": _iso(a.last_received_at),
                "alive": a.alive,
                "dead_at": _iso(a.dead_at),
                "daemon_id": a.daemon_id,
                "host": a.host,
            }
            for _, a in writes
        ]
        done = {
            _as_uuid(r[0])
            for r in self._run(session, _SUP_UPSERT, {"rows": _dumps(rows), "now": now.isoformat()})
        }
        return {a.task_id for _, a in writes} - done

    def write_rest(
        self,
        session: Session,
        rows: list[tuple[Heartbeat, bool]],
        plan: BatchPlan,
        live: list[uuid.UUID],
        received_at: datetime,
        bump_before: datetime,
        counts: BatchCounts,
    ) -> tuple[int, int]:
        day = received_at.date()
        hist = [
            {
                "contract_id": str(hb.contract_id),
                "id": str(hb.id),
                "task_id": str(hb.task_id),
                "incarnation": hb.incarnation,
                "state": hb.state.value,
                "phase": hb.phase,
                "current_activity": hb.current_activity,
                "progress": hb.progress,
                "pending_task_ids": list(hb.pending_task_ids),
                "sent_at": hb.timestamp.isoformat(),
                "fenced": fenced,
                "daemon_id": hb.daemon_id,
                "host": hb.host,
            }
            for hb, fenced in rows
        ]
        events = [
            {"contract_id": str(c.contract_id), "type": STATE_CHANGED, "payload": _event_payload(c)}
            for c in plan.changes
        ]
        params = {
            "rows": _dumps(hist),
            "day": day.isoformat(),
            "oldest": (day - timedelta(days=2)).isoformat(),
            "received_at": received_at.isoformat(),
            "events": _dumps(events),
            "live": list(live),
            "bump_before": bump_before.isoformat(),
            "shard": _shard(),
            "received": counts.received,
            "offered": len(rows) + counts.in_batch_duplicates,
            "fenced": counts.fenced,
            "refused": counts.refused,
        }
        stored, touched, _events, _counted = self._run(session, _WRITE_REST, params).one()
        return int(stored), int(touched)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def store_for(engine: Engine, settings: Settings) -> HeartbeatStore:
    """The store for this database."""
    return PostgresStore(settings) if engine.dialect.name == "postgresql" else SqliteStore()


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
    "HeartbeatStore",
    "PostgresStore",
    "SqliteStore",
    "forget_partitions",
    "store_for",
    "supervisor_record",
]
