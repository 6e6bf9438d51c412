"""The contract row under its lock: load it as a caller may see it, and move it with its event.

Every writer follows one shape: lock the row (`SELECT ... FOR NO KEY UPDATE` on PostgreSQL,
`BEGIN IMMEDIATE` on SQLite), check the caller may see it, ask the pure domain, apply, and
write the event row in the same transaction. `NO KEY UPDATE`, not `UPDATE`: writers still
exclude each other, but rows that merely reference the contract (an event, a heartbeat, a
supervisor) can be inserted meanwhile (their foreign key takes `KEY SHARE`), so a writer that
holds a contract and waits for a `supervisors` row never deadlocks with heartbeat ingestion,
which holds that row and inserts the contract's event. The primitives every writer shares live here,
below the guarded commands (`app.contracts`) and the completion flow that both use them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import JSON, Connection, TextualSelect, column, select, text
from sqlalchemy.orm import Session

from app.auth import Caller
from app.domain.completion import GateFacts, TaskSummary
from app.domain.errors import ContractNotFound
from app.domain.lifecycle import Status, check_transition, closed_refusal
from app.domain.records import EventType
from app.domain.uuids import id_argument
from app.events import record_event
from app.gate import gate_facts, load_gate_facts
from app.models import Contract, UTCDateTime
from app.pending_writes import pending
from app.prepared import driver_rows


def _visible(contract: Contract | None, caller: Caller, contract_id: uuid.UUID) -> Contract:
    if contract is None or not caller.may_access(contract.owner_id):
        raise ContractNotFound(contract_id)
    return contract


def get_contract(session: Session, caller: Caller, contract_id: uuid.UUID) -> Contract:
    """Read without a lock; another owner's contract is reported exactly like a missing one."""
    contract_id = id_argument(contract_id, "contractId")
    return _visible(session.get(Contract, contract_id), caller, contract_id)


def lock_contract(session: Session, caller: Caller | None, contract_id: uuid.UUID) -> Contract:
    """Load the row under a write lock; `caller=None` is the service itself (sweeps).

    A row this transaction already locked is not read again: the in-memory object is the
    truth (its changes are written at commit, see `app.pending_writes`).
    """
    contract_id = id_argument(contract_id, "contractId")
    locked = pending(session).locked
    contract = session.get(Contract, contract_id) if contract_id in locked else None
    if contract is None:
        contract = session.scalars(
            select(Contract)
            .where(Contract.id == contract_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if contract is not None:
            locked.add(contract_id)
    if caller is None:
        if contract is None:
            raise ContractNotFound(contract_id)
        return contract
    return _visible(contract, caller, contract_id)


_COLUMNS = ", ".join(f"contracts.{c.name}" for c in Contract.__table__.c)
# Two statements in one round trip: take the row lock, then read the row and its current
# phase's gate facts. The second statement starts after the lock is held, so on PostgreSQL
# (READ COMMITTED: a snapshot per statement) it sees everything committed before the lock
# was granted; a single statement would judge the gate on facts from before the wait.
_LOCK_SQL = "SELECT 1 FROM contracts WHERE id = $1 FOR NO KEY UPDATE"


def gate_facts_sql(row: str, *, except_task: str = "") -> str:
    """The gate facts of the current phase of the contract row named `row`, as two JSON columns
    (`facts_done`: deliverable ids; `facts_tasks`: [name, status, is_supervisor] per task), for
    the statements that read a row with its facts in one round trip. `except_task` (an SQL
    expression) leaves one task out: the caller adds that task as its own write left it."""
    tasks_filter = f" AND t.id <> {except_task}" if except_task else ""
    return (
        "(SELECT coalesce(json_agg(d.deliverable_id), '[]'::json) FROM contract_deliverables d "
        f" WHERE d.contract_id = {row}.id AND d.phase = {row}.phase) AS facts_done, "
        "(SELECT coalesce(json_agg(json_build_array(t.name, t.status, t.is_supervisor)), '[]'::json) "
        f" FROM contract_tasks t WHERE t.contract_id = {row}.id AND t.phase = {row}.phase{tasks_filter})"
        " AS facts_tasks"
    )


_ROW_AND_FACTS_SQL = f"SELECT {_COLUMNS}, {gate_facts_sql('contracts')} FROM contracts WHERE id = $1"
# The Core path (`lock_row_with_facts`) also reserves the ids of the event and the outbox row
# it will most likely write, so its write can carry the COMMIT (`app.pending_writes.write_held`).
_ROW_FACTS_AND_IDS_SQL = _ROW_AND_FACTS_SQL.replace(
    " FROM contracts WHERE id = $1",
    ", nextval('contract_events_id_seq') AS next_event_id, nextval('task_outbox_id_seq') AS next_outbox_id"
    " FROM contracts WHERE id = $1",
)
_LOCK_NAME, _FACTS_NAME, _FACTS_IDS_NAME = "mk_lock_contract", "mk_contract_facts", "mk_contract_facts_ids"
_FACT_COLUMNS = (column("facts_done", JSON), column("facts_tasks", JSON))


@lru_cache(maxsize=8)
def _lock_with_facts_text(prepare: bool, known: frozenset[str]) -> TextualSelect:
    """The lock and the row with its facts as one string (`known`: prepared on this connection)."""
    if prepare:
        sql = f"EXECUTE {_LOCK_NAME}(:id); EXECUTE {_FACTS_NAME}(:id)"
        if _FACTS_NAME not in known:
            sql = f"PREPARE {_FACTS_NAME}(uuid) AS {_ROW_AND_FACTS_SQL}; {sql}"
        if _LOCK_NAME not in known:
            sql = f"PREPARE {_LOCK_NAME}(uuid) AS {_LOCK_SQL}; {sql}"
    else:
        lock, facts = (q.replace("$1", ":id") for q in (_LOCK_SQL, _ROW_AND_FACTS_SQL))
        sql = f"{lock}; {facts}"
    return text(sql).columns(*Contract.__table__.c, *_FACT_COLUMNS)


@lru_cache(maxsize=8)
def _core_lock_sql(prepare: bool, known: frozenset[str]) -> str:
    """The Core path's string, for the driver as it is: `BEGIN`, the lock, the row, its facts, the ids.

    Sent with `exec_driver_sql`: a textual statement through SQLAlchemy's compiler cost a
    cache key and result processors per call, more than the values need (psycopg2 already
    hands back UUIDs, JSON and aware datetimes).
    """
    if prepare:
        sql = f"EXECUTE {_LOCK_NAME}(%(id)s); EXECUTE {_FACTS_IDS_NAME}(%(id)s)"
        if _FACTS_IDS_NAME not in known:
            sql = f"PREPARE {_FACTS_IDS_NAME}(uuid) AS {_ROW_FACTS_AND_IDS_SQL}; {sql}"
        if _LOCK_NAME not in known:
            sql = f"PREPARE {_LOCK_NAME}(uuid) AS {_LOCK_SQL}; {sql}"
    else:
        lock, facts = (q.replace("$1", "%(id)s::uuid") for q in (_LOCK_SQL, _ROW_FACTS_AND_IDS_SQL))
        sql = f"{lock}; {facts}"
    return f"BEGIN; {sql}"


@lru_cache(maxsize=8)
def _lock_with_facts_query(prepare: bool, known: frozenset[str]) -> Any:
    statement = _lock_with_facts_text(prepare, known)
    return select(
        Contract, statement.selected_columns.facts_done, statement.selected_columns.facts_tasks
    ).from_statement(statement)


def lock_contract_with_facts(
    session: Session, caller: Caller | None, contract_id: uuid.UUID
) -> tuple[Contract, GateFacts]:
    """`lock_contract` and `load_gate_facts` of its current phase, in one round trip on PostgreSQL.

    The guarded phase change needs both; on SQLite (no round trips to save, and no
    multi-statement execute) and for a row this transaction already holds, it is the two
    calls.
    """
    if contract_id in pending(session).locked or session.get_bind().dialect.name != "postgresql":
        contract = lock_contract(session, caller, contract_id)
        return contract, load_gate_facts(session, contract)
    prepare = bool(session.info.get("prepared_statements", True))
    known: set[str] = session.connection().info.setdefault("makima.prepared", set())
    query = _lock_with_facts_query(prepare, frozenset(known & {_LOCK_NAME, _FACTS_NAME}))
    row = session.execute(query.execution_options(populate_existing=True), {"id": contract_id}).one_or_none()
    if prepare:
        known.update((_LOCK_NAME, _FACTS_NAME))
    if row is None:
        raise ContractNotFound(contract_id)
    contract, done, tasks = row
    if caller is not None:
        _visible(contract, caller, contract_id)
    pending(session).locked.add(contract_id)
    summaries = tuple(TaskSummary(name, status, bool(sup)) for name, status, sup in tasks)
    return contract, GateFacts(contract.phase, frozenset(done), summaries)


@dataclass(slots=True)
class ContractRow:
    """A contract row as plain values: what the guarded phase change's Core path judges.

    No session, no identity map, no attribute instrumentation: the row is read under its
    lock, judged by the pure domain and written back by one statement, so an ORM object
    would only be built to be thrown away. `as_contract` makes a detached ORM object for a
    caller that wants the usual view of it.
    """

    id: uuid.UUID
    owner_id: str
    name: str
    contract_type: str
    phase_config: dict[str, Any] | None
    phase: str
    status: str
    version: int
    phase_guard: bool
    auto_complete_enabled: bool
    status_changed_at: datetime
    last_activity_at: datetime
    waiting_for: str | None
    blocked_reason: str | None
    failure_reason: str | None
    completion_detected_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def update(self, columns: dict[str, Any]) -> None:
        for key, value in columns.items():
            setattr(self, key, value)

    def as_contract(self) -> Contract:
        return Contract(**{name: getattr(self, name) for name in _CONTRACT_FIELDS})


_CONTRACT_FIELDS = tuple(c.name for c in Contract.__table__.c)
# Rows are read by position: the dataclass must name the table's columns in the table's order.
if tuple(f.name for f in fields(ContractRow)) != _CONTRACT_FIELDS:
    raise RuntimeError(f"ContractRow's fields are not contracts' columns {_CONTRACT_FIELDS}")


_DATETIME_FIELDS = tuple(c.name for c in Contract.__table__.c if isinstance(c.type, UTCDateTime))


def _row_values(row: Sequence[Any]) -> ContractRow:
    return ContractRow(*row[: len(_CONTRACT_FIELDS)])


def contract_row_from_driver(row: Sequence[Any]) -> ContractRow:
    """The contract's columns at the front of a row the driver returned as it is
    (`app.prepared.driver_rows`), with datetimes as `UTCDateTime` reads them: aware, in UTC."""
    contract = _row_values(row)
    for name in _DATETIME_FIELDS:
        value = getattr(contract, name)
        if value is not None:
            setattr(contract, name, value.astimezone(UTC))
    return contract


CONTRACT_COLUMNS = len(_CONTRACT_FIELDS)


def lock_row_with_facts(
    connection: Connection, caller: Caller | None, contract_id: uuid.UUID, *, prepare: bool = True
) -> tuple[ContractRow, GateFacts, tuple[int, int] | None]:
    """Open the transaction, lock the row, read it and its phase's gate facts: a Core connection.

    On PostgreSQL the connection is in autocommit mode and this one round trip carries the
    `BEGIN` as well (the caller sends `COMMIT` or `ROLLBACK`): psycopg2 would otherwise spend
    a round trip of its own on `BEGIN`. It also reserves an event id and an outbox id (the
    third value), so the write can carry the `COMMIT`. On SQLite the transaction is already
    open (`BEGIN IMMEDIATE`, the write lock), these are two plain statements and nothing is
    reserved. An invisible contract is reported exactly like a missing one.
    """
    reserved: tuple[int, int] | None = None
    if connection.dialect.name == "postgresql":
        known: set[str] = connection.info.setdefault("makima.prepared", set())
        sql = _core_lock_sql(prepare, frozenset(known & {_LOCK_NAME, _FACTS_IDS_NAME}))
        # The string is composed here (the two statements prepared by name); sent as it is.
        rows = driver_rows(connection, sql, {"id": contract_id}, prepare=False)
        result = rows[0] if rows else None
        if prepare:
            known.update((_LOCK_NAME, _FACTS_IDS_NAME))
        if result is None:
            raise ContractNotFound(contract_id)
        contract = contract_row_from_driver(result)
        done, tasks, event_id, outbox_id = result[len(_CONTRACT_FIELDS) :]
        summaries = tuple(TaskSummary(name, status, bool(sup)) for name, status, sup in tasks)
        facts = GateFacts(contract.phase, frozenset(done), summaries)
        reserved = (int(event_id), int(outbox_id))
    else:
        found = connection.execute(
            select(*Contract.__table__.c).where(Contract.__table__.c.id == contract_id)
        ).one_or_none()
        if found is None:
            raise ContractNotFound(contract_id)
        contract = _row_values(found)
        facts = gate_facts(connection, contract.id, contract.phase)
    if caller is not None and not caller.may_access(contract.owner_id):
        raise ContractNotFound(contract_id)
    return contract, facts, reserved


def touch(contract: Contract, now: datetime) -> None:
    contract.last_activity_at = now
    contract.updated_at = now


# What names the contract of a call on `/api/v1/contracts/{id}/...` (and the API module's
# `contract_id` argument): a closed contract's refusal there names it as `details.field`, as a
# heartbeat's names its `contractId`, beside `details.status`.
CONTRACT_ID_FIELD: Final = "id"


def refuse_if_closed(contract: Contract, what: str, field: str | None = None) -> None:
    """VALIDATION_FAILED when the contract is closed (`closed_refusal`: `details.status`, and
    `details.field` when `field` names what chose the contract, such as the path's `id`)."""
    refuse_if_closed_status(contract.status, what, field)


def refuse_if_closed_status(stored: str, what: str, field: str | None = None) -> None:
    """`refuse_if_closed` on a status read without the row (the report's one-statement acceptance)."""
    refusal = closed_refusal(Status(stored).value, what, field)
    if refusal is not None:
        raise refusal


def status_columns(
    previous: Status,
    target: Status,
    now: datetime,
    *,
    reason: str | None = None,
    blocker: str | None = None,
    waiting_for: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A status move as plain values: (the contract columns it sets, its event's payload).

    Checked against the status table first. `set_status` applies it to an ORM row, with the
    rules a status move has beyond its columns.
    """
    check_transition(previous, target, reason=reason, blocker=blocker)
    columns: dict[str, Any] = {
        "status": target.value,
        "status_changed_at": now,
        "waiting_for": waiting_for if target is Status.WAITING_FOR_INPUT else None,
        "blocked_reason": blocker if target is Status.BLOCKED else None,
        "last_activity_at": now,
        "updated_at": now,
    }
    if target is Status.FAILED:
        columns["failure_reason"] = reason
    if target is Status.COMPLETING:
        columns["completion_detected_at"] = now
    elif previous is Status.COMPLETING and target is Status.ACTIVE:
        columns["completion_detected_at"] = None
    payload: dict[str, Any] = {
        "oldStatus": previous.value,
        "newStatus": target.value,
        "reason": reason or blocker or waiting_for,
    }
    return columns, payload


def set_status(
    session: Session,
    contract: Contract,
    target: Status,
    now: datetime,
    *,
    reason: str | None = None,
    blocker: str | None = None,
    waiting_for: str | None = None,
) -> Status:
    """Move the status along the table, keep the side columns honest, record the event."""
    previous = Status(contract.status)
    columns, payload = status_columns(
        previous, target, now, reason=reason, blocker=blocker, waiting_for=waiting_for
    )
    for key, value in columns.items():
        setattr(contract, key, value)
    record_event(session, contract.id, EventType.STATUS_CHANGED, payload, now)
    if (target in Status.terminal() and previous not in Status.terminal()) or target is Status.ACTIVE:
        # A closed contract's open questions are cancelled with it; one that becomes active
        # while questions are open waits for them (imported here: app.question_waits builds on
        # this module).
        from app.question_waits import questions_after_status_change

        questions_after_status_change(session, contract, previous, now)
    return previous


def phase_columns(
    old_phase: str, new_phase: str, new_version: int, now: datetime, *, forced: bool, confirmed: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A phase move as plain values: (the contract columns it sets, its event's payload)."""
    columns: dict[str, Any] = {
        "phase": new_phase,
        "version": new_version,
        "last_activity_at": now,
        "updated_at": now,
    }
    payload = {
        "oldPhase": old_phase,
        "newPhase": new_phase,
        "version": new_version,
        "forced": forced,
        "confirmed": confirmed,
    }
    return columns, payload


def apply_phase(
    session: Session,
    contract: Contract,
    new_phase: str,
    new_version: int,
    now: datetime,
    *,
    forced: bool,
    confirmed: bool,
) -> None:
    """Move to a phase the caller already judged allowed; bump the version, record the event."""
    columns, payload = phase_columns(
        contract.phase, new_phase, new_version, now, forced=forced, confirmed=confirmed
    )
    for key, value in columns.items():
        setattr(contract, key, value)
    record_event(session, contract.id, EventType.PHASE_CHANGED, payload, now)


__all__ = [
    "CONTRACT_COLUMNS",
    "CONTRACT_ID_FIELD",
    "ContractRow",
    "apply_phase",
    "contract_row_from_driver",
    "gate_facts_sql",
    "get_contract",
    "lock_contract",
    "lock_contract_with_facts",
    "lock_row_with_facts",
    "phase_columns",
    "refuse_if_closed",
    "refuse_if_closed_status",
    "set_status",
    "status_columns",
    "touch",
]
