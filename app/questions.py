"""Questions a supervisor asks a person: asked, answered once, withdrawn.

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

How the contract's status follows its questions (resumed after the last, questions cancelled
when it closes, the wait entered when it becomes `active` with questions open) is
`app.question_waits`; reading them (one, a page, the open ones) is `app.question_reads`,
whose `list_questions`, `get_question` and `QuestionList` are importable from here too, as
`app.api` calls them through this module.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.contract_rows import lock_contract, refuse_if_closed, set_status, touch
from app.daemon_commands import daemon_of, queue_command
from app.db import UnitOfWork, dialect_insert
from app.domain.errors import (
    Forbidden,
    QuestionClosed,
    QuestionIdReused,
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
    same_answer,
    status_after_asking,
)
from app.domain.records import EventType
from app.events import record_event
from app.foreign_tasks import foreign_task
from app.models import (
    Contract,
    ContractTask,
    DaemonCommand,
    Supervisor,
    SupervisorQuestion,
    SupervisorStateRow,
)
from app.question_reads import (
    QuestionList,
    QuestionView,
    find_question,
    get_question,
    list_questions,
    question_view,
)
from app.question_waits import resume_if_last
from app.schemas import Schema

ANSWER_COMMAND: Final = "answer_question"


# --- answers ------------------------------------------------------------------------------------


class QuestionOutcome(Schema):
    """A question answered or withdrawn, and where that leaves its contract."""

    question: QuestionView
    contract_status: Status
    waiting_for: WaitingFor | None
    command_id: int | None = Field(
        description="The `answer_question` command that carries the answer to the daemon (null for "
        "a withdrawal)."
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
    """The asking task may be one this contract knows, or a new one; not another contract's,
    whether that contract knows it as a task, a supervisor heard by heartbeats, or a saved state."""
    for owner in (
        session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task_id)),
        session.scalar(select(Supervisor.contract_id).where(Supervisor.task_id == task_id)),
        session.scalar(select(SupervisorStateRow.contract_id).where(SupervisorStateRow.task_id == task_id)),
    ):
        if owner is not None and owner != contract_id:
            raise foreign_task(
                session,
                task_id,
                contract_id,
                owner,
                f"Task {task_id} belongs to another contract; "
                "taskId names the supervisor asking on this one.",
            )


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
    row = find_question(session, contract.id, question_id)
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
    resume_if_last(uow, contract, row.id, now, reason="question answered")
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
    row = find_question(session, contract.id, question_id)
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
    resume_if_last(uow, contract, row.id, now, reason="question withdrawn")
    return _outcome(row, contract, None)


__all__ = [
    "ANSWER_COMMAND",
    "QuestionList",
    "QuestionOutcome",
    "QuestionView",
    "answer_question",
    "ask_question",
    "cancel_question",
    "get_question",
    "list_questions",
]
