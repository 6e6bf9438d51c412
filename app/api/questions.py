"""Questions a supervisor asks a person, as `ContractsAPI` serves them (`app.questions`).

Why answered now: asking, answering and withdrawing each move the contract's status with the
question (waiting for input, back to active), so the caller sees the outcome of its call.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from app import questions as question_service
from app.api.base import APIBase, check_flag, check_range
from app.domain.uuids import id_argument
from app.question_reads import MAX_PAGE


class QuestionsMixin(APIBase):
    """Ask, answer, withdraw and read a contract's questions."""

    def ask_question(
        self,
        contract_id: uuid.UUID,
        question: str,
        type_: str,
        *,
        options: Sequence[str] | None = None,
        context: str | None = None,
        task_id: uuid.UUID | None = None,
        question_id: uuid.UUID | None = None,
        daemon_id: str | None = None,
    ) -> tuple[question_service.QuestionView, bool]:
        """Ask a person (a supervisor's or admin's call); returns the question and whether it is new.

        `question_id` makes asking safe to repeat: the same id with the same content answers
        the stored question (False); with other content it is QUESTION_ID_REUSED. An `active`
        contract waits for input until its last open question is answered.
        """
        with self._uow() as uow:
            return question_service.ask_question(
                uow,
                self.caller,
                contract_id,
                question=question,
                type_=type_,
                options=list(options) if options is not None else None,
                context=context,
                task_id=task_id,
                daemon_id=daemon_id,
                question_id=question_id,
                now=self._clock(),
            )

    def answer_question(
        self, contract_id: uuid.UUID, question_id: uuid.UUID, answer: str | list[str] | bool
    ) -> question_service.QuestionOutcome:
        """A person's answer (a user's or admin's call): stored once, sent to the asking daemon."""
        with self._uow() as uow:
            return question_service.answer_question(
                uow, self.caller, contract_id, question_id, answer, now=self._clock()
            )

    def cancel_question(
        self, contract_id: uuid.UUID, question_id: uuid.UUID, *, reason: str | None = None
    ) -> question_service.QuestionOutcome:
        """The asking side withdraws an open question (a supervisor's or admin's call)."""
        with self._uow() as uow:
            return question_service.cancel_question(
                uow, self.caller, contract_id, question_id, reason=reason, now=self._clock()
            )

    def questions(
        self,
        contract_id: uuid.UUID,
        *,
        open_: bool | None = None,
        after: uuid.UUID | None = None,
        limit: int = 100,
    ) -> question_service.QuestionList:
        """The contract's questions, oldest first: all, open only (`open_=True`) or closed only;
        at most `limit` (1 to 500, as over HTTP)."""
        check_range("limit", limit, 1, MAX_PAGE)
        if open_ is not None:
            check_flag(open_, "open")
        if after is not None:
            after = id_argument(after, "after")
        with self._uow() as uow:
            return question_service.list_questions(
                uow.session, self.caller, contract_id, open_=open_, after=after, limit=limit
            )

    def question(self, contract_id: uuid.UUID, question_id: uuid.UUID) -> question_service.QuestionView:
        with self._uow() as uow:
            return question_service.get_question(uow.session, self.caller, contract_id, question_id)
