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

import orjson
from sqlalchemy import Engine, Table, Uuid, insert, null, select, union_all, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from app import heartbeat_partitions as partitions
from app.config import Settings
from app.domain.records import EventType
from app.domain.supervisors import BatchPlan, Heartbeat, SupervisorRecord, SupervisorState
from app.models import (
    Contract,
    ContractEvent,
    ContractTask,
    HeartbeatCounter,
    Supervisor,
    SupervisorHeartbeat,
)
from app.prepared import driver_rows

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

    def owners(self, session: Session, contract_ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
        """(owner, status) of each of the contracts that exist."""
        if not contract_ids:
            return {}
        rows = session.execute(
            select(Contract.id, Contract.owner_id, Contract.status).where(Contract.id.in_(contract_ids))
        )
        return {cid: (owner, status) for cid, owner, status in rows}

    def owners_and_tasks(
        self, session: Session, contract_ids: set[uuid.UUID], task_ids: set[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, tuple[str, str]], dict[uuid.UUID, uuid.UUID]]:
        """`owners`, and the contract of each of `task_ids` that is an ordinary task
        (`contract_tasks`): a task id belongs to one contract, so a heartbeat naming one on
        another is refused. One statement for both (the SQLite ingestion's)."""
        if not contract_ids:
            return {}, {}
        rows = session.execute(
            union_all(
                select(Contract.id, Contract.owner_id, Contract.status, null().cast(Uuid)).where(
                    Contract.id.in_(sorted(contract_ids))
                ),
                select(ContractTask.contract_id, null(), null(), ContractTask.id).where(
                    ContractTask.id.in_(sorted(task_ids))
                ),
            )
        )
        owners: dict[uuid.UUID, tuple[str, str]] = {}
        tasks: dict[uuid.UUID, uuid.UUID] = {}
        for cid, owner, status, task_id in rows:
            if task_id is None:
                owners[_as_uuid(cid)] = (owner, status)
            else:
                tasks[_as_uuid(task_id)] = _as_uuid(cid)
        return owners, tasks

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

# The supervisors' fold, in the database (PostgreSQL). The worker sends the list, de-duplicated
# by id, and one statement judges every heartbeat against its supervisor's row as it is now
# (locked, in task order, so two workers never wait on each other in a circle):
#   fenced   another incarnation's than the one in force (older, or never issued), or an
#            unnamed one once an incarnation beyond the first was issued or it was declared dead;
#            with no row (none was started: see below), one naming any but the first
#            (`starts_supervisor`), against incarnation 1;
#   refused  its task id belongs to another contract (`held_by_another` in app.domain.supervisors:
#            the row's contract_id is another; or a contract_tasks row holds it on another
#            contract, an ordinary task there; the fronts refuse the same heartbeats first), or
#            it may start a supervisor that has no row (a row removed since this process saw it);
#   the winner per supervisor: the newest of the rest by (incarnation, timestamp), the first
#   received among equals; it replaces the stored state only when newer than it; every
#   unfenced heartbeat proves liveness (last_received_at).
# A supervisor seen for the first time gets a row first (`_SUP_FIRST`, version 0: nothing
# committed ever shows it), so the fold can lock every supervisor it judges: only one that a
# heartbeat of the list may start (naming incarnation 1 or none, on the contract of the first
# such heartbeat), which the fold then writes, unless another contract holds its id as an
# ordinary task (then it gets none and its heartbeats are refused); one whose heartbeats all
# name an incarnation never issued gets none, and they are fenced. Nothing is read
# back but the rare and the small: the refused and fenced heartbeats, and the notices.
_SUP_FIRST = """
INSERT INTO supervisors (task_id, contract_id, incarnation, version, state, phase, current_activity, progress,
  pending_task_ids, heartbeat_id, sent_at, last_received_at, alive, dead_at, daemon_id, host, created_at,
  updated_at)
SELECT t.task_id, t.contract_id, 1, 0, 'initializing', '-', '', 0, '[]', NULL, NULL,
  %(received_at)s::timestamptz, true, NULL, NULL, NULL, %(received_at)s::timestamptz,
  %(received_at)s::timestamptz
FROM unnest(%(tasks)s::uuid[], %(contracts)s::uuid[]) AS t(task_id, contract_id)
WHERE NOT EXISTS (SELECT 1 FROM contract_tasks ct WHERE ct.id = t.task_id AND ct.contract_id <> t.contract_id)
ORDER BY t.task_id
ON CONFLICT (task_id) DO NOTHING
"""

# `pendingTaskIds` is read as text: nearly every list is empty, and the constant '[]'::jsonb
# spares the server a jsonb parse per heartbeat (expanding 500 heartbeats took 8-10 ms with the
# column typed jsonb, 5-7 ms with it as text, measured with `json_to_recordset` alone).
_FOLD = """
WITH b AS (
  SELECT * FROM json_to_recordset(%(rows)s::json) AS r(n int, "contractId" uuid, id uuid, "taskId" uuid,
    incarnation int, state text, phase text, "currentActivity" text, progress int, "pendingTaskIds" text,
    "timestamp" timestamptz, "daemonId" text, host text)
),
cur AS MATERIALIZED (
  SELECT s.task_id, s.contract_id, s.incarnation, s.state, s.sent_at, s.alive, s.version
  FROM unnest(%(tasks)s::uuid[]) AS t(task_id) JOIN supervisors s ON s.task_id = t.task_id
  ORDER BY s.task_id FOR UPDATE OF s
),
j AS MATERIALIZED (
  SELECT b.n, b."contractId" AS contract_id, b.id, b."taskId" AS task_id, b.incarnation, b.state, b.phase,
    coalesce(b."currentActivity", '') AS current_activity, coalesce(b.progress, 0) AS progress,
    CASE WHEN b."pendingTaskIds" IS NULL OR b."pendingTaskIds" = '[]' THEN '[]'::jsonb
         ELSE b."pendingTaskIds"::jsonb END AS pending_task_ids, b."timestamp" AS sent_at,
    b."daemonId" AS daemon_id, b.host, c.version AS cver, c.state AS cstate, c.alive AS calive,
    coalesce(c.incarnation, 1) AS cinc,
    coalesce(c.sent_at, '-infinity'::timestamptz) AS csent,
    ot.id IS NOT NULL OR coalesce(c.contract_id <> b."contractId", coalesce(b.incarnation, 1) = 1) AS refused,
    ot.id IS NULL AND coalesce(c.contract_id = b."contractId" AND CASE WHEN b.incarnation IS NULL
                                                     THEN NOT c.alive OR c.incarnation > 1
                                                     ELSE b.incarnation <> c.incarnation END,
             coalesce(b.incarnation, 1) <> 1) AS fenced,
    coalesce(b.incarnation, CASE WHEN c.version > 0 THEN c.incarnation ELSE 1 END) AS eff
  FROM b LEFT JOIN cur c ON c.task_id = b."taskId"
  LEFT JOIN contract_tasks ot ON ot.id = b."taskId" AND ot.contract_id <> b."contractId"
),
w AS MATERIALIZED (
  SELECT DISTINCT ON (j.task_id) j.*, (j.cver = 0 OR (j.eff, j.sent_at) > (j.cinc, j.csent)) AS newer
  FROM j WHERE NOT j.refused AND NOT j.fenced
  ORDER BY j.task_id, j.eff DESC, j.sent_at DESC, j.n
),
upd AS (
  UPDATE supervisors s SET version = s.version + 1,
    last_received_at = greatest(s.last_received_at, %(received_at)s::timestamptz),
    incarnation = CASE WHEN w.newer THEN w.eff ELSE s.incarnation END,
    state = CASE WHEN w.newer THEN w.state ELSE s.state END,
    phase = CASE WHEN w.newer THEN w.phase ELSE s.phase END,
    current_activity = CASE WHEN w.newer THEN w.current_activity ELSE s.current_activity END,
    progress = CASE WHEN w.newer THEN w.progress ELSE s.progress END,
    pending_task_ids = CASE WHEN w.newer THEN w.pending_task_ids ELSE s.pending_task_ids END,
    heartbeat_id = CASE WHEN w.newer THEN w.id ELSE s.heartbeat_id END,
    sent_at = CASE WHEN w.newer THEN w.sent_at ELSE s.sent_at END,
    alive = s.alive OR w.newer,
    dead_at = CASE WHEN w.newer THEN NULL ELSE s.dead_at END,
    daemon_id = CASE WHEN w.newer THEN coalesce(w.daemon_id, s.daemon_id) ELSE s.daemon_id END,
    host = CASE WHEN w.newer THEN coalesce(w.host, s.host) ELSE s.host END,
    updated_at = %(received_at)s::timestamptz
  FROM w WHERE s.task_id = w.task_id
  RETURNING s.task_id, s.contract_id, s.state, s.current_activity, s.progress, s.incarnation, s.alive
),
ev AS (
  INSERT INTO contract_events (contract_id, type, payload, created_at)
  SELECT w.contract_id, %(event_type)s,
    jsonb_build_object('contractId', w.contract_id, 'taskId', w.task_id,
      'oldState', CASE WHEN w.cver = 0 THEN NULL ELSE w.cstate END, 'newState', w.state, 'incarnation', w.eff)
    || CASE WHEN w.cver > 0 AND NOT w.calive THEN '{"revived": true}'::jsonb ELSE '{}'::jsonb END,
    %(received_at)s::timestamptz
  FROM w WHERE w.newer AND (w.cver = 0 OR w.cstate <> w.state OR NOT w.calive)
  ORDER BY w.n
  RETURNING id
),
ins AS (
  INSERT INTO supervisor_heartbeats (contract_id, id, received_day, received_at, task_id, incarnation, state,
    phase, current_activity, progress, pending_task_ids, sent_at, fenced, daemon_id, host)
  SELECT j.contract_id, j.id, %(day)s::date, %(received_at)s::timestamptz, j.task_id, j.incarnation, j.state,
    j.phase, j.current_activity, j.progress, j.pending_task_ids, j.sent_at, j.fenced, j.daemon_id, j.host
  FROM j
  WHERE NOT j.refused AND NOT EXISTS (
    SELECT 1 FROM supervisor_heartbeats h
    WHERE h.contract_id = j.contract_id AND h.id = j.id
      AND h.received_day < %(day)s::date AND h.received_day >= %(oldest)s::date)
  ON CONFLICT (contract_id, id, received_day) DO NOTHING
  RETURNING 1
),
due AS (
  SELECT id FROM contracts
  WHERE id IN (SELECT j.contract_id FROM j WHERE NOT j.refused AND NOT j.fenced)
    AND last_activity_at < %(bump_before)s::timestamptz
  ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
),
bump AS (
  UPDATE contracts c SET last_activity_at = %(received_at)s::timestamptz FROM due WHERE c.id = due.id
  RETURNING 1
),
k AS (
  SELECT (SELECT count(*) FROM ins) AS stored,
    count(*) FILTER (WHERE NOT j.refused) AS offered,
    count(*) FILTER (WHERE j.fenced) AS fenced,
    count(*) FILTER (WHERE j.refused) AS refused
  FROM j
),
cnt AS (
  INSERT INTO heartbeat_counters AS t (shard, received, stored, duplicates, fenced, refused, updated_at)
  SELECT %(shard)s, %(received)s, k.stored, k.offered + %(repeats)s - k.stored, k.fenced,
    k.refused + %(refused)s, %(received_at)s::timestamptz FROM k
  ON CONFLICT (shard) DO UPDATE SET received = t.received + EXCLUDED.received,
    stored = t.stored + EXCLUDED.stored, duplicates = t.duplicates + EXCLUDED.duplicates,
    fenced = t.fenced + EXCLUDED.fenced, refused = t.refused + EXCLUDED.refused,
    updated_at = EXCLUDED.updated_at
  RETURNING 1
)
SELECT k.stored, k.offered, k.fenced, (SELECT count(*) FROM bump), (SELECT count(*) FROM ev),
  (SELECT count(*) FROM w WHERE w.newer), (SELECT count(*) FROM cnt),
  (SELECT coalesce(json_agg(j.n), '[]') FROM j WHERE j.refused)::text,
  (SELECT coalesce(json_agg(json_build_object('contractId', f.contract_id, 'taskId', f.task_id,
     'incarnation', f.incarnation, 'current', f.cinc, 'daemonId', f.daemon_id, 'host', f.host)), '[]')
   FROM (SELECT DISTINCT ON (j.task_id, j.incarnation) j.* FROM j WHERE j.fenced
         ORDER BY j.task_id, j.incarnation, j.n) f)::text,
  CASE WHEN %(notices)s THEN (SELECT coalesce(json_agg(json_build_object('notice', 'heartbeat',
     'contractId', u.contract_id, 'payload', json_build_object('taskId', u.task_id, 'state', u.state,
     'activity', u.current_activity, 'progress', u.progress, 'incarnation', u.incarnation,
     'alive', u.alive))), '[]') FROM upd u)::text
  ELSE (SELECT count(*) FROM upd)::text END
FROM k
"""


_COUNT_ONLY = """
INSERT INTO heartbeat_counters AS t (shard, received, stored, duplicates, fenced, refused, updated_at)
VALUES (%(shard)s, %(received)s, 0, 0, 0, %(refused)s, %(at)s::timestamptz)
ON CONFLICT (shard) DO UPDATE SET received = t.received + EXCLUDED.received,
  refused = t.refused + EXCLUDED.refused, updated_at = EXCLUDED.updated_at
"""


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


_ensured: set[date] = set()
# Supervisors this process saw committed: they have a row, so a list made only of them skips
# `_SUP_FIRST`. A supervisors row goes only with its contract, whose heartbeats are refused
# before the fold (CONTRACT_NOT_FOUND), so a stale entry changes nothing. Bounded: cleared when full.
_known_tasks: set[str] = set()
MAX_KNOWN_TASKS: Final = 200_000


def remember_supervisors(task_ids: Iterable[str]) -> None:
    """After commit: these supervisors have a row (see `_known_tasks`)."""
    if len(_known_tasks) > MAX_KNOWN_TASKS:
        _known_tasks.clear()
    _known_tasks.update(task_ids)


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

    def _run(self, session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return driver_rows(session.connection(), sql, params, prepare=self.prepare_statements)

    def owners(self, session: Session, contract_ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
        if not contract_ids:
            return {}
        rows = self._run(
            session,
            "SELECT id, owner_id, status FROM contracts WHERE id = ANY(%(ids)s::uuid[])",
            {"ids": sorted(contract_ids)},
        )
        return {_as_uuid(cid): (owner, status) for cid, owner, status in rows}

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

    def owners_by_text(self, session: Session, contract_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(owner, status) of the contracts that exist, keyed by the id as text (no UUID objects)."""
        ids = sorted(set(contract_ids))
        if not ids:
            return {}
        rows = self._run(
            session,
            "SELECT c.id::text, c.owner_id, c.status FROM unnest(%(ids)s::uuid[]) AS t(id) "
            "JOIN contracts c ON c.id = t.id",
            {"ids": _uuid_array(ids)},
        )
        return {cid: (owner, status) for cid, owner, status in rows}

    def fold(
        self,
        session: Session,
        rows: list[dict[str, Any]],
        tasks: set[str],
        first_contract: dict[str, str],
        received_at: datetime,
        bump_before: datetime,
        *,
        received: int,
        repeats: int,
        refused: int,
        notices: bool,
    ) -> FoldResult:
        """Store a de-duplicated list of heartbeats in wire form (each with its position `n`).

        Two statements whatever the list's length: the first sight of new supervisors, then the
        fold (see `_FOLD`), which writes supervisors, events, history, activity and counters.
        `tasks` are the list's task ids; `first_contract` maps those a heartbeat of the list may
        start (`starts_supervisor`) to the contract of the first such heartbeat.
        """
        task_array = _uuid_array(sorted(tasks))
        new = [t for t in sorted(first_contract) if t not in _known_tasks]
        if new:
            self._run(
                session,
                _SUP_FIRST,
                {
                    "tasks": _uuid_array(new),
                    "contracts": _uuid_array([first_contract[t] for t in new]),
                    "received_at": received_at.isoformat(),
                },
            )
        day = received_at.date()
        params = {
            "rows": _dumps(rows),
            "tasks": task_array,
            "received_at": received_at.isoformat(),
            "event_type": STATE_CHANGED,
            "day": day.isoformat(),
            "oldest": (day - timedelta(days=2)).isoformat(),
            "bump_before": bump_before.isoformat(),
            "shard": _shard(),
            "received": received,
            "repeats": repeats,
            "refused": refused,
            "notices": notices,
        }
        (row,) = self._run(session, _FOLD, params)
        stored, offered, fenced, touched, changes, applied, _counted, foreign, fenced_json, written = row
        return FoldResult(
            stored=int(stored),
            offered=int(offered),
            fenced=int(fenced),
            touched=int(touched),
            state_changes=int(changes),
            applied=int(applied),
            refused=json.loads(foreign),
            fenced_supervisors=json.loads(fenced_json),
            notices=written if notices else "[]",
        )

    def fold_nothing(
        self, session: Session, received_at: datetime, received: int, refused: int
    ) -> FoldResult:
        """A list with nothing to store still counts what it received and refused."""
        self._run(
            session,
            _COUNT_ONLY,
            {"shard": _shard(), "received": received, "refused": refused, "at": received_at.isoformat()},
        )
        return FoldResult(0, 0, 0, 0, 0, 0, [], [], "[]")

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
        ((stored, touched, _events, _counted),) = self._run(session, _WRITE_REST, params)
        return int(stored), int(touched)


def _uuid_array(ids: Sequence[str]) -> str:
    """A uuid[] literal from canonical UUID strings (cheaper than adapting a list of UUIDs)."""
    return "{" + ",".join(ids) + "}"


def _dumps(value: Any) -> str:
    """JSON text for a parameter: orjson, a tenth of `json.dumps`'s time on a 500-heartbeat list
    (the worker encodes every list it stores once more, for the server to expand)."""
    return orjson.dumps(value).decode()


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
    "FoldResult",
    "HeartbeatStore",
    "PostgresStore",
    "SqliteStore",
    "forget_partitions",
    "remember_supervisors",
    "store_for",
    "supervisor_record",
]
