"""Contract tasks on the `contracts` queue. Each decodes, calls one service, and returns.

Every task is idempotent: daemon reports carry a message id claimed in the same transaction
as their effect, and follow-ups (evaluate, finalize) re-judge the locked row from scratch.
A daemon report is also marked `applied` in that transaction (`app.message_outcomes`), so
its sender can see what became of it; a refusal rolls that back and the dead letter records it.
"""

from __future__ import annotations

from typing import Any

from app import agent_reports, completion_flow, contracts, daemon_commands, message_outcomes, worktrees
from app.broker import send_task
from app.db import UnitOfWork, hot_unit_of_work, unit_of_work
from app.messages import (
    CompletionCheck,
    ContractRef,
    DeliverableMarked,
    Message,
    TaskCompleted,
    TaskStarted,
    WorktreeCreated,
    WorktreeRemoved,
    caller_of,
    decode,
)
from app.models import utcnow
from app.queues import TaskName
from workers.base import AccountableTask
from workers.celery_app import celery_app


def _applied_at_commit(uow: UnitOfWork, task: TaskName, msg: Message) -> None:
    """The sender's receipt: this message is applied if (and when) this transaction commits."""
    message_outcomes.applied_at_commit(
        uow.session, message_outcomes.Sent(msg.principal_id, msg.message_id, msg.contract_id, task.value)
    )


@celery_app.task(name=TaskName.TASK_STARTED, base=AccountableTask)
def task_started(message: Any) -> None:
    msg = decode(TaskStarted, message)
    with hot_unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.TASK_STARTED, msg)
        agent_reports.record_task_started(
            uow,
            caller_of(uow.session, msg),
            msg.contract_id,
            task_id=msg.task_id,
            task_name=msg.task_name,
            is_supervisor=msg.is_supervisor,
            message_id=msg.message_id,
            now=utcnow(),
        )


@celery_app.task(name=TaskName.TASK_COMPLETED, base=AccountableTask)
def task_completed(message: Any) -> None:
    msg = decode(TaskCompleted, message)
    now = utcnow()
    if agent_reports.task_completed_now(
        msg.principal_id,
        msg.contract_id,
        task_id=msg.task_id,
        task_name=msg.task_name,
        success=msg.success,
        message_id=msg.message_id,
        now=now,
        sender=send_task,
    ):
        return  # the plain case, on its Core path; every other case below
    with hot_unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.TASK_COMPLETED, msg)
        agent_reports.record_task_completed(
            uow,
            caller_of(uow.session, msg),
            msg.contract_id,
            task_id=msg.task_id,
            task_name=msg.task_name,
            success=msg.success,
            message_id=msg.message_id,
            now=now,
        )


@celery_app.task(name=TaskName.MARK_DELIVERABLE, base=AccountableTask)
def mark_deliverable(message: Any) -> None:
    msg = decode(DeliverableMarked, message)
    with unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.MARK_DELIVERABLE, msg)
        contracts.mark_deliverable(
            uow,
            caller_of(uow.session, msg),
            msg.contract_id,
            msg.deliverable_id,
            phase=msg.phase,
            message_id=msg.message_id,
            now=utcnow(),
        )


@celery_app.task(name=TaskName.WORKTREE_CREATED, base=AccountableTask)
def worktree_created(message: Any) -> None:
    msg = decode(WorktreeCreated, message)
    with unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.WORKTREE_CREATED, msg)
        worktrees.record_worktree(
            uow,
            caller_of(uow.session, msg),
            msg.contract_id,
            path=msg.path,
            daemon_id=msg.daemon_id,
            message_id=msg.message_id,
            now=utcnow(),
        )


@celery_app.task(name=TaskName.WORKTREE_REMOVED, base=AccountableTask)
def worktree_removed(message: Any) -> None:
    msg = decode(WorktreeRemoved, message)
    with unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.WORKTREE_REMOVED, msg)
        worktrees.record_worktree_removed(
            uow,
            caller_of(uow.session, msg),
            msg.contract_id,
            path=msg.path,
            daemon_id=msg.daemon_id,
            message_id=msg.message_id,
            now=utcnow(),
        )


@celery_app.task(name=TaskName.CHECK_COMPLETION, base=AccountableTask)
def check_completion(message: Any) -> None:
    msg = decode(CompletionCheck, message)
    with unit_of_work(send_task) as uow:
        _applied_at_commit(uow, TaskName.CHECK_COMPLETION, msg)
        completion_flow.evaluate_progress(
            uow, msg.contract_id, now=utcnow(), caller=caller_of(uow.session, msg)
        )


@celery_app.task(name=TaskName.EVALUATE_PROGRESS, base=AccountableTask)
def evaluate_progress(message: Any) -> None:
    ref = decode(ContractRef, message)
    with unit_of_work(send_task) as uow:
        completion_flow.evaluate_progress(uow, ref.contract_id, now=utcnow())


@celery_app.task(name=TaskName.FINALIZE_COMPLETION, base=AccountableTask)
def finalize_completion(message: Any) -> None:
    ref = decode(ContractRef, message)
    with unit_of_work(send_task) as uow:
        completion_flow.finalize_completion(uow, ref.contract_id, now=utcnow())


@celery_app.task(name=TaskName.PUBLISH_DAEMON_COMMANDS, base=AccountableTask)
def publish_commands(message: Any) -> None:
    ref = decode(ContractRef, message)
    daemon_commands.publish_pending(ref.contract_id)


@celery_app.task(name=TaskName.PING)
def ping() -> str:
    """Liveness probe of the contracts queue, and the no-op baseline `make bench` measures."""
    return "pong"
