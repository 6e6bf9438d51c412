"""`/api/v1/contracts/{id}/questions`: a supervisor asks, a person answers.

The asking side (`supervisor`, `admin`) asks and withdraws; a person (`user`, `admin`) answers,
never a supervisor: a question exists so that a person decides. Anyone who sees the contract
reads its questions. Another owner's contract answers 404 CONTRACT_NOT_FOUND before any role
is judged, exactly like a missing one. The rules live in `app.questions` (reads in
`app.question_reads`).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import Field

from app.domain.daemon_ids import DAEMON_ID_RULE, MAX_DAEMON_ID
from app.domain.questions import (
    MAX_CONTEXT,
    MAX_FREE_TEXT_ANSWER,
    MAX_QUESTION,
    MAX_REASON,
    QuestionType,
)
from app.http.bodies import AnswerValue, SafeStr, _Body
from app.http.deps import Api, ContractId
from app.http.errors import API_PREFIX, error_responses
from app.http.routing import ParsedJSONRoute
from app.question_reads import MAX_PAGE, QuestionList, QuestionView
from app.questions import QuestionOutcome
from app.schemas import ErrorCode

E = ErrorCode
QUESTIONS = "/{id:uuid}/questions"
QUESTION = QUESTIONS + "/{questionId:uuid}"

QuestionId = Annotated[uuid.UUID, Path(alias="questionId", description="The question's id (a UUID).")]

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix=API_PREFIX,
    tags=["questions"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


class AskQuestionRequest(_Body):
    question_id: Annotated[uuid.UUID | None, Field(strict=False)] = Field(
        None,
        description="Idempotency key you choose: asking again with the same id and the same content "
        "answers the stored question (200); other content is 409 QUESTION_ID_REUSED.",
    )
    task_id: Annotated[uuid.UUID | None, Field(strict=False)] = Field(
        None, description="The asking supervisor's task id."
    )
    question: SafeStr = Field(min_length=1, max_length=MAX_QUESTION)
    type: Annotated[QuestionType, Field(strict=False)] = Field(
        description="free_text, single_choice, multiple_choice or confirmation."
    )
    options: list[SafeStr] | None = Field(
        None,
        description="single_choice and multiple_choice only: 2 to 20 distinct options of ≤ 500 characters.",
    )
    context: SafeStr | None = Field(None, max_length=MAX_CONTEXT, description="What the person should know.")
    daemon_id: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=MAX_DAEMON_ID,
        description="The daemon the answer is sent to (default: the daemon running the supervisor), "
        f"as its command feed takes it: {DAEMON_ID_RULE}",
    )


class AnswerQuestionRequest(_Body):
    answer: AnswerValue = Field(
        description="free_text: a string of 1 to "
        f"{MAX_FREE_TEXT_ANSWER} characters; single_choice: one of the options; multiple_choice: a "
        "list of distinct options; confirmation: true or false."
    )


class CancelQuestionRequest(_Body):
    reason: SafeStr | None = Field(None, max_length=MAX_REASON, description="Why it is withdrawn.")


@router.post(
    QUESTIONS,
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {"model": QuestionView, "description": "The same question asked again."},
        **error_responses(
            E.CONTRACT_NOT_FOUND, E.FORBIDDEN, E.VALIDATION_FAILED, E.QUESTION_ID_REUSED, bad_json=True
        ),
    },
)
def ask_question(
    contract_id: ContractId, body: AskQuestionRequest, api: Api, response: Response
) -> QuestionView:
    """A supervisor (or admin) asks a person. 201 with the question; an `active` contract now
    waits for input (`waitingFor: question`) until its last open question is answered. A
    contract already waiting, created, paused, blocked or completing keeps its status; a closed
    one answers 400. A `user` gets 403: people answer questions, supervisors ask them."""
    view, created = api.ask_question(
        contract_id,
        body.question,
        body.type.value,
        options=body.options,
        context=body.context,
        task_id=body.task_id,
        question_id=body.question_id,
        daemon_id=body.daemon_id,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return view


@router.get(QUESTIONS, responses=error_responses(E.CONTRACT_NOT_FOUND, E.VALIDATION_FAILED))
def list_questions(
    contract_id: ContractId,
    api: Api,
    open_: Annotated[
        bool | None,
        Query(alias="open", description="true: only open questions; false: only answered or cancelled."),
    ] = None,
    after: Annotated[
        uuid.UUID | None, Query(description="The previous page's `nextAfter`: the questions after it.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Questions per page.")] = 100,
) -> QuestionList:
    """The contract's questions, oldest first: at most `limit` of them and at most 4 MiB of
    JSON. A page that stops early at the size bound says `truncated: true`; pass `nextAfter`
    back as `after` to read on (null on the last page)."""
    return api.questions(contract_id, open_=open_, after=after, limit=limit)


@router.get(QUESTION, responses=error_responses(E.CONTRACT_NOT_FOUND, E.QUESTION_NOT_FOUND))
def get_question(contract_id: ContractId, question_id: QuestionId, api: Api) -> QuestionView:
    """One question; another contract's question answers 404 QUESTION_NOT_FOUND."""
    return api.question(contract_id, question_id)


_DECIDE_ERRORS = error_responses(
    E.CONTRACT_NOT_FOUND,
    E.FORBIDDEN,
    E.QUESTION_NOT_FOUND,
    E.QUESTION_CLOSED,
    E.VALIDATION_FAILED,
    bad_json=True,
)


@router.post(QUESTION + "/answer", responses=_DECIDE_ERRORS)
def answer_question(
    contract_id: ContractId, question_id: QuestionId, body: AnswerQuestionRequest, api: Api
) -> QuestionOutcome:
    """A person (user or admin) answers; a supervisor gets 403. The answer is checked against the
    question's type (400 naming what is allowed), stored, and sent to the asking daemon as an
    `answer_question` command (`commandId`). The contract's last open question answered returns
    a contract waiting for a question to `active`. The same answer again answers the same body;
    another answer, or any answer to a cancelled question, is 409 QUESTION_CLOSED."""
    return api.answer_question(contract_id, question_id, body.answer)


@router.post(QUESTION + "/cancel", responses=_DECIDE_ERRORS)
def cancel_question(
    contract_id: ContractId,
    question_id: QuestionId,
    api: Api,
    body: CancelQuestionRequest | None = None,
) -> QuestionOutcome:
    """The asking side (supervisor or admin) withdraws an open question; a `user` gets 403.
    Withdrawing the last open question returns a contract waiting for a question to `active`;
    withdrawing twice is harmless; an answered question is 409 QUESTION_CLOSED."""
    return api.cancel_question(contract_id, question_id, reason=body.reason if body else None)


__all__ = ["router"]
