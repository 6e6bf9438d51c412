"""Heartbeat ingestion: a whole list of heartbeats per transaction, a constant number of statements.

One Celery task per heartbeat caps the fleet near the broker's per-message ceiling (a few
hundred a second here), so heartbeats travel in lists (`app.heartbeat_buffer`) and a worker
ingests a list like this, whatever its length:

1. who sent it: each group's principal, re-checked (cached, `app.auth.check_principal`);
   each heartbeat checked (`wire_heartbeat`: a quick check of what our senders produce,
   `parse_heartbeat` for anything else, so the same heartbeats are refused with the same
   field named); the contracts' owners and statuses in **one** query, so a sender acts
   only on contracts it may see, and a closed contract's heartbeats (completed, failed,
   archived) are refused as the fronts refuse them (`closed_contract_refusal`): they neither
   start nor revive a supervisor, and are not stored in the history (the fronts refuse the
   same heartbeat, so what became of one does not depend on whether it raced the close);
   like every refusal here they are counted and kept in the list's dead letter;
2. on PostgreSQL (`_ingest_folded`), the list de-duplicated by id goes to the database,
   which folds it into the supervisors itself (`PostgresStore.fold`): **two** statements,
   the first sight of new supervisors, then one that locks the list's supervisors in task
   order and judges every heartbeat against its row as it is then: fenced, another
   contract's, or one of the rest, of which the newest by (incarnation, timestamp) replaces
   the stored state only if newer; it writes the supervisors, the `supervisor_state_changed`
   events (only for a real change), the history rows (a duplicate id stored once), the
   contracts' `last_activity_at` (moved only when older than a tenth of the stale
   threshold: rewriting the wide contract row per heartbeat was the largest cost) and the
   counters, and answers only what is rare or small (the refused and fenced heartbeats, the
   live notices). No supervisor row is read back and no per-heartbeat object is built: the
   read-back and the Python fold were most of a list's cost;
3. on SQLite (one writer at a time, a statement is a function call) the supervisors'
   stored states are read in **one** query, the pure domain decides everything
   (`app.domain.supervisors.plan_batch`, the same rules), and the writes go through
   executemany, guarded by the row's write counter (`version`) and by
   `(stored.incarnation, stored.sent_at) <= (new.incarnation, new.sent_at)`.

On PostgreSQL each list travels as one JSON parameter expanded server-side
(`json_to_recordset`). Fenced heartbeats (rare) also write daemon commands through the
daemon-command outbox, and so do heartbeats refused because another contract holds their task
id (rarer: the fronts refuse them, unless two first claims on one new id raced past them):
their daemon is told once per task id and contract (`app.heartbeat_refusals`), beside the
dead letter.

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
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from app import heartbeat_partitions as partitions
from app.auth import Caller, InvalidPrincipal, check_principal
from app.broker import Sender
from app.config import Settings, get_settings
from app.daemon_commands import NewCommand, queue_commands
from app.db import UnitOfWork, get_engine, unit_of_work
from app.domain.lifecycle import CLOSED_STATUSES
from app.domain.records import EventType
from app.domain.supervisors import (
    BatchPlan,
    Heartbeat,
    InvalidHeartbeat,
    Outcome,
    activity_bump_before,
    closed_contract_refusal,
    fence_reason,
    held_by_another,
    parse_heartbeat,
    plan_batch,
    starts_supervisor,
    wire_heartbeat,
)
from app.heartbeat_refusals import ForeignClaim, tell_refused
from app.heartbeat_store import (
    COUNTERS,
    HISTORY,
    SUPERVISOR_COLUMNS,
    BatchCounts,
    HeartbeatStore,
    PostgresStore,
    forget_partitions,
    remember_supervisors,
    store_for,
    supervisor_record,
)
from app.messages import MessageRejected
from app.models import utcnow
from app.queues import TaskName

log = logging.getLogger(__name__)

# How long heartbeat history is kept (issue: 24 h).
RETENTION: Final = timedelta(hours=24)
# The most heartbeats one message may carry (a sender's list, or several coalesced).
MAX_PER_MESSAGE: Final = 5000
# SQLite retention deletes at most this many rows per transaction.
DELETE_CHUNK: Final = 5000
MAX_ATTEMPTS: Final = 5

# Event types written here (snake_case, like `app.domain.records.EventType`).
STATE_CHANGED: Final = EventType.SUPERVISOR_STATE_CHANGED.value
SUPERVISOR_DEAD: Final = EventType.SUPERVISOR_DEAD.value
# The dead letter's problem for a heartbeat naming another contract's task id (its supervisor
# or an ordinary task reported started there): a task id belongs to one contract.
FOREIGN_TASK: Final = "another contract's supervisor or task"
# What a fenced daemon is told on the daemon command queue.
FENCED_COMMAND: Final = "supervisor_fenced"

# Receives, after commit, the live monitor's `heartbeat` notices of the supervisors a list wrote:
# a JSON array of `{"notice": "heartbeat", "contractId", "payload": {taskId, state, activity,
# progress, incarnation, alive}}`, the shape the live channel carries (`app.live_events`). Text,
# so that on PostgreSQL what the fold's statement built goes out as it is, never decoded here.
Notify = Callable[[str], None]
NOTICE: Final = "heartbeat"


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

    def events_written(self) -> dict[str, int]:
        """The contract events the list's transaction wrote, by type, for /metrics after commit.

        Only `supervisor_state_changed`, one per state change: both stores write exactly one
        event per change and no other type, so the count they answer is the count by type.
        """
        return {STATE_CHANGED: self.state_changes}


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
    store = store_for(bind, settings)
    store.prepare(bind, received_at.date())
    if isinstance(store, PostgresStore):
        return _ingest_folded(groups, store, sender, bind, settings, received_at, notify)
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
        owners, task_contracts = store.owners_and_tasks(
            session, {hb.contract_id for _, hb in accepted}, {hb.task_id for _, hb in accepted}
        )
        heartbeats: list[Heartbeat] = []
        foreign: list[Heartbeat] = []  # refused: another contract holds the task id
        for caller, hb in accepted:
            owner, status = owners.get(hb.contract_id) or (None, None)
            if owner is None or not caller.may_access(owner):
                report.refused.append(
                    Refusal(
                        hb.to_json(), "CONTRACT_NOT_FOUND", "contractId", "no such contract visible to you"
                    )
                )
            elif status in CLOSED_STATUSES:
                report.refused.append(_closed(hb.to_json(), status))
            elif held_by_another(task_contracts.get(hb.task_id), hb.contract_id):
                report.refused.append(Refusal(hb.to_json(), "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
                foreign.append(hb)
            else:
                heartbeats.append(hb)
        plan = _apply_supervisors(session, store, heartbeats, received_at, report)
        for hb, outcome in zip(plan.heartbeats, plan.outcomes, strict=True):
            if outcome is Outcome.REFUSED:
                report.refused.append(Refusal(hb.to_json(), "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
                foreign.append(hb)
        rows = plan.rows_to_store()
        live = plan.live_contracts()
        counts = BatchCounts(
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
        if foreign:
            claims = [ForeignClaim(h.contract_id, h.task_id, str(h.id), h.daemon_id) for h in foreign]
            tell_refused(uow, claims, received_at)
        if report.refused:
            _park_refused(session, report.refused, received_at)
        if notify is not None:
            notices = [
                {
                    "notice": NOTICE,
                    "contractId": str(after.contract_id),
                    "payload": {
                        "taskId": str(after.task_id),
                        "state": after.state.value,
                        "activity": after.current_activity,
                        "progress": after.progress,
                        "incarnation": after.incarnation,
                        "alive": after.alive,
                    },
                }
                for _, after in plan.writes.values()
            ]
    if notify is not None and notices:
        try:
            notify(json.dumps(notices, separators=(",", ":")))
        except Exception:  # a live notice is best effort; the table is the record
            log.warning("heartbeat notice not published", exc_info=True)
    return report


def _ingest_folded(
    groups: list[tuple[Any, list[Any]]],
    store: PostgresStore,
    sender: Sender | None,
    bind: Engine,
    settings: Settings,
    received_at: datetime,
    notify: Notify | None,
) -> IngestReport:
    """PostgreSQL: the same rules, with the supervisors' fold done by the database.

    Python only checks the heartbeats (the quick wire-form check; `parse_heartbeat` for
    anything else), drops repeated ids, checks the senders' rights, and hands the list to
    `PostgresStore.fold`: no supervisor row is read back, no `Heartbeat` object is built.
    """
    report = IngestReport()
    with unit_of_work(sender, engine=bind, settings=settings) as uow:
        session = uow.session
        checked: list[tuple[Caller, dict[str, Any]]] = []
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
                    checked.append((caller, wire_heartbeat(raw)))
                except InvalidHeartbeat as exc:
                    report.refused.append(Refusal(raw, "VALIDATION_FAILED", exc.field, exc.problem))
        owners = store.owners_by_text(session, {item["contractId"] for _, item in checked})
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        tasks: set[str] = set()
        first_contract: dict[str, str] = {}  # the contract a new supervisor would start on
        repeats = 0
        for caller, item in checked:
            contract_id = item["contractId"]
            owner, status = owners.get(contract_id) or (None, None)
            if owner is None or not caller.may_access(owner):
                report.refused.append(
                    Refusal(item, "CONTRACT_NOT_FOUND", "contractId", "no such contract visible to you")
                )
                continue
            if status in CLOSED_STATUSES:
                report.refused.append(_closed(item, status))
                continue
            key = (contract_id, item["id"])
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
            tasks.add(item["taskId"])
            if starts_supervisor(item.get("incarnation")):
                first_contract.setdefault(item["taskId"], contract_id)
            rows.append({**item, "n": len(rows)})
        if rows:
            stale_threshold = timedelta(minutes=settings.contracts.stale_threshold_minutes)
            done = store.fold(
                session,
                rows,
                tasks,
                first_contract,
                received_at,
                activity_bump_before(received_at, stale_threshold),
                received=report.received,
                repeats=repeats,
                refused=len(report.refused),
                notices=notify is not None,
            )
        else:
            done = store.fold_nothing(session, received_at, report.received, len(report.refused))
        for n in done.refused:
            item = {k: v for k, v in rows[n].items() if k != "n"}
            report.refused.append(Refusal(item, "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
        report.stored = done.stored
        report.duplicates = repeats + done.offered - done.stored
        report.fenced = done.fenced
        report.applied = done.applied
        report.state_changes = done.state_changes
        report.contracts_touched = done.touched
        if done.fenced_supervisors:
            _tell_fenced_rows(uow, done.fenced_supervisors, received_at)
        if done.refused:
            tell_refused(uow, [_foreign_claim(rows[n]) for n in done.refused], received_at)
        if report.refused:
            _park_refused(session, report.refused, received_at)
    # Committed: they have a row now (the others need none), but for those refused: another
    # contract holds them, maybe as an ordinary task, which gets no supervisors row.
    refused_tasks = {rows[n]["taskId"] for n in done.refused}
    remember_supervisors(t for t in first_contract if t not in refused_tasks)
    if notify is not None and done.notices != "[]":
        try:
            notify(done.notices)
        except Exception:  # a live notice is best effort; the table is the record
            log.warning("heartbeat notice not published", exc_info=True)
    return report


def _foreign_claim(item: Mapping[str, Any]) -> ForeignClaim:
    """A heartbeat the fold refused (its wire form), as `tell_refused` takes it."""
    return ForeignClaim(
        uuid.UUID(item["contractId"]), uuid.UUID(item["taskId"]), item["id"], item.get("daemonId")
    )


def _closed(raw: Any, status: str) -> Refusal:
    """A heartbeat on a closed contract, refused as the fronts refuse it: it creates, revives
    and stores nothing (see the module docstring)."""
    refusal = closed_contract_refusal(status)
    assert refusal is not None
    return Refusal(raw, refusal.code, "contractId", refusal.message)


def _tell_fenced_rows(uow: UnitOfWork, fenced: list[dict[str, Any]], now: datetime) -> None:
    """`_tell_fenced` for the fold's answer (one row per fenced supervisor and sent incarnation)."""
    queue_commands(
        uow,
        [
            NewCommand(
                uuid.UUID(f["contractId"]),
                FENCED_COMMAND,
                fenced_payload(
                    uuid.UUID(f["taskId"]), f["incarnation"], f["current"], f["daemonId"], f["host"]
                ),
                daemon_id=f["daemonId"],
                task_id=uuid.UUID(f["taskId"]),
            )
            for f in fenced
        ],
        now,
    )


def _apply_supervisors(
    session: Session,
    store: HeartbeatStore,
    heartbeats: list[Heartbeat],
    received_at: datetime,
    report: IngestReport,
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
    """Queue a `supervisor_fenced` command per fenced supervisor (daemon-command outbox).

    Each goes to the daemon that sent the fenced heartbeat (else the one that ran that
    supervisor), all in one statement, published after commit.
    """
    queue_commands(
        uow,
        [
            NewCommand(
                f.contract_id,
                FENCED_COMMAND,
                fenced_payload(f.task_id, f.sent_incarnation, f.current_incarnation, f.daemon_id, f.host),
                daemon_id=f.daemon_id,
                task_id=f.task_id,
            )
            for f in plan.fenced
        ],
        now,
    )


def fenced_payload(
    task_id: uuid.UUID, sent: int | None, current: int, daemon_id: str | None, host: str | None
) -> dict[str, Any]:
    """What a fenced daemon is told: what its heartbeat named, what is in force, and why.

    `fencedIncarnation` is the incarnation the heartbeat named, null when it named none (the
    dead sweep names the one it declared dead), never a number the daemon did not send;
    `reasonCode` is the case (`app.domain.supervisors.fence_reason`) and `reason` says what to
    do about it, so the daemon that merely left out the incarnation it was issued is not told
    that its incarnation was replaced.
    """
    reason = fence_reason(sent, current)
    return {
        "taskId": str(task_id),
        "fencedIncarnation": sent,
        "currentIncarnation": current,
        "daemonId": daemon_id,
        "host": host,
        "reasonCode": reason.value,
        "reason": reason.explain(sent, current),
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


def counters(session: Session) -> dict[str, int]:
    """Totals of the heartbeat counters over every shard (what the metrics will export)."""
    table = COUNTERS
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
