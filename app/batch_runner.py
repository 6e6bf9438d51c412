"""Running a batch operation: chunk by chunk, each chunk one short transaction, resumable.

`app.batch` starts a batch (and judges a dry run) and reads it back; this module is what the
`batch` queue's worker runs. A chunk claims up to `[batch] chunk_size` contracts of the
selection with SKIP LOCKED, judges each under its lock, writes them, and saves the batch's cursor and
progress in the same transaction, so a worker killed mid-batch resumes after the last saved
chunk and no contract is acted on twice. A contract that fails is recorded in the batch's
errors and the others proceed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import exists, not_, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import contracts
from app.batch import (
    BULK_OPERATIONS,
    SLICE_SECONDS,
    BatchState,
    Outcome,
    batch_caller,
    contract_facts,
    item_row,
    judged_item,
    record_items,
    selection,
)
from app.broker import Sender
from app.config import Settings, get_settings
from app.contract_rows import lock_contract
from app.daemon_commands import queue_command
from app.db import UnitOfWork, unit_of_work
from app.deletion_audit import delete_archived
from app.domain.errors import ContractError, ContractNotFound
from app.domain.lifecycle import Status
from app.domain.maintenance import BatchOperation, Operation, parse_batch_operation
from app.domain.questions import QuestionStatus
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.models import (
    BatchItem,
    BatchOperationRow,
    Contract,
    ContractTask,
    SupervisorQuestion,
    utcnow,
)
from app.outbox import sent_rows
from app.queues import TaskName
from app.sweeps import claim

log = logging.getLogger(__name__)


@dataclass
class Runner:
    """Where a batch runs: the database, the sender for follow-ups, the settings (defaults: configured)."""

    engine: Any = None
    sender: Sender | None = None
    settings: Settings | None = None
    # Contracts per chunk transaction; None: `[batch] chunk_size` of the settings.
    chunk: int | None = None
    # Durations of the chunk transactions run so far (seconds); what bench/batch.py reports.
    transactions: list[float] = field(default_factory=list)

    def uow(self) -> Any:
        return unit_of_work(self.sender, engine=self.engine, settings=self.settings)

    @property
    def chunk_size(self) -> int:
        return self.chunk or (self.settings or get_settings()).batch.chunk_size


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
            result = _chunk(uow, batch_id, runner.chunk_size, ids)
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
        # A contract resumed while a question is open goes on to wait for it (`set_status`):
        # those few take the guarded path; the rest move in bulk.
        asking = _with_open_questions(session, ids) if op.target is Status.ACTIVE else set()
        bulk = [cid for cid in ids if cid not in asking]
        items, outbox = _apply_in_bulk(session, row, op, bulk, now) if bulk else ([], [])
        if asking:
            items += _apply_one_by_one(uow, row, op, [cid for cid in ids if cid in asking], now)
    else:
        items, outbox = _apply_one_by_one(uow, row, op, ids, now), []
    record_items(session, items)
    _count(row, items, now)
    row.cursor = ids[-1]
    return _ChunkResult(ids=list(ids), outbox=outbox)


def _with_open_questions(session: Session, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    return set(
        session.scalars(
            select(SupervisorQuestion.contract_id)
            .where(
                SupervisorQuestion.contract_id.in_(ids),
                SupervisorQuestion.status == QuestionStatus.OPEN.value,
            )
            .distinct()
        )
    )


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
            items.append(item_row(row, cid, Outcome.DEFERRED))
            continue
        items.append(_act(uow, row, op, contract, now))
    return items


def _act(
    uow: UnitOfWork, row: BatchOperationRow, op: BatchOperation, contract: Contract, now: datetime
) -> dict[str, Any]:
    """One locked contract: re-judge it, then act through the guarded code."""
    facts = contract_facts(contract.status, contract.status_changed_at, contract.last_activity_at)
    if not op.selects(facts, row.as_of):
        return item_row(row, contract.id, Outcome.SKIPPED)
    try:
        if op.target is not None:
            contracts.change_status(
                uow, batch_caller(row), contract.id, op.target, reason=op.event_reason(row.id), now=now
            )
        elif op.operation is Operation.CLEANUP_ARCHIVED:
            delete_archived(
                uow.session,
                [contract.id],
                now=now,
                reason=f"batch cleanup_archived ({row.id})",
                deleted_by=batch_caller(row),
                batch_id=row.id,
            )
        elif op.operation is Operation.RESTART_STALE:
            request_restart(uow, contract, row.id, now)
    except ContractError as exc:
        return item_row(row, contract.id, Outcome.ERROR, (exc.code, exc.message))
    return item_row(row, contract.id, Outcome.AFFECTED)


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
    # To the daemon heard last for the contract's supervisor (the shared queue when none named one).
    queue_command(
        uow,
        contract.id,
        "restart_supervisor",
        {"supervisorTaskIds": supervisors, "reason": "stale", "batchId": str(batch_id)},
        now,
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
            items.append(item_row(row, cid, Outcome.DEFERRED, at=now))
            continue
        _, status, changed, active = found
        if not op.selects(contract_facts(status, changed, active), row.as_of):
            items.append(item_row(row, cid, Outcome.SKIPPED, at=now))
            continue
        verdict = verdicts.get(status)
        if verdict is None:
            verdict = verdicts[status] = judged_item(row, op, cid, Status(status))
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
                deleted_by=batch_caller(row),
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
                item = item_row(row, cid, Outcome.SKIPPED if wait else Outcome.DEFERRED)
            else:
                item = _act(uow, row, op, contract, now)
            if done is not None:
                uow.session.delete(done)
                uow.session.flush()
            record_items(uow.session, [item])
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
        item = item_row(row, cid, Outcome.ERROR, (INTERNAL_ERROR, message))
        record_items(uow.session, [item])
        _count(row, [item], utcnow())
