"""Running a batch operation: chunk by chunk, each chunk one short transaction, resumable.

`app.batch` starts a batch (and judges a dry run) and reads it back; this module is what the
`batch` queue's worker runs. A chunk claims up to `[batch] chunk_size` contracts of the
selection with SKIP LOCKED, judges each under its lock, writes them, and saves the batch's
cursor and progress in the same transaction, so a worker killed mid-batch resumes after the
last saved chunk and no contract is acted on twice. A contract that fails is recorded in the
batch's errors and the others proceed.

Why chunks and not one transaction per contract: the guarantees a transaction per contract
would give are kept (no lock held long: a chunk of 2,000 commits in well under a second;
one contract's failure is its error, not the batch's; each contract judged by the rule
`change_status` applies), and on PostgreSQL a transaction per contract (`chunk_size = 1`)
runs archive_old at a small fraction of a bulk UPDATE's rate (README "Batch operations").
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Text,
    Uuid,
    any_,
    bindparam,
    cast,
    exists,
    func,
    not_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import contracts
from app.batch import (
    BULK_OPERATIONS,
    SLICE_SECONDS,
    BatchState,
    Outcome,
    Verdict,
    batch_caller,
    contract_facts,
    item_row,
    judge,
    record_chunk,
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
    ids: list[str] = field(default_factory=list)
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
    ids: list[str] = []  # the chunk's contracts once claimed (text ids: nothing to parse per row)
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
            _one_alone(runner, batch_id, uuid.UUID(cid), wait=False)
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


def _not_recorded(batch_id: uuid.UUID) -> ColumnElement[bool]:
    """The contract has no item in this batch (one done alone above the cursor has one)."""
    return not_(exists().where(BatchItem.batch_id == batch_id, BatchItem.contract_id == Contract.id))


def _candidates(session: Session, row: BatchOperationRow, op: BatchOperation, limit: int) -> list[uuid.UUID]:
    query = (
        select(Contract.id)
        .where(*selection(op, row.as_of), _not_recorded(row.id))
        .order_by(Contract.id)
        .limit(limit)
    )
    if row.cursor is not None:
        query = query.where(Contract.id > row.cursor)
    return list(session.scalars(query))


def _claim(
    session: Session, row: BatchOperationRow, op: BatchOperation, limit: int
) -> list[tuple[str, str | None]]:
    """The chunk's candidates in id order, each with its status if this transaction now holds
    it locked and it is still selected, else None (someone holds it, or it changed: deferred).

    One statement: the next `limit` selected contracts after the cursor, then `FOR NO KEY
    UPDATE SKIP LOCKED` on those, with the selection evaluated again on each row as it is
    locked (PostgreSQL re-reads a row changed since the statement began).
    """
    where = selection(op, row.as_of)
    pending = select(Contract.id).where(*where, _not_recorded(row.id))
    if row.cursor is not None:
        pending = pending.where(Contract.id > row.cursor)
    candidates = pending.order_by(Contract.id).limit(limit).cte("candidates").prefix_with("MATERIALIZED")
    locked = (
        select(Contract.id, Contract.status)
        .where(Contract.id.in_(select(candidates.c.id)), *where)
        .with_for_update(of=Contract.__table__, key_share=True, skip_locked=True)
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    # Two arrays in one row: thousands of result rows would cost more to build than to read.
    query = select(
        func.array_agg(aggregate_order_by(cast(candidates.c.id, Text), candidates.c.id)),
        func.array_agg(aggregate_order_by(locked.c.status, candidates.c.id)),
    ).select_from(candidates.outerjoin(locked, locked.c.id == candidates.c.id))
    ids, statuses = session.execute(query).one()
    return list(zip(ids or [], statuses or [], strict=True))


def _chunk(uow: UnitOfWork, batch_id: uuid.UUID, limit: int, ids: list[str]) -> _ChunkResult:
    session = uow.session
    row = _lock_batch(session, batch_id)
    if row is None or row.status == BatchState.COMPLETED.value:
        return _ChunkResult(finished=True)
    op = parse_batch_operation(row.operation, row.parameters)
    row.status = BatchState.RUNNING.value
    bulk = session.get_bind().dialect.name == "postgresql" and op.operation in BULK_OPERATIONS
    claimed = (
        _claim(session, row, op, limit)
        if bulk
        else [(str(c), None) for c in _candidates(session, row, op, limit)]
    )
    ids.extend(cid for cid, _ in claimed)
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
    outbox: list[tuple[int, str, dict[str, Any]]] = []
    affected: Sequence[uuid.UUID | str]
    if bulk:
        affected, items, outbox = _apply_in_bulk(uow, row, op, claimed, now)
    else:
        affected, items = _split(_apply_one_by_one(uow, row, op, [uuid.UUID(c) for c in ids], now))
    record_chunk(session, row.id, ids[-1], affected, now)
    record_items(session, items)
    _count(row, len(affected), items, now)
    row.cursor = uuid.UUID(ids[-1])
    return _ChunkResult(ids=list(ids), outbox=outbox)


def _split(items: list[dict[str, Any]]) -> tuple[list[uuid.UUID], list[dict[str, Any]]]:
    """(the contracts acted on, the other outcomes as items)."""
    affected = [i["contract_id"] for i in items if i["outcome"] == Outcome.AFFECTED.value]
    return affected, [i for i in items if i["outcome"] != Outcome.AFFECTED.value]


def _ids_array(ids: Sequence[str]) -> ColumnElement[Any]:
    """Many ids as one array parameter (not thousands of bind parameters to render)."""
    return cast(bindparam("ids", list(ids), type_=ARRAY(Text)), ARRAY(Uuid()))


def _with_open_questions(session: Session, ids: Sequence[str]) -> set[str]:
    return {
        str(cid)
        for cid in session.scalars(
            select(SupervisorQuestion.contract_id)
            .where(
                SupervisorQuestion.contract_id == any_(_ids_array(ids)),
                SupervisorQuestion.status == QuestionStatus.OPEN.value,
            )
            .distinct()
        )
    }


def _count(row: BatchOperationRow, affected: int, items: Sequence[dict[str, Any]], now: datetime) -> None:
    outcomes = [i["outcome"] for i in items]
    affected += outcomes.count(Outcome.AFFECTED.value)
    row.done += affected + sum(
        1 for o in outcomes if o not in (Outcome.DEFERRED.value, Outcome.AFFECTED.value)
    )
    row.affected_count += affected
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


_EVENTS_SQL: Final = text(
    "INSERT INTO contract_events (contract_id, type, payload, created_at) "
    "SELECT u.id, :type, jsonb_build_object('contractId', u.id::text) || CAST(:payload AS jsonb), :now "
    "FROM unnest(CAST(:ids AS uuid[])) AS u(id)"
)
_OUTBOX_SQL: Final = text(
    "INSERT INTO task_outbox (task, payload, not_before, created_at) "
    "SELECT CAST(:task AS text), jsonb_build_object('contractId', u.id::text), NULL, :now "
    "FROM unnest(CAST(:ids AS uuid[])) AS u(id) RETURNING id, payload"
)


def _apply_in_bulk(
    uow: UnitOfWork,
    row: BatchOperationRow,
    op: BatchOperation,
    claimed: Sequence[tuple[str, str | None]],
    now: datetime,
) -> tuple[list[str], list[dict[str, Any]], list[tuple[int, str, dict[str, Any]]]]:
    """The claimed chunk in a few statements; returns (ids acted on, other outcomes, follow-ups).

    Each contract is judged by `judge` (the status table, as `change_status` judges it; once
    per status met), and the moves of one status are one `UPDATE` of the columns and one
    `INSERT` of the `status_changed` events that judgement gives; a resume also writes the
    `evaluate_progress` follow-up `change_status` sends. A contract resumed while a question
    is open goes on to wait for it (`set_status`): those few take the guarded path.
    """
    session = uow.session
    asking = (
        _with_open_questions(session, [c for c, s in claimed if s]) if op.target is Status.ACTIVE else set()
    )
    verdicts: dict[str, Verdict] = {}
    moves: dict[str, list[str]] = {}  # old status -> the contracts moving from it
    guarded: list[uuid.UUID] = []
    items: list[dict[str, Any]] = []
    for cid, status in claimed:
        if status is None:
            items.append(item_row(row, uuid.UUID(cid), Outcome.DEFERRED, at=now))
        elif cid in asking:
            guarded.append(uuid.UUID(cid))
        else:
            verdict = verdicts.get(status) or verdicts.setdefault(
                status, judge(op, row.id, Status(status), now)
            )
            if verdict.error is not None:
                items.append(item_row(row, uuid.UUID(cid), Outcome.ERROR, verdict.error, at=now))
            else:
                moves.setdefault(status, []).append(cid)
    affected: list[str] = []
    outbox: list[tuple[int, str, dict[str, Any]]] = []
    if op.operation is Operation.CLEANUP_ARCHIVED:
        doomed = [uuid.UUID(cid) for ids in moves.values() for cid in ids]
        deleted = set(
            delete_archived(
                session,
                doomed,
                now=now,
                reason=f"batch cleanup_archived ({row.id})",
                deleted_by=batch_caller(row),
                batch_id=row.id,
            )
        )
        affected = [str(cid) for cid in doomed if cid in deleted]
        items += [item_row(row, cid, Outcome.SKIPPED, at=now) for cid in doomed if cid not in deleted]
    else:
        for status, ids in moves.items():
            verdict = verdicts[status]
            assert verdict.columns is not None and verdict.payload is not None
            # The ids are in order: their range lets the plan read the primary key from the first
            # to the last instead of the whole table for each chunk.
            first, last = uuid.UUID(ids[0]), uuid.UUID(ids[-1])
            session.connection().execute(
                update(Contract)
                .where(Contract.id.between(first, last), Contract.id == any_(_ids_array(ids)))
                .values(**verdict.columns)
            )
            session.execute(
                _EVENTS_SQL,
                {
                    "ids": ids,
                    "type": EventType.STATUS_CHANGED.value,
                    "payload": json.dumps(verdict.payload),
                    "now": now,
                },
            )
            affected += ids
        if op.target is Status.ACTIVE and affected:
            # Work resumes: the gate may have been met while nobody was allowed to act on it.
            task = TaskName.EVALUATE_PROGRESS.value
            outbox = [
                (int(rid), task, dict(payload))
                for rid, payload in session.execute(_OUTBOX_SQL, {"task": task, "now": now, "ids": affected})
            ]
    if guarded:
        done, others = _split(_apply_one_by_one(uow, row, op, guarded, now))
        affected += [str(cid) for cid in done]
        items += others
    return affected, items, outbox


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
            if _settled(row, cid, done):
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
            _count(row, 0, [item], now)
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
        if _settled(row, cid, existing):
            return
        if existing is not None:
            uow.session.delete(existing)
            uow.session.flush()
        item = item_row(row, cid, Outcome.ERROR, (INTERNAL_ERROR, message))
        record_items(uow.session, [item])
        _count(row, 0, [item], utcnow())


def _settled(row: BatchOperationRow, cid: uuid.UUID, item: BatchItem | None) -> bool:
    """Has the batch already dealt with this contract? Yes if it has an item that is not a
    deferral, or none and its id is at or below the cursor: a committed chunk claimed it and,
    as it records every other outcome as an item, acted on it."""
    if item is not None:
        return item.outcome != Outcome.DEFERRED.value
    return row.cursor is not None and cid <= row.cursor
