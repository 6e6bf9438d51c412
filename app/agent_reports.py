"""What daemons report about their agents' tasks, and the message claims that make it once-only.

A daemon's report travels through the broker and may arrive twice (a redelivery after a
worker died, a sender's resend). Each carries a message id that is claimed in the same
transaction as its effect, under the contract's row lock, so however often it arrives it is
applied once. Completing a task and judging the gate share that transaction too: two workers
finishing the last two tasks of a phase advance it once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.completion_flow import advance_if_ready
from app.contract_rows import lock_contract, refuse_if_closed, set_status, touch
from app.db import UnitOfWork, dialect_insert_for
from app.domain.completion import Decision
from app.domain.lifecycle import Status
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.foreign_tasks import foreign_task
from app.models import Contract, ContractTask, ProcessedMessage
from app.queues import TaskName

# Core statements on the tables (not the ORM entities), executed with parameters: the ORM
# would treat an entity INSERT with a parameter dict as a bulk insert without a rowcount.
_TASKS: Table = ContractTask.__table__  # type: ignore[assignment]
_CLAIMS: Table = ProcessedMessage.__table__  # type: ignore[assignment]


@lru_cache(maxsize=4)
def _claim_statement(dialect: str) -> Any:
    """Built once per dialect: on the hot path, building a statement costs more than running it."""
    return (
        dialect_insert_for(dialect, _CLAIMS)
        .values(
            contract_id=bindparam("contract_id"),
            message_id=bindparam("message_id"),
            kind=bindparam("kind"),
            processed_at=bindparam("now"),
        )
        .on_conflict_do_nothing(index_elements=["contract_id", "message_id"])
    )


@lru_cache(maxsize=4)
def _task_result_statement(dialect: str) -> Any:
    insert = dialect_insert_for(dialect, _TASKS).values(
        id=bindparam("task_id"),
        contract_id=bindparam("contract_id"),
        name=bindparam("name"),
        status=bindparam("status"),
        is_supervisor=False,
        phase=bindparam("phase"),
        created_at=bindparam("now"),
        updated_at=bindparam("now"),
        completed_at=bindparam("now"),
    )
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


def claim_message(
    session: Session, contract_id: uuid.UUID, message_id: str, kind: str, now: datetime
) -> bool:
    """Record that a message's effect is being committed; False if it already was."""
    stmt = _claim_statement(session.get_bind().dialect.name)
    params = {"contract_id": contract_id, "message_id": message_id, "kind": kind, "now": now}
    return bool(session.execute(stmt, params).rowcount)  # type: ignore[attr-defined]


def first_delivery(
    uow: UnitOfWork, contract_id: uuid.UUID, message_id: str | None, kind: str, now: datetime
) -> bool:
    """Claim a daemon message's id under the contract's lock; False for a repeat delivery.

    The claim commits with the effect, so a message is applied once however often it
    arrives; calls without a message id (HTTP commands) are judged on their own terms.
    """
    return message_id is None or claim_message(uow.session, contract_id, message_id, kind, now)


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
    if not first_delivery(uow, contract.id, message_id, "task_started", now):
        return contract
    refuse_if_closed(contract, "tasks")
    task = uow.session.get(ContractTask, task_id)
    if task is not None and task.contract_id != contract.id:
        raise foreign_task(
            uow.session,
            task_id,
            contract.id,
            task.contract_id,
            f"Task {task_id} belongs to another contract; a task id names one task.",
        )
    if task is None:
        uow.session.add(
            ContractTask(
                id=task_id,
                contract_id=contract.id,
                name=task_name,
                status=TaskStatus.RUNNING.value,
                is_supervisor=is_supervisor,
                phase=contract.phase,
                created_at=now,
                updated_at=now,
            )
        )
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
    if not first_delivery(uow, contract.id, message_id, "task_completed", now):
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
    report on a done task changes nothing. A task id of another contract is refused.
    """
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
    owner = session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task_id))
    if owner is not None and owner != contract.id:
        raise foreign_task(
            session, task_id, contract.id, owner, f"Task {task_id} belongs to another contract."
        )
    return False


__all__ = ["claim_message", "first_delivery", "record_task_completed", "record_task_started"]
