"""Questions a supervisor asks a person: asked, read, answered once, withdrawn, closed with the contract.

Each write is one short transaction under the contract's row lock (`app.contract_rows`), so
a contract's questions, its status and its events move together and in order:

- **ask** (a `supervisor` or `admin`): a `supervisor_questions` row, a `question_asked`
  event and, for an `active` contract, the move to `waiting_for_input` with
  `waiting_for = 'question'` through the guarded status change (its `status_changed` event).
  The `questionId` a daemon chooses makes asking safe to repeat: the same id with the same
  content is the same question, answered 200 instead of 201.
- **answer** (a `user` or `admin`: a question exists so that a person decides): the answer
  checked against the question's type, stored once, a `question_answered` event and an
  `answer_question` command to the asking daemon (`app.daemon_commands`); when it was the
  contract's last open question and the contract waits for a question, back to `active`.
  The same answer again is the same answer; another one is QUESTION_CLOSED.
- **withdraw** (the asking side: `supervisor` or `admin`): `cancelled`, a `question_cancelled`
  event, and the same last-question rule.
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
from typing import Any, Final

from pydantic import Field
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.auth import Caller
from app.contract_rows import get_contract, lock_contract, refuse_if_closed, set_status, touch
from app.daemon_commands import daemon_of, queue_command
from app.db import UnitOfWork, dialect_insert
from app.domain.errors import (
    Forbidden,
    QuestionClosed,
    QuestionIdReused,
    QuestionNotFound,
    ValidationFailed,
)
from app.domain.lifecycle import Status, WaitingFor
from app.domain.questions import (
    ANSWERING_ROLES,
    ASKING_ROLES,
    QuestionDraft,
    QuestionStatus,
    QuestionType,
    parse_answer,
    parse_question,
    resumes_after,
    same_answer,
    status_after_asking,
)
from app.domain.records import EventType
from app.events import record_event
from app.foreign_tasks import foreign_task
from app.models import Contract, ContractTask, DaemonCommand, SupervisorQuestion
from app.queues import TaskName
from app.schemas import Schema, Timestamp

ANSWER_COMMAND: Final = "answer_question"
MAX_PAGE: Final = 500


# --- answers ------------------------------------------------------------------------------------


class QuestionView(Schema):
    """A question as every caller reads it (and as the restoration context carries it)."""

    id: uuid.UUID
    contract_id: uuid.UUID
    task_id: uuid.UUID | None = Field(description="The asking supervisor's task, when it said.")
    question: str
    type: QuestionType
    options: list[str] = Field(description="The choices of a single_choice or multiple_choice question.")
    context: str | None
    status: QuestionStatus
    asked_by: str = Field(description="The principal id that asked.")
    asked_at: Timestamp
    answer: str | list[str] | bool | None = Field(
        description="free_text, single_choice: a string; multiple_choice: a list, in the options' "
        "order; confirmation: a boolean; null until answered."
    )
    answered_by: str | None = Field(description="The principal id of the person who answered.")
    answered_at: Timestamp | None
    daemon_id: str | None = Field(description="The daemon the answer is sent to, when the asker named it.")


class QuestionList(Schema):
    """A contract's questions, oldest first."""

    questions: list[QuestionView]
    next_after: uuid.UUID | None = Field(
        description="Pass as `after` for the questions after this page; null on the last page."
    )


class QuestionOutcome(Schema):
    """A question answered or withdrawn, and where that leaves its contract."""

    question: QuestionView
    contract_status: Status
    waiting_for: WaitingFor | None
    command_id: int | None = Field(
        description="The `answer_question` command that carries the answer to the daemon (null for "
        "a withdrawal)."
    )


def question_view(row: SupervisorQuestion) -> QuestionView:
    return QuestionView(
        id=row.id,
        contract_id=row.contract_id,
        task_id=row.task_id,
        question=row.question,
        type=QuestionType(row.question_type),
        options=list(row.options),
        context=row.context,
        status=QuestionStatus(row.status),
        asked_by=row.asked_by,
        asked_at=row.asked_at,
        answer=row.answer,
        answered_by=row.answered_by,
        answered_at=row.answered_at,
        daemon_id=row.daemon_id,
    )


def _outcome(row: SupervisorQuestion, contract: Contract, command_id: int | None) -> QuestionOutcome:
    return QuestionOutcome(
        question=question_view(row),
        contract_status=Status(contract.status),
        waiting_for=WaitingFor(contract.waiting_for) if contract.waiting_for else None,
        command_id=command_id,
    )


# --- the rules' plumbing ------------------------------------------------------------------------


def _require_role(caller: Caller, roles: tuple[str, ...], action: str) -> None:
    if caller.role.value not in roles:
        raise Forbidden(action, caller.role.value, list(roles))


def _question(session: Session, contract_id: uuid.UUID, question_id: uuid.UUID) -> SupervisorQuestion:
    """The contract's question; another contract's is QUESTION_NOT_FOUND, like a missing one."""
    row = session.get(SupervisorQuestion, question_id, populate_existing=True)
    if row is None or row.contract_id != contract_id:
        raise QuestionNotFound(contract_id, question_id)
    return row


def _closed(row: SupervisorQuestion) -> QuestionClosed:
    details: dict[str, Any] = {}
    if row.status == QuestionStatus.ANSWERED.value:
        details = {
            "answer": row.answer,
            "answeredBy": row.answered_by,
            "answeredAt": row.answered_at.isoformat() if row.answered_at else None,
        }
    return QuestionClosed(row.id, row.status, details)


def _refuse_foreign_task(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    owner = session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task_id))
    if owner is not None and owner != contract_id:
        raise foreign_task(
            session,
            task_id,
            contract_id,
            owner,
            f"Task {task_id} belongs to another contract; taskId names the supervisor asking on this one.",
        )


def _resume_if_last(
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


def _daemon_for(session: Session, row: SupervisorQuestion) -> str | None:
    """Where an answer goes when the asker named no daemon: the daemon heard running the asking
    task, else the one heard last for the contract's supervisor (None: the shared queue)."""
    found = daemon_of(session, row.contract_id, row.task_id) if row.task_id else None
    return found or daemon_of(session, row.contract_id)


def _answer_command_id(session: Session, row: SupervisorQuestion) -> int | None:
    """The command that carried this question's answer (for answering the same answer again)."""
    return session.scalar(
        select(DaemonCommand.id)
        .where(
            DaemonCommand.contract_id == row.contract_id,
            DaemonCommand.command == ANSWER_COMMAND,
            DaemonCommand.payload["questionId"].as_string() == str(row.id),
        )
        .order_by(DaemonCommand.id)
        .limit(1)
    )


# --- asking -------------------------------------------------------------------------------------


def ask_question(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    question: object,
    type_: object,
    options: object = None,
    context: object = None,
    task_id: uuid.UUID | None = None,
    daemon_id: object = None,
    question_id: uuid.UUID | None = None,
    now: datetime,
) -> tuple[QuestionView, bool]:
    """Record a supervisor's question; returns it and whether it is new.

    Judged in this order: the contract visible (CONTRACT_NOT_FOUND), the caller on the asking
    side (FORBIDDEN), the question well formed (VALIDATION_FAILED), a repeated `questionId`
    (the same question again, or QUESTION_ID_REUSED), the contract still open.
    """
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    _require_role(caller, ASKING_ROLES, "ask a question")
    draft = parse_question(
        question, type_, options=options, context=context, task_id=task_id, daemon_id=daemon_id
    )
    if question_id is not None:
        existing = session.get(SupervisorQuestion, question_id, populate_existing=True)
        if existing is not None:
            return _asked_again(session, existing, contract, draft), False
    target = status_after_asking(Status(contract.status))
    if draft.task_id is not None:
        _refuse_foreign_task(session, contract.id, draft.task_id)
    new_id = question_id or uuid.uuid4()
    values = {
        "id": new_id,
        "contract_id": contract.id,
        "task_id": draft.task_id,
        "question": draft.question,
        "question_type": draft.type.value,
        "options": list(draft.options),
        "context": draft.context,
        "status": QuestionStatus.OPEN.value,
        "asked_by": str(caller.principal_id),
        "asked_at": now,
        "daemon_id": draft.daemon_id,
    }
    # ON CONFLICT DO NOTHING: the one way two asks with one id can meet is on two contracts (one
    # contract's asks queue on its row lock); the later then finds the earlier's question.
    inserted = session.scalars(
        dialect_insert(session, SupervisorQuestion)
        .values(values)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(SupervisorQuestion),
        execution_options={"populate_existing": True},
    ).first()
    if inserted is None:
        existing = session.get(SupervisorQuestion, new_id, populate_existing=True)
        assert existing is not None
        return _asked_again(session, existing, contract, draft), False
    record_event(
        session,
        contract.id,
        EventType.QUESTION_ASKED,
        {
            "questionId": str(new_id),
            "taskId": str(draft.task_id) if draft.task_id else None,
            "type": draft.type.value,
            "question": draft.question,
            "options": list(draft.options),
            "askedBy": str(caller.principal_id),
        },
        now,
    )
    touch(contract, now)
    if target is not None:
        set_status(session, contract, target, now, waiting_for=WaitingFor.QUESTION.value)
    return question_view(inserted), True


def _asked_again(
    session: Session, row: SupervisorQuestion, contract: Contract, draft: QuestionDraft
) -> QuestionView:
    """A repeated `questionId`: the stored question if the content is the same.

    Where it came from is not content: a daemon that asks its open question again after a
    restart (a new task or daemon id) has the answer sent to it from now on, if it is the
    daemon now running the supervisor (a replaced daemon repeating its question cannot pull
    the answer back from the one a restoration gave it to).
    """
    if row.contract_id != contract.id:
        raise QuestionIdReused(row.id, [])
    differs = draft.differences(row.question, row.question_type, row.options, row.context)
    if differs:
        raise QuestionIdReused(row.id, differs)
    if row.status == QuestionStatus.OPEN.value:
        if draft.task_id is not None and row.task_id != draft.task_id:
            _refuse_foreign_task(session, contract.id, draft.task_id)
            row.task_id = draft.task_id
        if (
            draft.daemon_id is not None
            and row.daemon_id != draft.daemon_id
            and (
                row.task_id is None or daemon_of(session, contract.id, row.task_id) in (None, draft.daemon_id)
            )
        ):
            row.daemon_id = draft.daemon_id
    return question_view(row)


# --- answering and withdrawing ------------------------------------------------------------------


def answer_question(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    question_id: uuid.UUID,
    answer: object,
    *,
    now: datetime,
) -> QuestionOutcome:
    """A person's answer: stored once, sent to the asking daemon, the contract resumed if it was the last.

    The same answer to an answered question is the first answer again (nothing more is
    written or sent); another answer, or any answer to a cancelled question, is
    QUESTION_CLOSED with what was stored.
    """
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    _require_role(caller, ANSWERING_ROLES, "answer a question (a person decides)")
    row = _question(session, contract.id, question_id)
    kind = QuestionType(row.question_type)
    if row.status == QuestionStatus.ANSWERED.value:
        try:
            again = same_answer(row.answer, parse_answer(kind, row.options, answer))
        except ValidationFailed:
            again = False
        if again:
            return _outcome(row, contract, _answer_command_id(session, row))
        raise _closed(row)
    if row.status != QuestionStatus.OPEN.value:
        raise _closed(row)
    refuse_if_closed(contract, "answers")
    given = parse_answer(kind, row.options, answer)
    row.status = QuestionStatus.ANSWERED.value
    row.answer = given
    row.answered_by = str(caller.principal_id)
    row.answered_at = now
    command = queue_command(
        uow,
        contract.id,
        ANSWER_COMMAND,
        {
            "questionId": str(row.id),
            "taskId": str(row.task_id) if row.task_id else None,
            "question": row.question,
            "answer": given,
            "answeredAt": now.isoformat(),
        },
        now,
        daemon_id=row.daemon_id or _daemon_for(session, row),
    )
    record_event(
        session,
        contract.id,
        EventType.QUESTION_ANSWERED,
        {
            "questionId": str(row.id),
            "taskId": str(row.task_id) if row.task_id else None,
            "answer": given,
            "answeredBy": row.answered_by,
            "commandId": command.id,
        },
        now,
    )
    touch(contract, now)
    _resume_if_last(uow, contract, row.id, now, reason="question answered")
    return _outcome(row, contract, command.id)


def cancel_question(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    question_id: uuid.UUID,
    *,
    reason: str | None = None,
    now: datetime,
) -> QuestionOutcome:
    """The asking side withdraws an open question; withdrawing it again changes nothing.

    An answered question cannot be withdrawn (QUESTION_CLOSED with its answer). Withdrawing
    the last open question a contract waits on returns it to `active`: the wait was the
    supervisor's own question, so ending it is not a person's decision to take.
    """
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    _require_role(caller, ASKING_ROLES, "withdraw a question")
    row = _question(session, contract.id, question_id)
    if row.status == QuestionStatus.CANCELLED.value:
        return _outcome(row, contract, None)
    if row.status != QuestionStatus.OPEN.value:
        raise _closed(row)
    row.status = QuestionStatus.CANCELLED.value
    record_event(
        session,
        contract.id,
        EventType.QUESTION_CANCELLED,
        {
            "questionId": str(row.id),
            "taskId": str(row.task_id) if row.task_id else None,
            "reason": reason or "withdrawn",
            "cancelledBy": str(caller.principal_id),
        },
        now,
    )
    touch(contract, now)
    _resume_if_last(uow, contract, row.id, now, reason="question withdrawn")
    return _outcome(row, contract, None)


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


# --- reading ------------------------------------------------------------------------------------


def open_questions(session: Session, contract_id: uuid.UUID) -> list[SupervisorQuestion]:
    """A contract's open questions, oldest first (what a restarted supervisor still waits on)."""
    return list(
        session.scalars(
            select(SupervisorQuestion)
            .where(
                SupervisorQuestion.contract_id == contract_id,
                SupervisorQuestion.status == QuestionStatus.OPEN.value,
            )
            .order_by(SupervisorQuestion.asked_at, SupervisorQuestion.id)
        )
    )


def list_questions(
    session: Session,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    open_: bool | None = None,
    after: uuid.UUID | None = None,
    limit: int = 100,
) -> QuestionList:
    """A contract's questions, oldest first: all, only open (`open_=True`) or only closed (False).

    `after` is the last question id of the previous page.
    """
    contract = get_contract(session, caller, contract_id)
    limit = max(1, min(limit, MAX_PAGE))
    query = select(SupervisorQuestion).where(SupervisorQuestion.contract_id == contract.id)
    if open_ is True:
        query = query.where(SupervisorQuestion.status == QuestionStatus.OPEN.value)
    elif open_ is False:
        query = query.where(SupervisorQuestion.status != QuestionStatus.OPEN.value)
    if after is not None:
        anchor = session.get(SupervisorQuestion, after)
        if anchor is None or anchor.contract_id != contract.id:
            raise ValidationFailed(
                f"'after' must be the id of one of this contract's questions (the previous page's "
                f"nextAfter); {after} is not.",
                details={"field": "after", "after": str(after)},
            )
        query = query.where(
            or_(
                SupervisorQuestion.asked_at > anchor.asked_at,
                and_(SupervisorQuestion.asked_at == anchor.asked_at, SupervisorQuestion.id > anchor.id),
            )
        )
    rows = list(
        session.scalars(query.order_by(SupervisorQuestion.asked_at, SupervisorQuestion.id).limit(limit + 1))
    )
    page = rows[:limit]
    return QuestionList(
        questions=[question_view(r) for r in page],
        next_after=page[-1].id if len(rows) > limit else None,
    )


def get_question(
    session: Session, caller: Caller, contract_id: uuid.UUID, question_id: uuid.UUID
) -> QuestionView:
    contract = get_contract(session, caller, contract_id)
    return question_view(_question(session, contract.id, question_id))


__all__ = [
    "ANSWER_COMMAND",
    "QuestionList",
    "QuestionOutcome",
    "QuestionView",
    "answer_question",
    "ask_question",
    "cancel_open_questions",
    "cancel_question",
    "get_question",
    "list_questions",
    "open_questions",
    "question_view",
    "questions_after_status_change",
]
