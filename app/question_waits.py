"""A contract waiting for its questions: resumed when the last one closes, and status changes.

A contract's status follows its open questions, always in the transaction of the change and
under the contract's row lock (`app.contract_rows`):

- **resume**: answering or withdrawing the contract's last open question while it waits for
  a question (`waiting_for_input`, `waiting_for = 'question'`) moves it back to `active`
  (`resume_if_last`); asking is what entered the wait (`app.questions`).
- **close**: when a contract closes (`completed`, `failed`, `archived`), `set_status` cancels
  its open questions in that transaction (`cancel_open_questions`), each with its event, so no
  question of a closed contract stays open.
- **activate**: a question asked while the contract was `created`, `paused` (the input
  timeout's pause included) or otherwise not running keeps that status; when the contract
  then becomes `active` with a question still open, `set_status` sends it on to
  `waiting_for_input` (`waiting_for = 'question'`) in that transaction
  (`questions_after_status_change`), so the question is surfaced and never lost.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from app.contract_rows import set_status
from app.db import UnitOfWork
from app.domain.lifecycle import Status, WaitingFor
from app.domain.questions import QuestionStatus, resumes_after
from app.domain.records import EventType
from app.events import record_event
from app.models import Contract, SupervisorQuestion
from app.queues import TaskName


def resume_if_last(
    uow: UnitOfWork, contract: Contract, closed_id: uuid.UUID, now: datetime, reason: str
) -> None:
    """The contract back to `active` when `closed_id` was the last open question it waited on."""
    status = Status(contract.status)
    if not resumes_after(status, contract.waiting_for, 0):
        return
    still_open = uow.session.scalar(
        select(func.count())
        .select_from(SupervisorQuestion)
        .where(
            SupervisorQuestion.contract_id == contract.id,
            SupervisorQuestion.status == QuestionStatus.OPEN.value,
            SupervisorQuestion.id != closed_id,
        )
    )
    if resumes_after(status, contract.waiting_for, still_open or 0):
        set_status(uow.session, contract, Status.ACTIVE, now, reason=reason)
        # Work resumes: the gate may have been met while the contract waited.
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})


def questions_after_status_change(
    session: Session, contract: Contract, previous: Status, now: datetime
) -> None:
    """What a status change does to the contract's open questions; `set_status` calls it in the
    transaction of the change, under the contract's row lock, when the contract closes or
    becomes `active`.

    - Closing (`completed`, `failed`, `archived`): its open questions are cancelled
      (`cancel_open_questions`).
    - Becoming `active` (the supervisor started a `created` contract, a person resumed a
      `paused` one, ...) while a question is open: a question asked while the contract was not
      running kept its status, so nobody was asked to answer; the contract goes on to
      `waiting_for_input` (`waiting_for = 'question'`) at once, recorded as the second status
      change it is, and shows in the dashboard's `waitingForInput` until the last is answered.
    """
    status = Status(contract.status)
    if status in Status.terminal() and previous not in Status.terminal():
        cancel_open_questions(session, contract, now)
    elif status is Status.ACTIVE and _has_open_questions(session, contract.id):
        set_status(session, contract, Status.WAITING_FOR_INPUT, now, waiting_for=WaitingFor.QUESTION.value)


def _has_open_questions(session: Session, contract_id: uuid.UUID) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    SupervisorQuestion.contract_id == contract_id,
                    SupervisorQuestion.status == QuestionStatus.OPEN.value,
                )
            )
        )
    )


def cancel_open_questions(session: Session, contract: Contract, now: datetime) -> int:
    """Cancel a closing contract's open questions, one `question_cancelled` event each.

    Called by `set_status` in the transaction that closes the contract, under its row lock.
    """
    reason = f"the contract is {contract.status}"
    cancelled = session.execute(
        update(SupervisorQuestion)
        .where(
            SupervisorQuestion.contract_id == contract.id,
            SupervisorQuestion.status == QuestionStatus.OPEN.value,
        )
        .values(status=QuestionStatus.CANCELLED.value)
        .returning(SupervisorQuestion.id, SupervisorQuestion.task_id),
        execution_options={"synchronize_session": False},
    ).all()
    for question_id, task_id in sorted(cancelled, key=lambda r: str(r[0])):
        record_event(
            session,
            contract.id,
            EventType.QUESTION_CANCELLED,
            {
                "questionId": str(question_id),
                "taskId": str(task_id) if task_id else None,
                "reason": reason,
                "cancelledBy": None,
            },
            now,
        )
    return len(cancelled)


__all__ = ["cancel_open_questions", "questions_after_status_change", "resume_if_last"]
