"""Batch operations (seed 4.3, plan 5.3): accepted at once, run by a worker in bounded chunks.

An admin asks for an operation (`archive_old`, `pause_all`, `resume_all`, `cleanup_archived`,
`restart_stale`); `start_batch` records it (`batch_operations`) with the time it was asked
(`as_of`, which every cut-off is measured from) and the number of contracts it selects, and
hands it to the `batch` queue after commit. A dry run is judged at once and answered with
what would be affected; nothing but its record is written.

The worker (`run_batch`) works through the selection in chunks of `CHUNK` contracts, keyset
on id. Each chunk is one short transaction that

1. locks the batch row (two runners of one batch, say a redelivered message beside the
   original, take turns; neither acts on a contract the other did),
2. claims the chunk's contracts with `FOR UPDATE SKIP LOCKED` (a contract a person or a
   sweep holds right now is *deferred* and done alone, with a waiting lock, at the end),
3. re-judges each contract under its lock with the domain's rules: still selected
   (`BatchOperation.selects`), and the move allowed by the status table (`check_transition`,
   the same check the guarded command `change_status` makes). A refusal is that contract's
   error, recorded, and the others go on;
4. applies the chunk: on PostgreSQL a status move is one `UPDATE` and one event `INSERT` for
   the whole chunk (the same columns and `status_changed` event `change_status` writes); on
   SQLite, and for `restart_stale`, each contract goes through the guarded code itself;
5. records an item per contract (`batch_items`: affected, error with its code and message,
   deferred, skipped) and moves the batch's cursor and counters, in the same transaction.

So a worker killed anywhere loses at most the uncommitted chunk, and the next delivery
resumes after the last committed one; the items' primary key (batch, contract) means no
contract is acted on twice. A chunk that fails as a whole (a database error on one row) is
redone one contract per transaction, so the failing contract is reported with its error and
the rest proceed. Each delivery of the task works for `slice_seconds` and then re-enqueues the
batch, so no task outlives the broker's visibility timeout; a beat job re-sends batches
whose runner stopped reporting progress (a message lost with its worker).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import ColumnElement, exists, func, insert, not_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import contracts
from app.auth import Caller, Role
from app.broker import Sender
from app.config import Settings
from app.contract_rows import lock_contract
from app.db import UnitOfWork, dialect_insert, unit_of_work
from app.deletion_audit import delete_archived
from app.domain.errors import ContractError, ContractNotFound, Forbidden, ValidationFailed
from app.domain.lifecycle import Status, check_transition
from app.domain.maintenance import BatchOperation, ContractFacts, Operation, parse_batch_operation
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.models import (
    BatchItem,
    BatchOperationRow,
    Contract,
    ContractTask,
    DaemonCommand,
    MetricCounter,
    utcnow,
)
from app.outbox import sent_rows
from app.queues import TaskName
from app.schemas import Schema, Timestamp
from app.sweeps import claim

log = logging.getLogger(__name__)

CHUNK: Final = 2000
SLICE_SECONDS: Final = 20.0
MAX_LIST: Final = 100
BATCH_COUNTER: Final = "batch_operations_total"
# Operations applied to a whole chunk in a few statements on PostgreSQL.
BULK_OPERATIONS: Final = frozenset(
    {Operation.ARCHIVE_OLD, Operation.PAUSE_ALL, Operation.RESUME_ALL, Operation.CLEANUP_ARCHIVED}
)


class BatchState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"


class Outcome(StrEnum):
    AFFECTED = "affected"
    ERROR = "error"
    DEFERRED = "deferred"  # locked by someone else when its chunk ran; done alone at the end
    SKIPPED = "skipped"  # no longer selected once it was locked (it changed meanwhile)


def require_admin(caller: Caller, action: str = "run batch operations") -> None:
    """Batch operations and the deletion audit are for operators (DESIGN "Who may do what")."""
    if not caller.is_admin:
        raise Forbidden(action, caller.role.value, [Role.ADMIN.value])


# --- answers ------------------------------------------------------------------------------------


class BatchProgress(Schema):
    done: int
    total: int


class BatchOperationError(Schema):
    """One contract the batch could not act on, and why."""

    contract_id: uuid.UUID
    error: str
    code: str | None = None


class BatchView(Schema):
    """A batch as it stands; once `completed`, its result (`operation`, `affectedCount`,
    `affectedIds`, `errors`) is complete."""

    batch_id: uuid.UUID
    operation: str
    parameters: dict[str, Any]
    dry_run: bool
    status: BatchState
    progress: BatchProgress
    affected_count: int
    error_count: int
    affected_ids: list[uuid.UUID] | None = None
    errors: list[BatchOperationError] | None = None
    requested_by: uuid.UUID
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None = None


class BatchList(Schema):
    batches: list[BatchView]


def batch_view(session: Session, row: BatchOperationRow, *, with_result: bool = True) -> BatchView:
    finished = row.status == BatchState.COMPLETED.value
    affected: list[uuid.UUID] | None = None
    errors: list[BatchOperationError] | None = None
    if finished and with_result:
        items = session.execute(
            select(BatchItem.contract_id, BatchItem.outcome, BatchItem.error_code, BatchItem.error_message)
            .where(
                BatchItem.batch_id == row.id,
                BatchItem.outcome.in_([Outcome.AFFECTED.value, Outcome.ERROR.value]),
            )
            .order_by(BatchItem.contract_id)
        ).all()
        affected = [cid for cid, outcome, _, _ in items if outcome == Outcome.AFFECTED.value]
        errors = [
            BatchOperationError(contract_id=cid, error=message or "", code=code)
            for cid, outcome, code, message in items
            if outcome == Outcome.ERROR.value
        ]
    return BatchView(
        batch_id=row.id,
        operation=row.operation,
        parameters=row.parameters,
        dry_run=row.dry_run,
        status=BatchState(row.status),
        progress=BatchProgress(done=row.done, total=row.total),
        affected_count=row.affected_count,
        error_count=row.error_count,
        affected_ids=affected,
        errors=errors,
        requested_by=row.requested_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


# --- selection ----------------------------------------------------------------------------------


def selection(op: BatchOperation, as_of: datetime) -> list[ColumnElement[bool]]:
    """`BatchOperation.selects` as a WHERE clause."""
    where: list[ColumnElement[bool]] = [Contract.status.in_([s.value for s in op.selected_statuses])]
    cutoff = op.cutoff(as_of)
    if cutoff is not None:
        column = (
            Contract.last_activity_at
            if op.cutoff_column == "last_activity_at"
            else Contract.status_changed_at
        )
        where.append(column < cutoff)
    return where


def _facts(status: str, status_changed_at: datetime, last_activity_at: datetime) -> ContractFacts:
    return ContractFacts(Status(status), status_changed_at, last_activity_at)


def _caller_of(row: BatchOperationRow) -> Caller:
    return Caller(row.requested_by, row.requested_by_owner, Role.ADMIN)


def bump_counter(session: Session, metric: str, label: str, by: int = 1) -> None:
    """Add to a counter row; several processes add up (one upsert)."""
    stmt = dialect_insert(session, MetricCounter).values(metric=metric, label=label, value=by)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["metric", "label"], set_={"value": MetricCounter.value + stmt.excluded.value}
        )
    )


def counters(session: Session, metric: str) -> dict[str, int]:
    return {
        label: int(value)
        for label, value in session.execute(
            select(MetricCounter.label, MetricCounter.value).where(MetricCounter.metric == metric)
        )
    }


# --- starting a batch ---------------------------------------------------------------------------


def find_by_key(session: Session, caller: Caller, key: str) -> BatchOperationRow | None:
    return session.scalars(
        select(BatchOperationRow).where(
            BatchOperationRow.requested_by == caller.principal_id, BatchOperationRow.idempotency_key == key
        )
    ).one_or_none()


def _same_request(row: BatchOperationRow, operation: str, parameters: dict[str, Any], dry_run: bool) -> bool:
    return row.operation == operation and row.parameters == parameters and row.dry_run == dry_run


def start_batch(
    uow: UnitOfWork,
    caller: Caller,
    operation: str,
    parameters: dict[str, Any],
    *,
    dry_run: bool = False,
    idempotency_key: str | None = None,
    now: datetime,
) -> tuple[BatchOperationRow, bool]:
    """Record a batch and queue it (after commit); returns (the batch, whether it is new).

    The same `idempotency_key` from the same caller returns the batch it started, whatever
    state it is in; the key with a different request is refused.
    """
    require_admin(caller)
    op = parse_batch_operation(operation, parameters)
    if idempotency_key is not None:
        existing = find_by_key(uow.session, caller, idempotency_key)
        if existing is not None:
            if not _same_request(existing, operation, parameters, dry_run):
                raise ValidationFailed(
                    "This Idempotency-Key was already used for a different batch request; use a new key.",
                    details={"idempotencyKey": idempotency_key, "batchId": str(existing.id)},
                )
            return existing, False
    total = uow.session.scalar(select(func.count()).select_from(Contract).where(*selection(op, now))) or 0
    row = BatchOperationRow(
        id=uuid.uuid4(),
        operation=op.operation.value,
        parameters=parameters,
        dry_run=dry_run,
        status=BatchState.PENDING.value,
        requested_by=caller.principal_id,
        requested_by_owner=caller.owner_id,
        idempotency_key=idempotency_key,
        as_of=now,
        total=int(total),
        done=0,
        affected_count=0,
        error_count=0,
        created_at=now,
        updated_at=now,
    )
    uow.session.add(row)
    uow.session.flush()
    if dry_run:
        _judge_dry_run(uow.session, row, op)
    else:
        bump_counter(uow.session, BATCH_COUNTER, op.operation.value)
        uow.dispatch_after_commit(TaskName.RUN_BATCH, {"batchId": str(row.id)})
    return row, True


def _judge_dry_run(session: Session, row: BatchOperationRow, op: BatchOperation) -> None:
    """What the batch would do now: the same rules, no lock, nothing changed but the record."""
    items: list[dict[str, Any]] = []
    after: uuid.UUID | None = None
    while True:
        query = (
            select(Contract.id, Contract.status, Contract.status_changed_at, Contract.last_activity_at)
            .where(*selection(op, row.as_of))
            .order_by(Contract.id)
            .limit(CHUNK)
        )
        if after is not None:
            query = query.where(Contract.id > after)
        chunk = session.execute(query).all()
        for cid, status, changed, active in chunk:
            if not op.selects(_facts(status, changed, active), row.as_of):
                continue
            items.append(_judged(row, op, cid, Status(status)))
        if len(chunk) < CHUNK:
            break
        after = chunk[-1][0]
    _record_items(session, items)
    row.done = row.total = len(items)
    row.affected_count = sum(1 for i in items if i["outcome"] == Outcome.AFFECTED.value)
    row.error_count = len(items) - row.affected_count
    row.status = BatchState.COMPLETED.value
    row.finished_at = row.updated_at = utcnow()


def _item(
    row: BatchOperationRow,
    cid: uuid.UUID,
    outcome: Outcome,
    error: tuple[str, str] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A `batch_items` row; `error` is (code, message)."""
    return {
        "batch_id": row.id,
        "contract_id": cid,
        "outcome": outcome.value,
        "error_code": error[0] if error else None,
        "error_message": error[1] if error else None,
        "processed_at": at or utcnow(),
    }


def _judged(row: BatchOperationRow, op: BatchOperation, cid: uuid.UUID, status: Status) -> dict[str, Any]:
    """The status table's verdict on moving this contract: affected, or its error."""
    if op.target is not None:
        try:
            check_transition(status, op.target, reason=op.event_reason(row.id))
        except ContractError as exc:
            return _item(row, cid, Outcome.ERROR, (exc.code, exc.message))
    return _item(row, cid, Outcome.AFFECTED)


_ITEMS_SQL: Final = text(
    "INSERT INTO batch_items (batch_id, contract_id, outcome, error_code, error_message, processed_at) "
    "SELECT CAST(:batch AS uuid), u.id, u.outcome, u.code, u.message, :now "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:outcomes AS text[]), CAST(:codes AS text[]), "
    "CAST(:messages AS text[])) AS u(id, outcome, code, message)"
)


def _record_items(session: Session, items: list[dict[str, Any]]) -> None:
    """One statement for a chunk's items (arrays on PostgreSQL, a multi-row insert elsewhere)."""
    if not items:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(BatchItem), items)
        return
    session.execute(
        _ITEMS_SQL,
        {
            "batch": str(items[0]["batch_id"]),
            "now": items[0]["processed_at"],
            "ids": [str(i["contract_id"]) for i in items],
            "outcomes": [i["outcome"] for i in items],
            "codes": [i["error_code"] for i in items],
            "messages": [i["error_message"] for i in items],
        },
    )


# --- running a batch ----------------------------------------------------------------------------


@dataclass
class Runner:
    """Where a batch runs: the database, the sender for follow-ups, the settings (defaults: configured)."""

    engine: Any = None
    sender: Sender | None = None
    settings: Settings | None = None
    chunk: int = CHUNK
    # Durations of the chunk transactions run so far (seconds); what bench/batch.py reports.
    transactions: list[float] = field(default_factory=list)

    def uow(self) -> Any:
        return unit_of_work(self.sender, engine=self.engine, settings=self.settings)


@dataclass
class _ChunkResult:
    finished: bool = False
    ids: list[uuid.UUID] = field(default_factory=list)
    deferred: list[uuid.UUID] = field(default_factory=list)
    outbox: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)


def _lock_batch(session: Session, batch_id: uuid.UUID) -> BatchOperationRow | None:
    return session.scalars(
        select(BatchOperationRow)
        .where(BatchOperationRow.id == batch_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def run_batch(runner: Runner, batch_id: uuid.UUID, *, slice_seconds: float = SLICE_SECONDS) -> bool:
    """Work on a batch for about `slice_seconds`; returns True once it is completed.

    Safe to run twice, concurrently, or after a runner was killed anywhere.
    """
    deadline = time.monotonic() + slice_seconds
    while True:
        result = _run_chunk(runner, batch_id)
        if result.finished:
            return True
        if result.deferred:
            for cid in result.deferred:
                _one_alone(runner, batch_id, cid, wait=True)
        if time.monotonic() >= deadline:
            return False


def _run_chunk(runner: Runner, batch_id: uuid.UUID) -> _ChunkResult:
    """One chunk in one transaction; on a failure that is not one contract's rule, the chunk is
    redone one contract per transaction."""
    ids: list[uuid.UUID] = []
    started = time.perf_counter()
    try:
        with runner.uow() as uow:
            result = _chunk(uow, batch_id, runner.chunk, ids)
    except DBAPIError as exc:
        if exc.connection_invalidated or not ids:
            raise
        log.warning(
            "batch %s: a chunk of %d failed as a whole (%s); redoing it one by one", batch_id, len(ids), exc
        )
        result = None
    except Exception:
        if not ids:
            raise
        log.exception("batch %s: a chunk of %d failed as a whole; redoing it one by one", batch_id, len(ids))
        result = None
    finally:
        runner.transactions.append(time.perf_counter() - started)
    if result is None:
        for cid in ids:
            _one_alone(runner, batch_id, cid, wait=False)
        return _ChunkResult(ids=ids)
    if result.outbox and runner.sender is not None:
        _send_outbox(runner, result.outbox)
    return result


def _send_outbox(runner: Runner, rows: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Follow-ups written with the chunk, sent after its commit; the relay sends what fails."""
    assert runner.sender is not None
    sent: list[int] = []
    try:
        for row_id, task, payload in rows:
            runner.sender(task, payload, None)
            sent.append(row_id)
    except Exception:
        log.warning("batch follow-ups: %d of %d sent; the outbox relay sends the rest", len(sent), len(rows))
    if sent and runner.engine is not None:
        sent_rows(runner.engine).add(sent)


def _candidates(session: Session, row: BatchOperationRow, op: BatchOperation, limit: int) -> list[uuid.UUID]:
    query = (
        select(Contract.id)
        .where(
            *selection(op, row.as_of),
            not_(exists().where(BatchItem.batch_id == row.id, BatchItem.contract_id == Contract.id)),
        )
        .order_by(Contract.id)
        .limit(limit)
    )
    if row.cursor is not None:
        query = query.where(Contract.id > row.cursor)
    return list(session.scalars(query))


def _chunk(uow: UnitOfWork, batch_id: uuid.UUID, limit: int, ids: list[uuid.UUID]) -> _ChunkResult:
    session = uow.session
    row = _lock_batch(session, batch_id)
    if row is None or row.status == BatchState.COMPLETED.value:
        return _ChunkResult(finished=True)
    op = parse_batch_operation(row.operation, row.parameters)
    row.status = BatchState.RUNNING.value
    ids.extend(_candidates(session, row, op, limit))
    if not ids:
        deferred = list(
            session.scalars(
                select(BatchItem.contract_id).where(
                    BatchItem.batch_id == row.id, BatchItem.outcome == Outcome.DEFERRED.value
                )
            )
        )
        if deferred:
            return _ChunkResult(deferred=deferred)
        row.status = BatchState.COMPLETED.value
        row.total = row.done
        row.finished_at = row.updated_at = utcnow()
        log.info(
            "batch %s %s completed: %d affected, %d errors",
            row.id,
            row.operation,
            row.affected_count,
            row.error_count,
        )
        return _ChunkResult(finished=True)
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql" and op.operation in BULK_OPERATIONS:
        items, outbox = _apply_in_bulk(session, row, op, ids, now)
    else:
        items, outbox = _apply_one_by_one(uow, row, op, ids, now), []
    _record_items(session, items)
    _count(row, items, now)
    row.cursor = ids[-1]
    return _ChunkResult(ids=list(ids), outbox=outbox)


def _count(row: BatchOperationRow, items: Sequence[dict[str, Any]], now: datetime) -> None:
    outcomes = [i["outcome"] for i in items]
    row.done += sum(1 for o in outcomes if o != Outcome.DEFERRED.value)
    row.affected_count += outcomes.count(Outcome.AFFECTED.value)
    row.error_count += outcomes.count(Outcome.ERROR.value)
    row.updated_at = now


def _apply_one_by_one(
    uow: UnitOfWork, row: BatchOperationRow, op: BatchOperation, ids: Sequence[uuid.UUID], now: datetime
) -> list[dict[str, Any]]:
    """Each contract through the guarded code, in this chunk's transaction."""
    items = []
    for cid in ids:
        contract = claim(uow.session, cid)
        if contract is None:
            items.append(_item(row, cid, Outcome.DEFERRED))
            continue
        items.append(_act(uow, row, op, contract, now))
    return items


def _act(
    uow: UnitOfWork, row: BatchOperationRow, op: BatchOperation, contract: Contract, now: datetime
) -> dict[str, Any]:
    """One locked contract: re-judge it, then act through the guarded code."""
    facts = _facts(contract.status, contract.status_changed_at, contract.last_activity_at)
    if not op.selects(facts, row.as_of):
        return _item(row, contract.id, Outcome.SKIPPED)
    try:
        if op.target is not None:
            contracts.change_status(
                uow, _caller_of(row), contract.id, op.target, reason=op.event_reason(row.id), now=now
            )
        elif op.operation is Operation.CLEANUP_ARCHIVED:
            delete_archived(
                uow.session,
                [contract.id],
                now=now,
                reason=f"batch cleanup_archived ({row.id})",
                deleted_by=_caller_of(row),
                batch_id=row.id,
            )
        elif op.operation is Operation.RESTART_STALE:
            request_restart(uow, contract, row.id, now)
    except ContractError as exc:
        return _item(row, contract.id, Outcome.ERROR, (exc.code, exc.message))
    return _item(row, contract.id, Outcome.AFFECTED)


def request_restart(uow: UnitOfWork, contract: Contract, batch_id: uuid.UUID, now: datetime) -> None:
    """Ask the daemon to restart the contract's supervisor (a daemon command after commit)."""
    supervisors = [
        str(t)
        for t in uow.session.scalars(
            select(ContractTask.id).where(
                ContractTask.contract_id == contract.id,
                ContractTask.is_supervisor.is_(True),
                ContractTask.status == TaskStatus.RUNNING.value,
            )
        )
    ]
    uow.session.add(
        DaemonCommand(
            contract_id=contract.id,
            command="restart_supervisor",
            payload={"supervisorTaskIds": supervisors, "reason": "stale", "batchId": str(batch_id)},
            created_at=now,
        )
    )
    record_event(
        uow.session,
        contract.id,
        EventType.SUPERVISOR_RESTART_REQUESTED,
        {
            "supervisorTaskIds": supervisors,
            "lastActivity": contract.last_activity_at.isoformat(),
            "batchId": str(batch_id),
        },
        now,
    )
    uow.dispatch_after_commit(TaskName.PUBLISH_DAEMON_COMMANDS, {"contractId": str(contract.id)})


# The chunk's ids as one array parameter (not thousands of bind parameters to render).
_CLAIM_SQL: Final = text(
    "SELECT id, status, status_changed_at, last_activity_at FROM contracts "
    "WHERE id = ANY(CAST(:ids AS uuid[])) FOR UPDATE SKIP LOCKED"
).columns(Contract.id, Contract.status, Contract.status_changed_at, Contract.last_activity_at)
_MOVE_SQL: Final = text(
    "UPDATE contracts SET status = :target, status_changed_at = :now, waiting_for = NULL, "
    "blocked_reason = NULL, last_activity_at = :now, updated_at = :now "
    "WHERE id = ANY(CAST(:ids AS uuid[]))"
)
_EVENTS_SQL: Final = text(
    "INSERT INTO contract_events (contract_id, type, payload, created_at) "
    "SELECT u.id, :type, jsonb_build_object('contractId', u.id::text, 'oldStatus', u.old, "
    "'newStatus', CAST(:target AS text), 'reason', CAST(:reason AS text)), :now "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:olds AS text[])) AS u(id, old)"
)
_OUTBOX_SQL: Final = text(
    "INSERT INTO task_outbox (task, payload, not_before, created_at) "
    "SELECT CAST(:task AS text), jsonb_build_object('contractId', u.id::text), NULL, :now "
    "FROM unnest(CAST(:ids AS uuid[])) AS u(id) RETURNING id, payload"
)


def _apply_in_bulk(
    session: Session, row: BatchOperationRow, op: BatchOperation, ids: Sequence[uuid.UUID], now: datetime
) -> tuple[list[dict[str, Any]], list[tuple[int, str, dict[str, Any]]]]:
    """The chunk in a few statements: claim, judge each contract in Python, write in bulk.

    Writes exactly what `change_status` writes for these moves (status, status_changed_at,
    waiting_for/blocked_reason cleared, last activity; a `status_changed` event with old and
    new status and the reason; for a resume, the `evaluate_progress` follow-up).
    """
    locked: dict[uuid.UUID, tuple[uuid.UUID, str, datetime, datetime]] = {
        r[0]: (r[0], r[1], r[2], r[3]) for r in session.execute(_CLAIM_SQL, {"ids": [str(i) for i in ids]})
    }
    items: list[dict[str, Any]] = []
    moving: list[tuple[uuid.UUID, str]] = []
    # The status table's verdict depends only on the status: judged once per status met.
    verdicts: dict[str, dict[str, Any]] = {}
    for cid in ids:
        found = locked.get(cid)
        if found is None:
            items.append(_item(row, cid, Outcome.DEFERRED, at=now))
            continue
        _, status, changed, active = found
        if not op.selects(_facts(status, changed, active), row.as_of):
            items.append(_item(row, cid, Outcome.SKIPPED, at=now))
            continue
        verdict = verdicts.get(status)
        if verdict is None:
            verdict = verdicts[status] = _judged(row, op, cid, Status(status))
        items.append({**verdict, "contract_id": cid, "processed_at": now})
        if verdict["outcome"] == Outcome.AFFECTED.value:
            moving.append((cid, status))
    outbox: list[tuple[int, str, dict[str, Any]]] = []
    if not moving:
        return items, outbox
    moving_ids = [str(cid) for cid, _ in moving]
    if op.operation is Operation.CLEANUP_ARCHIVED:
        deleted = set(
            delete_archived(
                session,
                [cid for cid, _ in moving],
                now=now,
                reason=f"batch cleanup_archived ({row.id})",
                deleted_by=_caller_of(row),
                batch_id=row.id,
            )
        )
        for item in items:
            if item["outcome"] == Outcome.AFFECTED.value and item["contract_id"] not in deleted:
                item["outcome"] = Outcome.SKIPPED.value
        return items, outbox
    assert op.target is not None
    params = {"target": op.target.value, "now": now, "ids": moving_ids}
    session.execute(_MOVE_SQL, params)
    session.execute(
        _EVENTS_SQL,
        {
            **params,
            "type": EventType.STATUS_CHANGED.value,
            "reason": op.event_reason(row.id),
            "olds": [old for _, old in moving],
        },
    )
    if op.target is Status.ACTIVE:
        # Work resumes: the gate may have been met while nobody was allowed to act on it.
        task = TaskName.EVALUATE_PROGRESS.value
        outbox = [
            (int(rid), task, dict(payload))
            for rid, payload in session.execute(_OUTBOX_SQL, {"task": task, "now": now, "ids": moving_ids})
        ]
    return items, outbox


def _one_alone(runner: Runner, batch_id: uuid.UUID, cid: uuid.UUID, *, wait: bool) -> None:
    """One contract in its own transaction (a deferred one, or one of a failed chunk).

    `wait`: take the row lock waiting for its holder, instead of skipping it.
    """
    started = time.perf_counter()
    try:
        with runner.uow() as uow:
            row = _lock_batch(uow.session, batch_id)
            if row is None:
                return
            done = uow.session.get(BatchItem, (batch_id, cid))
            if done is not None and done.outcome != Outcome.DEFERRED.value:
                return
            op = parse_batch_operation(row.operation, row.parameters)
            now = utcnow()
            try:
                contract = lock_contract(uow.session, None, cid) if wait else claim(uow.session, cid)
            except ContractNotFound:
                contract = None
            if contract is None:
                item = _item(row, cid, Outcome.SKIPPED if wait else Outcome.DEFERRED)
            else:
                item = _act(uow, row, op, contract, now)
            if done is not None:
                uow.session.delete(done)
                uow.session.flush()
            _record_items(uow.session, [item])
            _count(row, [item], now)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        _record_failure(runner, batch_id, cid, exc)
    except Exception as exc:
        log.exception("batch %s: contract %s failed", batch_id, cid)
        _record_failure(runner, batch_id, cid, exc)
    finally:
        runner.transactions.append(time.perf_counter() - started)


INTERNAL_ERROR: Final = "INTERNAL_ERROR"  # not a rule: the database (or a bug) failed on this contract


def _record_failure(runner: Runner, batch_id: uuid.UUID, cid: uuid.UUID, exc: Exception) -> None:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    message = text_.splitlines()[0] if text_ else type(exc).__name__
    with runner.uow() as uow:
        row = _lock_batch(uow.session, batch_id)
        if row is None:
            return
        existing = uow.session.get(BatchItem, (batch_id, cid))
        if existing is not None and existing.outcome != Outcome.DEFERRED.value:
            return
        if existing is not None:
            uow.session.delete(existing)
            uow.session.flush()
        item = _item(row, cid, Outcome.ERROR, (INTERNAL_ERROR, message))
        _record_items(uow.session, [item])
        _count(row, [item], utcnow())


# --- reading ------------------------------------------------------------------------------------


def get_batch(session: Session, caller: Caller, batch_id: uuid.UUID) -> BatchView | None:
    require_admin(caller, "read batch operations")
    row = session.get(BatchOperationRow, batch_id)
    return batch_view(session, row) if row is not None else None


def list_batches(session: Session, caller: Caller, limit: int = 20) -> BatchList:
    require_admin(caller, "read batch operations")
    rows = session.scalars(
        select(BatchOperationRow).order_by(BatchOperationRow.created_at.desc()).limit(min(limit, MAX_LIST))
    )
    return BatchList(batches=[batch_view(session, r, with_result=False) for r in rows])


def stalled_batches(session: Session, now: datetime, quiet_for: timedelta) -> list[uuid.UUID]:
    """Unfinished batches with no progress for `quiet_for`: their runner is gone; send them again."""
    return list(
        session.scalars(
            select(BatchOperationRow.id).where(
                BatchOperationRow.status.in_([BatchState.PENDING.value, BatchState.RUNNING.value]),
                BatchOperationRow.updated_at < now - quiet_for,
            )
        )
    )


def slice_seconds(settings: Settings) -> float:
    """How long one delivery of the batch task works before it re-enqueues the batch: well
    inside the broker's visibility timeout, so Redis never hands a running batch to a second
    worker just because it is long."""
    return min(SLICE_SECONDS, settings.visibility_timeout_seconds / 4)


def stall_after(settings: Settings) -> timedelta:
    """A running batch that made no progress for this long has lost its runner."""
    return timedelta(seconds=3 * slice_seconds(settings) + 5)


def touch_batch(session: Session, batch_id: uuid.UUID, now: datetime) -> None:
    session.execute(update(BatchOperationRow).where(BatchOperationRow.id == batch_id).values(updated_at=now))


__all__ = [
    "BATCH_COUNTER",
    "CHUNK",
    "BatchList",
    "BatchOperationError",
    "BatchProgress",
    "BatchState",
    "BatchView",
    "Outcome",
    "Runner",
    "batch_view",
    "bump_counter",
    "counters",
    "find_by_key",
    "get_batch",
    "list_batches",
    "require_admin",
    "run_batch",
    "selection",
    "slice_seconds",
    "stall_after",
    "stalled_batches",
    "start_batch",
    "touch_batch",
]
