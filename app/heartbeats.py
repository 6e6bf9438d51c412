"""Heartbeat ingestion: a whole list of heartbeats per transaction, a constant number of statements.

One Celery task per heartbeat caps the fleet near the broker's per-message ceiling (a few
hundred a second here), so heartbeats travel in lists (`app.heartbeat_buffer`) and a worker
ingests a list like this, whatever its length:

1. who sent it: each group's principal, re-checked (cached, `app.auth.check_principal`);
   the contracts' owners in **one** query, so a sender acts only on contracts it may see;
2. the supervisors' stored states in **one** query;
3. the pure domain decides everything (`app.domain.supervisors.plan_batch`): per heartbeat
   applied / stale / fenced / duplicate / refused; per supervisor the newest state by
   (incarnation, timestamp), keys de-duplicated inside the batch, newest kept; the state
   changes worth an event; the fenced daemons to tell;
4. **one** upsert of the changed supervisors, guarded by the row's write counter (`version`)
   and by `(stored.incarnation, stored.sent_at) <= (new.incarnation, new.sent_at)`: a row
   another writer moved since step 2 is not overwritten; its heartbeats are judged again on
   the row as it now is (locked, this time). Retries are rare (a sender's resend racing its
   original, the dead sweep racing a late heartbeat) and bounded;
5. **one** statement for the rest: the history rows (a duplicate id stored once), the
   `supervisor_state_changed` events, the contracts' `last_activity_at` (moved only when
   older than a tenth of the stale threshold: rewriting the wide contract row per heartbeat
   was the largest cost), and the counters.

On PostgreSQL each list travels as one JSON parameter expanded server-side
(`jsonb_to_recordset`); on SQLite (the embedded default: one writer, no round trips) the
same decisions are written with executemany. Fenced heartbeats (rare) also write daemon
commands through the daemon-command outbox.

**Duplicates across partitions.** The history is partitioned by received day, and a
partitioned table's key must hold the partition key: `(contract_id, id, received_day)`. Within
a day the key refuses a repeated id (exactly, even for two workers at once: the second
waits for the first); a repeat on a later day is caught by checking the id in the earlier
retained days (at most two partitions, one index probe each). Ids are scoped to the contract,
so one owner's ids can neither collide with nor suppress another's. The one gap is two
deliveries of one id in flight at the same moment on either side of midnight UTC; a
redelivery only happens after the first delivery's worker died, so that needs a resend
racing its original across midnight.

**Counters** (received, stored, duplicates, fenced, refused) are rows of `heartbeat_counters`
added in the ingesting transaction, so they are exact whatever crashes (a redelivered list
counts once: the first attempt rolled back); sharded by process, so two workers never wait on
one row. The metrics read their sums (`counters`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, Table, delete, func, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from app import heartbeat_partitions as partitions
from app.auth import Caller, InvalidPrincipal, check_principal
from app.broker import Sender
from app.config import Settings, get_settings
from app.db import UnitOfWork, get_engine, unit_of_work
from app.domain.records import EventType
from app.domain.supervisors import (
    BatchPlan,
    Heartbeat,
    InvalidHeartbeat,
    Outcome,
    SupervisorRecord,
    SupervisorState,
    activity_bump_before,
    parse_heartbeat,
    plan_batch,
)
from app.messages import MessageRejected
from app.models import (
    Contract,
    ContractEvent,
    DaemonCommand,
    HeartbeatCounter,
    Supervisor,
    SupervisorHeartbeat,
    utcnow,
)
from app.prepared import execute_sql
from app.queues import TaskName

log = logging.getLogger(__name__)

# How long heartbeat history is kept (issue: 24 h).
RETENTION: Final = timedelta(hours=24)
# The most heartbeats one message may carry (a sender's list, or several coalesced).
MAX_PER_MESSAGE: Final = 5000
# SQLite retention deletes at most this many rows per transaction.
DELETE_CHUNK: Final = 5000
COUNTER_SHARDS: Final = 16
MAX_ATTEMPTS: Final = 5

# Event types written here (snake_case, like `app.domain.records.EventType`).
STATE_CHANGED: Final = EventType.SUPERVISOR_STATE_CHANGED.value
SUPERVISOR_DEAD: Final = EventType.SUPERVISOR_DEAD.value
# What a fenced daemon is told on the daemon command queue.
FENCED_COMMAND: Final = "supervisor_fenced"

Notify = Callable[[list[dict[str, Any]]], None]


# --- the message ----------------------------------------------------------------------------


def message_of(groups: Mapping[uuid.UUID, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The broker payload of `heartbeats.ingest`: heartbeats grouped by the principal that sent them."""
    return {
        "groups": [
            {"principalId": str(principal), "heartbeats": list(items)}
            for principal, items in groups.items()
            if items
        ]
    }


def _groups(message: Any) -> list[tuple[Any, list[Any]]]:
    if not isinstance(message, Mapping) or not isinstance(message.get("groups"), list):
        raise MessageRejected("heartbeats message must be {'groups': [{principalId, heartbeats: [...]}]}")
    out: list[tuple[Any, list[Any]]] = []
    total = 0
    for group in message["groups"]:
        if not isinstance(group, Mapping) or not isinstance(group.get("heartbeats"), list):
            raise MessageRejected("each heartbeats group needs a principalId and a heartbeats list")
        total += len(group["heartbeats"])
        out.append((group.get("principalId"), group["heartbeats"]))
    if total > MAX_PER_MESSAGE:
        raise MessageRejected(f"a heartbeats message carries at most {MAX_PER_MESSAGE} heartbeats ({total})")
    return out


@dataclass(frozen=True, slots=True)
class Refusal:
    raw: Any
    code: str
    field: str | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "problem": self.problem, "heartbeat": self.raw}


@dataclass
class IngestReport:
    """What one message did (the counters' increments, and the per-heartbeat outcomes)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    fenced: int = 0
    refused: list[Refusal] = field(default_factory=list)
    applied: int = 0
    state_changes: int = 0
    contracts_touched: int = 0
    attempts: int = 1

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "fenced": self.fenced,
            "refused": len(self.refused),
            "applied": self.applied,
            "stateChanges": self.state_changes,
        }


# --- ingestion ------------------------------------------------------------------------------


def ingest(
    message: Any,
    *,
    sender: Sender | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
    notify: Notify | None = None,
) -> IngestReport:
    """Ingest one heartbeats message in one transaction; see the module docstring."""
    settings = settings or get_settings()
    groups = _groups(message)
    received_at = now or utcnow()
    bind = engine or get_engine()
    store: _Store = _PostgresStore(settings) if bind.dialect.name == "postgresql" else _SqliteStore()
    store.prepare(bind, received_at.date())
    report = IngestReport()
    notices: list[dict[str, Any]] = []
    with unit_of_work(sender, engine=bind, settings=settings) as uow:
        session = uow.session
        accepted: list[tuple[Caller, Heartbeat]] = []
        for principal, items in groups:
            report.received += len(items)
            try:
                caller = check_principal(session, uuid.UUID(str(principal)))
            except (InvalidPrincipal, ValueError) as exc:
                reason = str(exc) if isinstance(exc, InvalidPrincipal) else "principalId is not a UUID"
                report.refused += [Refusal(r, "MESSAGE_REJECTED", "principalId", reason) for r in items]
                continue
            for raw in items:
                try:
                    accepted.append((caller, parse_heartbeat(raw)))
                except InvalidHeartbeat as exc:
                    report.refused.append(Refusal(raw, "VALIDATION_FAILED", exc.field, exc.problem))
        owners = store.owners(session, {hb.contract_id for _, hb in accepted})
        heartbeats: list[Heartbeat] = []
        for caller, hb in accepted:
            owner = owners.get(hb.contract_id)
            if owner is None or not caller.may_access(owner):
                report.refused.append(
                    Refusal(
                        hb.to_json(), "CONTRACT_NOT_FOUND", "contractId", "no such contract visible to you"
                    )
                )
            else:
                heartbeats.append(hb)
        plan = _apply_supervisors(session, store, heartbeats, received_at, report)
        for hb, outcome in zip(plan.heartbeats, plan.outcomes, strict=True):
            if outcome is Outcome.REFUSED:
                report.refused.append(
                    Refusal(hb.to_json(), "VALIDATION_FAILED", "taskId", "another contract's supervisor")
                )
        rows = plan.rows_to_store()
        live = plan.live_contracts()
        counts = _Counts(
            received=report.received,
            fenced=plan.count(Outcome.FENCED),
            refused=len(report.refused),
            in_batch_duplicates=plan.count(Outcome.DUPLICATE),
        )
        stored, touched = store.write_rest(
            session,
            rows,
            plan,
            sorted(live),
            received_at,
            activity_bump_before(received_at, timedelta(minutes=settings.contracts.stale_threshold_minutes)),
            counts,
        )
        report.stored = stored
        report.duplicates = counts.in_batch_duplicates + (len(rows) - stored)
        report.fenced = counts.fenced
        report.applied = plan.count(Outcome.APPLIED)
        report.state_changes = len(plan.changes)
        report.contracts_touched = touched
        if plan.fenced:
            _tell_fenced(uow, plan, received_at)
        if report.refused:
            _park_refused(session, report.refused, received_at)
        if notify is not None:
            notices = [
                {
                    "contractId": str(after.contract_id),
                    "taskId": str(after.task_id),
                    "state": after.state.value,
                    "activity": after.current_activity,
                    "progress": after.progress,
                    "incarnation": after.incarnation,
                    "alive": after.alive,
                }
                for _, after in plan.writes.values()
            ]
    if notify is not None and notices:
        try:
            notify(notices)
        except Exception:  # a live notice is best effort; the table is the record
            log.warning("heartbeat notice not published", exc_info=True)
    return report


@dataclass(frozen=True, slots=True)
class _Counts:
    received: int
    fenced: int
    refused: int
    in_batch_duplicates: int


def _apply_supervisors(
    session: Session, store: _Store, heartbeats: list[Heartbeat], received_at: datetime, report: IngestReport
) -> BatchPlan:
    """Plan, upsert with the version guard, and re-plan the supervisors that moved meanwhile."""
    current = store.supervisors(session, {hb.task_id for hb in heartbeats}, lock=False)
    plan = plan_batch(heartbeats, current, received_at)
    pending = dict(plan.writes)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        report.attempts = attempt
        failed = store.upsert_supervisors(session, list(pending.values()), received_at)
        if not failed:
            return plan
        # Another writer moved these rows after we read them: read them again under a row
        # lock (so this round cannot lose again) and judge their heartbeats afresh.
        current = {**current, **store.supervisors(session, failed, lock=True)}
        retry = plan_batch([hb for hb in heartbeats if hb.task_id in failed], current, received_at)
        plan = _merge(plan, retry, failed)
        pending = dict(retry.writes)
    raise RuntimeError(f"supervisor rows kept moving after {MAX_ATTEMPTS} attempts")


def _merge(plan: BatchPlan, retry: BatchPlan, failed: set[uuid.UUID]) -> BatchPlan:
    """`plan` with the heartbeats of the `failed` supervisors judged as in `retry`."""
    redone = iter(retry.outcomes)
    outcomes = [
        next(redone) if hb.task_id in failed else o
        for hb, o in zip(plan.heartbeats, plan.outcomes, strict=True)
    ]
    merged = BatchPlan(plan.heartbeats, outcomes)
    merged.writes = {t: w for t, w in plan.writes.items() if t not in failed} | retry.writes
    merged.changes = [c for c in plan.changes if c.task_id not in failed] + retry.changes
    merged.fenced = [f for f in plan.fenced if f.task_id not in failed] + retry.fenced
    return merged


def _tell_fenced(uow: UnitOfWork, plan: BatchPlan, now: datetime) -> None:
    """Queue a `supervisor_fenced` command per fenced supervisor (daemon-command outbox)."""
    contracts = set()
    for f in plan.fenced:
        uow.session.add(
            DaemonCommand(
                contract_id=f.contract_id,
                command=FENCED_COMMAND,
                payload=fenced_payload(
                    f.task_id, f.sent_incarnation, f.current_incarnation, f.daemon_id, f.host
                ),
                created_at=now,
            )
        )
        contracts.add(f.contract_id)
    for contract_id in sorted(contracts):
        uow.dispatch_after_commit(TaskName.PUBLISH_DAEMON_COMMANDS, {"contractId": str(contract_id)})


def fenced_payload(
    task_id: uuid.UUID, sent: int | None, current: int, daemon_id: str | None, host: str | None
) -> dict[str, Any]:
    """What a fenced daemon is told: stop this incarnation; a restart uses `currentIncarnation`."""
    return {
        "taskId": str(task_id),
        "fencedIncarnation": sent if sent is not None else current - 1,
        "currentIncarnation": current,
        "daemonId": daemon_id,
        "host": host,
        "reason": "this supervisor incarnation was declared dead or replaced; stop it. A restart "
        "must send heartbeats with currentIncarnation.",
    }


def _park_refused(session: Session, refused: list[Refusal], now: datetime) -> None:
    """Refused heartbeats of a message are kept as one dead letter (the rest were stored)."""
    from app.dead_letters import RejectedMessage, record_dead_letter

    body = json.dumps([r.to_json() for r in refused], default=str, ensure_ascii=True)
    first = refused[0]
    record_dead_letter(
        session,
        RejectedMessage(
            queue="heartbeats",
            task_name=TaskName.INGEST_HEARTBEATS.value,
            message_id=None,
            headers=None,
            raw_body=body,
            content_type="application/json",
            content_encoding="utf-8",
            error=f"{first.code}: {len(refused)} heartbeat(s) refused, first: {first.field}: {first.problem}",
            error_code=first.code,
        ),
        now,
    )


# --- the stores: PostgreSQL (JSON parameter, server-side) and SQLite (executemany) -----------


class _Store:
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
        counts: _Counts,
    ) -> tuple[int, int]:
        raise NotImplementedError


_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]
_HISTORY: Table = SupervisorHeartbeat.__table__  # type: ignore[assignment]
_EVENTS: Table = ContractEvent.__table__  # type: ignore[assignment]
_CONTRACTS: Table = Contract.__table__  # type: ignore[assignment]
_COUNTERS: Table = HeartbeatCounter.__table__  # type: ignore[assignment]

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


class _SqliteStore(_Store):
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
        counts: _Counts,
    ) -> tuple[int, int]:
        hist = _HISTORY
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
        counter = _COUNTERS
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


class _PostgresStore(_Store):
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
        counts: _Counts,
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


# --- retention and counters -------------------------------------------------------------------


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
        _ensured.difference_update(dropped)
        return RetentionReport(created, dropped, 0)
    deleted = 0
    hist = _HISTORY
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


def counters(session: Session) -> dict[str, int]:
    """Totals of the heartbeat counters over every shard (what the metrics will export)."""
    table = _COUNTERS
    names = ("received", "stored", "duplicates", "fenced", "refused")
    row = session.execute(select(*(func.coalesce(func.sum(table.c[n]), 0) for n in names))).one()
    return {name: int(value) for name, value in zip(names, row, strict=True)}


__all__ = [
    "FENCED_COMMAND",
    "MAX_PER_MESSAGE",
    "RETENTION",
    "STATE_CHANGED",
    "SUPERVISOR_COLUMNS",
    "SUPERVISOR_DEAD",
    "IngestReport",
    "Refusal",
    "RetentionReport",
    "apply_retention",
    "counters",
    "fenced_payload",
    "ingest",
    "message_of",
    "partition_days",
    "supervisor_record",
]
