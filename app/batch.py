"""Batch operations (seed 4.3, plan 5.3): accepted at once, run by a worker in bounded chunks.

An admin asks for an operation (`archive_old`, `pause_all`, `resume_all`, `cleanup_archived`,
`restart_stale`); `start_batch` records it (`batch_operations`) with the time it was asked
(`as_of`, which every cut-off is measured from) and the number of contracts it selects, and
hands it to the `batch` queue after commit. A dry run is judged at once and answered with
what would be affected; nothing but its record is written.

The worker (`app.batch_runner.run_batch`) works through the selection in chunks of `[batch]
chunk_size` contracts (2,000 unless configured), keyset on id. Each chunk is one short
transaction that

1. locks the batch row (two runners of one batch, say a redelivered message beside the
   original, take turns; neither acts on a contract the other did),
2. claims the chunk's contracts with `FOR NO KEY UPDATE SKIP LOCKED`, still selected
   (`selection`, the rule `BatchOperation.selects` as a WHERE clause, evaluated on each row
   as it is locked); a contract a person or a sweep holds right now, or that changed since,
   is *deferred* and done alone, with a waiting lock and judged again, at the end,
3. judges each contract's move by the status table exactly as the guarded command
   `change_status` does (`judge`: `status_columns`, which runs `check_transition`). A
   refusal is that contract's error, recorded, and the others go on,
4. applies the chunk: on PostgreSQL a status move is one `UPDATE` and one event `INSERT` per
   status met, writing the columns and `status_changed` event `status_columns` gives (what
   `change_status` writes); on SQLite, and for `restart_stale`, each contract goes through
   the guarded code itself,
5. records the ids it acted on as one `batch_chunks` row, every other outcome (error with its
   code and message, deferred, skipped) as a `batch_items` row, and moves the batch's cursor
   and counters, in the same transaction.

So a worker killed anywhere loses at most the uncommitted chunk, and the next delivery
resumes after the last committed one: a chunk claims only ids above the committed cursor and
not already an item, so no contract is acted on twice. A chunk that fails as a whole (a
database error on one row) is redone one contract per transaction, so the failing contract
is reported with its error and the rest proceed. `chunk_size = 1` makes every contract its own
transaction. Each delivery of the task works for `slice_seconds` and then re-enqueues the
batch, so no task outlives the broker's visibility timeout; a beat job re-sends batches
whose runner stopped reporting progress (a message lost with its worker).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import ColumnElement, func, insert, select, text, update
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.config import Settings
from app.contract_rows import status_columns
from app.db import UnitOfWork, dialect_insert
from app.domain.errors import ContractError, Forbidden, ValidationFailed
from app.domain.lifecycle import Status
from app.domain.maintenance import BatchOperation, ContractFacts, Operation, parse_batch_operation
from app.models import (
    BatchChunk,
    BatchItem,
    BatchOperationRow,
    Contract,
    MetricCounter,
    utcnow,
)
from app.queues import TaskName
from app.schemas import Schema, Timestamp

log = logging.getLogger(__name__)

CHUNK: Final = 2000  # the default `[batch] chunk_size`; also the page a dry run reads at a time
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
        affected = [
            as_uuid(cid)
            for ids in session.scalars(select(BatchChunk.affected_ids).where(BatchChunk.batch_id == row.id))
            for cid in ids
        ]
        items = session.execute(
            select(BatchItem.contract_id, BatchItem.outcome, BatchItem.error_code, BatchItem.error_message)
            .where(
                BatchItem.batch_id == row.id,
                BatchItem.outcome.in_([Outcome.AFFECTED.value, Outcome.ERROR.value]),
            )
            .order_by(BatchItem.contract_id)
        ).all()
        affected += [cid for cid, outcome, _, _ in items if outcome == Outcome.AFFECTED.value]
        affected.sort()
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


def contract_facts(status: str, status_changed_at: datetime, last_activity_at: datetime) -> ContractFacts:
    return ContractFacts(Status(status), status_changed_at, last_activity_at)


def batch_caller(row: BatchOperationRow) -> Caller:
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
    after: uuid.UUID | None = None
    now = utcnow()
    verdicts: dict[str, Verdict] = {}
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
        affected: list[uuid.UUID] = []
        items: list[dict[str, Any]] = []
        for cid, status, changed, active in chunk:
            if not op.selects(contract_facts(status, changed, active), row.as_of):
                continue
            verdict = verdicts.get(status) or verdicts.setdefault(
                status, judge(op, row.id, Status(status), now)
            )
            if verdict.error is None:
                affected.append(cid)
            else:
                items.append(item_row(row, cid, Outcome.ERROR, verdict.error, at=now))
        if chunk:
            record_chunk(session, row.id, chunk[-1][0], affected, now)
            record_items(session, items)
            row.affected_count += len(affected)
            row.error_count += len(items)
        if len(chunk) < CHUNK:
            break
        after = chunk[-1][0]
    row.done = row.total = row.affected_count + row.error_count
    row.status = BatchState.COMPLETED.value
    row.finished_at = row.updated_at = utcnow()


def as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The status table's answer for moving a contract in one status: the contract columns and
    `status_changed` payload the move writes, or the refusal (code, message)."""

    columns: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    error: tuple[str, str] | None = None


def judge(op: BatchOperation, batch_id: uuid.UUID, status: Status, now: datetime) -> Verdict:
    """Judge a batch's move of a contract in `status` the way `change_status` judges it.

    `change_status` (as the batch's admin caller, a person) refuses a move to the batch's
    targets (`archived`, `paused`, `active`) only by the status table, through
    `status_columns`; this is that same call, so a contract is refused here exactly when the
    guarded command would refuse it, and a move writes what the guarded command writes. The
    verdict depends on nothing but the status, so a chunk judges each status it meets once.
    Operations that are not a move (`cleanup_archived`, `restart_stale`) are never refused here.
    """
    if op.target is None:
        return Verdict()
    try:
        columns, payload = status_columns(status, op.target, now, reason=op.event_reason(batch_id))
    except ContractError as exc:
        return Verdict(error=(exc.code, exc.message))
    return Verdict(columns, payload)


def item_row(
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


_CHUNK_SQL: Final = text(
    "INSERT INTO batch_chunks (batch_id, through_id, affected_ids, processed_at) "
    "VALUES (CAST(:batch AS uuid), CAST(:through AS uuid), CAST(:ids AS uuid[]), :now)"
)


def record_chunk(
    session: Session,
    batch_id: uuid.UUID,
    through: uuid.UUID | str,
    affected: Sequence[uuid.UUID | str],
    now: datetime,
) -> None:
    """The contracts one chunk acted on, as one row keyed by the cursor the chunk moves to."""
    if not affected:
        return
    ids = [str(cid) for cid in affected]
    if session.get_bind().dialect.name == "postgresql":
        params = {"batch": str(batch_id), "through": str(through), "ids": ids, "now": now}
        session.execute(_CHUNK_SQL, params)
        return
    values = {"batch_id": batch_id, "through_id": as_uuid(through), "affected_ids": ids, "processed_at": now}
    session.execute(insert(BatchChunk), [values])


_ITEMS_SQL: Final = text(
    "INSERT INTO batch_items (batch_id, contract_id, outcome, error_code, error_message, processed_at) "
    "SELECT CAST(:batch AS uuid), u.id, u.outcome, u.code, u.message, :now "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:outcomes AS text[]), CAST(:codes AS text[]), "
    "CAST(:messages AS text[])) AS u(id, outcome, code, message)"
)


def record_items(session: Session, items: Iterable[dict[str, Any]]) -> None:
    """One statement for a chunk's items (arrays on PostgreSQL, a multi-row insert elsewhere)."""
    items = list(items)
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
    "Verdict",
    "as_uuid",
    "batch_caller",
    "batch_view",
    "bump_counter",
    "contract_facts",
    "counters",
    "find_by_key",
    "get_batch",
    "item_row",
    "judge",
    "list_batches",
    "record_chunk",
    "record_items",
    "require_admin",
    "selection",
    "slice_seconds",
    "stall_after",
    "stalled_batches",
    "start_batch",
    "touch_batch",
]
