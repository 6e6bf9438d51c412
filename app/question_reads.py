"""Reading a contract's questions: the view every caller reads, one question, a page, the open ones.

Reads take no lock and write nothing. A question is always read through its contract, so
another contract's question is QUESTION_NOT_FOUND exactly like a missing one
(`find_question`, which the answering and withdrawing in `app.questions` use too). Pages are
oldest first and keyed on the last question of the previous page (`after`), so a question
asked meanwhile never shifts a page already read. A page is bounded by size as well as by
count (`QUESTION_PAGE_BYTES`), as the supervisor history is: 500 questions of the largest
allowed size would otherwise be tens of MB in one answer.
"""

from __future__ import annotations

import uuid
from typing import Final

from pydantic import Field
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.byte_budget import json_size, take_within_budget
from app.contract_rows import get_contract
from app.domain.errors import QuestionNotFound, ValidationFailed
from app.domain.questions import QuestionStatus, QuestionType
from app.models import SupervisorQuestion
from app.schemas import Schema, Timestamp

MAX_PAGE: Final = 500
# A page of questions is bounded by size as well as by count, like the supervisor history
# (`app.history_reads.HISTORY_BYTES`): questions are added while the answer's JSON stays
# within this, so 500 questions of the largest allowed size (in 4-byte characters about
# 88 KB each, 128 KB once a multiple choice is answered with all its options) cannot make a
# 60 MB answer; `nextAfter` says where to read on.
QUESTION_PAGE_BYTES: Final = 4 * 1024 * 1024
# Room kept for the page's own JSON around the questions (`{"questions":[`, the commas,
# `],"nextAfter":"<uuid>","truncated":true}`), so the whole answer stays within the bound.
_PAGE_ENVELOPE_BYTES: Final = 256
# Rows read from the database at a time: a page that stops at the size bound reads little
# past it, not 500 rows of up to 128 KB.
_ROWS_PER_FETCH: Final = 20


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
    truncated: bool = Field(
        False,
        description="True when the page stopped early at the size bound (4 MiB of JSON) before "
        "`limit` questions: read on from `nextAfter`.",
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


def find_question(session: Session, contract_id: uuid.UUID, question_id: uuid.UUID) -> SupervisorQuestion:
    """The contract's question; another contract's is QUESTION_NOT_FOUND, like a missing one."""
    row = session.get(SupervisorQuestion, question_id, populate_existing=True)
    if row is None or row.contract_id != contract_id:
        raise QuestionNotFound(contract_id, question_id)
    return row


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
    budget: int = QUESTION_PAGE_BYTES,
) -> QuestionList:
    """A contract's questions, oldest first: all, only open (`open_=True`) or only closed (False).

    `after` is the last question id of the previous page. A page holds at most `limit`
    questions and at most `budget` bytes of JSON: it stops before the question that would
    pass the bound (one question is always taken), `truncated` and `next_after` set.
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
    query = query.order_by(SupervisorQuestion.asked_at, SupervisorQuestion.id).limit(limit + 1)
    result = session.execute(query.execution_options(yield_per=_ROWS_PER_FETCH)).scalars()
    page = take_within_budget(result, question_view, json_size, budget, _PAGE_ENVELOPE_BYTES, limit)
    if page.more:  # the row past the page: there is more to read
        return QuestionList(questions=page.items, next_after=page.items[-1].id)
    if page.truncated:
        return QuestionList(questions=page.items, next_after=page.items[-1].id, truncated=True)
    return QuestionList(questions=page.items, next_after=None)


def get_question(
    session: Session, caller: Caller, contract_id: uuid.UUID, question_id: uuid.UUID
) -> QuestionView:
    contract = get_contract(session, caller, contract_id)
    return question_view(find_question(session, contract.id, question_id))


__all__ = [
    "MAX_PAGE",
    "QUESTION_PAGE_BYTES",
    "QuestionList",
    "QuestionView",
    "find_question",
    "get_question",
    "list_questions",
    "open_questions",
    "question_view",
]
