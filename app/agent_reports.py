"""What daemons report about their agents' tasks, and the message claims that make it once-only.

A daemon's report travels through the broker and may arrive twice (a redelivery after a
worker died, a sender's resend). Each carries a message id that is claimed in the same
transaction as its effect, under the contract's row lock, so however often it arrives it is
applied once. A message id is unique per sender only, so the claim is the sender's: another
sender's report under the same id on the same contract is another report, applied too.
Completing a task and judging the gate share that transaction too: two workers finishing the
last two tasks of a phase advance it once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, String, Table, Uuid, bindparam, exists, select
from sqlalchemy.orm import Session

from app.auth import Caller, cached_principal
from app.broker import Sender
from app.completion_flow import advance_if_ready
from app.config import Settings, get_settings
from app.contract_rows import (
    CONTRACT_COLUMNS,
    contract_row_from_driver,
    gate_facts_sql,
    lock_contract,
    refuse_if_closed,
    set_status,
    touch,
)
from app.db import UnitOfWork, after_commit, dialect_insert_for, driver_autocommit, get_engine, roll_back
from app.domain.completion import Decision, GateFacts, Step, TaskSummary, decide_after_progress
from app.domain.lifecycle import Status
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.foreign_tasks import held_elsewhere_sql, held_task, refuse_held_task, task_lock_sql
from app.gate import phase_config_of, switches_for
from app.models import CLAIMED_BEFORE_SENDERS, Contract, ContractTask, ProcessedMessage, UTCDateTime
from app.pending_writes import PendingWrites, event_row, write_held
from app.prepared import driver_rows
from app.queues import TaskName

# Core statements on the tables (not the ORM entities), executed with parameters: the ORM
# would treat an entity INSERT with a parameter dict as a bulk insert without a rowcount.
_TASKS: Table = ContractTask.__table__  # type: ignore[assignment]
_CLAIMS: Table = ProcessedMessage.__table__  # type: ignore[assignment]


@lru_cache(maxsize=4)
def _claim_statement(dialect: str) -> Any:
    """Built once per dialect: on the hot path, building a statement costs more than running it.

    The sender's row goes in unless it is there already or the contract holds the message id
    claimed before claims named a sender (`CLAIMED_BEFORE_SENDERS`, migration 0017): such a
    message was applied by some sender of the id, so none of them may apply it again. One
    statement either way, so the check costs no round trip.
    """
    contract_id = bindparam("contract_id", type_=Uuid())
    message_id = bindparam("message_id", type_=String())
    claimed_before = exists().where(
        _CLAIMS.c.contract_id == contract_id,
        _CLAIMS.c.principal_id == CLAIMED_BEFORE_SENDERS,
        _CLAIMS.c.message_id == message_id,
    )
    row = select(
        contract_id,
        bindparam("principal_id", type_=Uuid()),
        message_id,
        bindparam("kind", type_=String()),
        bindparam("now", type_=UTCDateTime()),
    ).where(~claimed_before)
    columns = ["contract_id", "principal_id", "message_id", "kind", "processed_at"]
    return (
        dialect_insert_for(dialect, _CLAIMS)
        .from_select(columns, row)
        .on_conflict_do_nothing(index_elements=["contract_id", "principal_id", "message_id"])
    )


def _task_insert(dialect: str, **columns: Any) -> Any:
    """A task row's INSERT with the columns both reports write; `columns` adds or overrides."""
    return dialect_insert_for(dialect, _TASKS).values(
        id=bindparam("task_id"),
        contract_id=bindparam("contract_id"),
        name=bindparam("name"),
        status=bindparam("status"),
        phase=bindparam("phase"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
        **columns,
    )


@lru_cache(maxsize=4)
def _task_result_statement(dialect: str) -> Any:
    insert = _task_insert(dialect, is_supervisor=False, completed_at=bindparam("now"))
    return insert.on_conflict_do_update(
        index_elements=["id"],
        set_={
            "status": insert.excluded.status,
            "updated_at": insert.excluded.updated_at,
            "completed_at": insert.excluded.completed_at,
        },
        where=(ContractTask.status != TaskStatus.DONE.value)
        & (ContractTask.contract_id == insert.excluded.contract_id),
    ).returning(ContractTask.id)


@lru_cache(maxsize=4)
def _task_started_statement(dialect: str) -> Any:
    return _task_insert(dialect, is_supervisor=bindparam("is_supervisor")).on_conflict_do_nothing(
        index_elements=["id"]
    )


def claim_message(
    session: Session,
    contract_id: uuid.UUID,
    principal_id: uuid.UUID,
    message_id: str,
    kind: str,
    now: datetime,
) -> bool:
    """Record that a sender's message's effect is being committed; False if it already was."""
    stmt = _claim_statement(session.get_bind().dialect.name)
    params = {
        "contract_id": contract_id,
        "principal_id": principal_id,
        "message_id": message_id,
        "kind": kind,
        "now": now,
    }
    return bool(session.execute(stmt, params).rowcount)  # type: ignore[attr-defined]


def first_delivery(
    uow: UnitOfWork,
    contract_id: uuid.UUID,
    principal_id: uuid.UUID,
    message_id: str | None,
    kind: str,
    now: datetime,
) -> bool:
    """Claim a daemon message's id for its sender under the contract's lock; False for a
    repeat delivery.

    The claim commits with the effect, so a message is applied once however often it
    arrives; it names the sender (`principal_id`, the message's), whose ids are its own, so
    another sender's report under the same id is not taken for a repeat. Calls without a
    message id (HTTP commands) are judged on their own terms.
    """
    return message_id is None or claim_message(uow.session, contract_id, principal_id, message_id, kind, now)


def record_task_started(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    task_id: uuid.UUID,
    task_name: str,
    is_supervisor: bool,
    message_id: str | None = None,
    now: datetime,
) -> Contract:
    """A task was spawned. A supervisor starting is what makes a `created` contract active."""
    contract = lock_contract(uow.session, caller, contract_id)
    if not first_delivery(uow, contract.id, caller.principal_id, message_id, "task_started", now):
        return contract
    refuse_if_closed(contract, "tasks")
    # Another contract's supervisor or ordinary task: taking the id here would lock that
    # contract's supervisor out of its own heartbeats and saves. Asked under the task id's locks
    # (PostgreSQL), held until this commits: a first heartbeat or a report naming the id on
    # another contract meanwhile waits for them and is refused then (`app.foreign_tasks`).
    refuse_held_task(uow.session, contract.id, task_id)
    task = uow.session.get(ContractTask, task_id)
    if task is None:
        # One statement that cannot fail on the key: should another contract's row appear
        # anyway (a writer that did not take the task's lock), this report is refused as
        # foreign, not broken by a duplicate key.
        inserted = uow.session.execute(
            _task_started_statement(uow.session.get_bind().dialect.name),
            {
                "task_id": task_id,
                "contract_id": contract.id,
                "name": task_name,
                "status": TaskStatus.RUNNING.value,
                "is_supervisor": is_supervisor,
                "phase": contract.phase,
                "now": now,
            },
        ).rowcount  # type: ignore[attr-defined]
        if not inserted:
            owner = uow.session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task_id))
            raise held_task(uow.session, task_id, contract.id, owner or contract.id, False)
        touch(contract, now)
        record_event(
            uow.session,
            contract.id,
            EventType.TASK_SPAWNED,
            {
                "taskId": str(task_id),
                "taskName": task_name,
                "isSupervisor": is_supervisor,
                "phase": contract.phase,
            },
            now,
        )
    if is_supervisor and contract.status == Status.CREATED.value:
        set_status(uow.session, contract, Status.ACTIVE, now, reason="supervisor started")
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return contract


def record_task_completed(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    task_id: uuid.UUID,
    task_name: str,
    success: bool,
    message_id: str | None = None,
    now: datetime,
) -> Decision | None:
    """Apply a task-completed report and, under the same lock, what the gate now allows."""
    contract = lock_contract(uow.session, caller, contract_id)
    if not first_delivery(uow, contract.id, caller.principal_id, message_id, "task_completed", now):
        return None
    refuse_if_closed(contract, "task results")
    if not _record_task_result(uow.session, contract, task_id, task_name, success, now):
        return None
    touch(contract, now)
    record_event(
        uow.session,
        contract.id,
        EventType.TASK_COMPLETED,
        {"taskId": str(task_id), "taskName": task_name, "success": success},
        now,
    )
    return advance_if_ready(uow, contract, now)


def _record_task_result(
    session: Session, contract: Contract, task_id: uuid.UUID, task_name: str, success: bool, now: datetime
) -> bool:
    """Upsert the task's result in one statement; False when there is nothing to change.

    A task reported `failed` may later be reported `done` (a retry); `done` is final, so a
    report on a done task changes nothing. A task id another contract holds (its supervisor or
    its ordinary task) is refused before anything is written, asked under the task id's locks
    (`app.foreign_tasks`, held until this commits, so no other contract takes the id between
    the question and the upsert), and again after an upsert that changed nothing, to tell a
    task already done here from a row of another contract's.
    """
    refuse_held_task(session, contract.id, task_id)
    status = (TaskStatus.DONE if success else TaskStatus.FAILED).value
    stmt = _task_result_statement(session.get_bind().dialect.name)
    params = {
        "task_id": task_id,
        "contract_id": contract.id,
        "name": task_name,
        "status": status,
        "phase": contract.phase,
        "now": now,
    }
    if session.execute(stmt, params).first() is not None:
        return True
    refuse_held_task(session, contract.id, task_id)
    return False


# -- the task-completed report's Core path ------------------------------------------------------
#
# Most task-completed reports are the plain case: a first delivery on an open contract, the
# task recorded, its event written, and the gate not yet met. That case is the workers' hot
# path, so it runs without the ORM in two round trips on PostgreSQL: `BEGIN` with the row lock
# and, for a task id new to the contract, the id's locks (`app.foreign_tasks.task_lock_sql`,
# which a first heartbeat naming the id on another contract takes too) and, once they are
# held, one statement that claims the message id for its sender (unless the contract holds it
# claimed before claims named a sender: `claim_message`), upserts the task unless another contract
# holds it, and reads the row with its phase's gate facts; then the write with its `COMMIT`.
# Anything else (a repeat delivery, a closed contract, a task id another contract holds as its
# supervisor or ordinary task (`app.foreign_tasks`: the upsert writes nothing then), a task
# already done, a caller who may not see the contract, a gate that now moves the contract) is
# rolled back and made by `record_task_completed` in a unit of work, which decides it with
# every rule.

_LOCK_ROW_SQL = "SELECT 1 FROM contracts WHERE id = %(cid)s::uuid FOR NO KEY UPDATE"
_LOCK_TASK_SQL = task_lock_sql("%(tid)s::uuid", "%(cid)s::uuid")
_CORE_COLUMNS = ", ".join(f"c.{col.name}" for col in Contract.__table__.c)
_CLAIM_TASK_AND_FACTS_SQL = (
    f"WITH c AS (SELECT {_CORE_COLUMNS} FROM contracts c WHERE c.id = %(cid)s::uuid), "
    "claim AS (INSERT INTO processed_messages (contract_id, principal_id, message_id, kind, processed_at) "
    " SELECT c.id, %(pid)s::uuid, %(mid)s::varchar, 'task_completed', %(now)s::timestamptz FROM c "
    " WHERE NOT EXISTS (SELECT 1 FROM processed_messages p WHERE p.contract_id = c.id "
    f" AND p.principal_id = '{CLAIMED_BEFORE_SENDERS}'::uuid AND p.message_id = %(mid)s::varchar) "
    " ON CONFLICT DO NOTHING RETURNING 1), "
    "up AS (INSERT INTO contract_tasks (id, contract_id, name, status, is_supervisor, phase, created_at, "
    " updated_at, completed_at) SELECT %(tid)s::uuid, c.id, %(name)s::varchar, %(status)s::varchar, false, "
    " c.phase, %(now)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz FROM c "
    " WHERE EXISTS (SELECT 1 FROM claim) AND NOT EXISTS ("
    + held_elsewhere_sql("%(tid)s::uuid", "c.id")
    + ") ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, "
    " completed_at = EXCLUDED.completed_at "
    " WHERE contract_tasks.status <> 'done' AND contract_tasks.contract_id = EXCLUDED.contract_id "
    " RETURNING name, status, is_supervisor, phase) "
    f"SELECT {_CORE_COLUMNS}, EXISTS (SELECT 1 FROM claim) AS fresh, "
    "(SELECT json_build_array(up.name, up.status, up.is_supervisor, up.phase) FROM up) AS upserted, "
    f"{gate_facts_sql('c', except_task='%(tid)s::uuid')}, "
    "nextval('contract_events_id_seq') AS next_event_id FROM c"
)


def task_completed_now(
    principal_id: uuid.UUID,
    contract_id: uuid.UUID,
    *,
    task_id: uuid.UUID,
    task_name: str,
    success: bool,
    message_id: str,
    now: datetime,
    sender: Sender | None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> bool:
    """Apply the plain case of a task-completed report; False, with nothing changed, otherwise.

    The same effect as `record_task_completed` with the sender's receipt marked applied, and
    the same guarantees: the row lock, the message id claimed with the effect, the gate judged
    on facts read under the lock, the event and the receipt in the same transaction, the live
    readers woken only after COMMIT. False means the caller makes the report in a unit of work
    (SQLite, a principal not in the cache, or any case but the plain one).
    """
    bind = engine or get_engine()
    caller = cached_principal(principal_id)
    if bind.dialect.name != "postgresql" or caller is None:
        return False
    settings = settings or get_settings()
    status = (TaskStatus.DONE if success else TaskStatus.FAILED).value
    params = {
        "cid": str(contract_id),
        "pid": str(principal_id),
        "mid": message_id,
        "now": now,
        "tid": str(task_id),
        "name": task_name,
        "status": status,
    }
    with driver_autocommit(bind) as connection:
        try:
            written = _task_completed_on(connection, caller, params, settings)
            if written is None:
                roll_back(connection)
                return False
            written.applied.append(
                {
                    "principal_id": principal_id,
                    "message_id": message_id,
                    "contract_id": contract_id,
                    "task": TaskName.TASK_COMPLETED.value,
                }
            )
            changes = [(contract_id, {"last_activity_at": now, "updated_at": now})]
            write_held(
                connection, written, changes, prepare=settings.database_prepared_statements, commit=True
            )
        except BaseException:
            roll_back(connection)
            raise
    after_commit(bind, written, [], sender)
    return True


def _task_completed_on(
    connection: Connection, caller: Caller, params: dict[str, Any], settings: Settings
) -> PendingWrites | None:
    """The first round trip and the judgement: the writes to make, or None for the general path."""
    rows = driver_rows(
        connection,
        [_LOCK_ROW_SQL, *_LOCK_TASK_SQL, _CLAIM_TASK_AND_FACTS_SQL],
        params,
        prepare=settings.database_prepared_statements,
        before="BEGIN",
    )
    if not rows:
        return None
    (row,) = rows
    contract = contract_row_from_driver(row)
    fresh, upserted, done, tasks, event_id = row[CONTRACT_COLUMNS:]
    if not (fresh and upserted and caller.may_access(contract.owner_id)):
        return None
    if Status(contract.status) in Status.terminal():
        return None
    summaries = [TaskSummary(name, status, bool(sup)) for name, status, sup in tasks]
    name, status, is_supervisor, phase = upserted
    if phase == contract.phase:
        summaries.append(TaskSummary(name, status, bool(is_supervisor)))
    facts = GateFacts(contract.phase, frozenset(done), tuple(summaries))
    decision = decide_after_progress(
        phase_config_of(contract),
        Status(contract.status),
        contract.phase_guard,
        facts,
        switches_for(contract, settings),
    )
    if decision.step is not Step.WAIT:
        return None
    payload = {
        "contractId": str(contract.id),
        "taskId": params["tid"],
        "taskName": name,
        "success": params["status"] == TaskStatus.DONE.value,
    }
    written = PendingWrites()
    event = event_row(contract.id, EventType.TASK_COMPLETED.value, payload, params["now"])
    written.events.append({"id": int(event_id), **event})
    return written


__all__ = [
    "claim_message",
    "first_delivery",
    "record_task_completed",
    "record_task_started",
    "task_completed_now",
]
