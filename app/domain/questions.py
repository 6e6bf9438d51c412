"""Questions a supervisor asks a person: their types, what a valid answer is, what they do.

A supervisor that cannot decide alone asks (`free_text`, `single_choice`, `multiple_choice`
or `confirmation`); a person (`user` or `admin` of the owner) answers, once. The rules here
are plain values in and out, so the HTTP front, the API module and the tests judge a
question and an answer the same way:

- a question is checked whole before anything is stored (`parse_question`): its text, its
  type, options only for the choice types (2 to 20 distinct, non-blank), a bounded context,
  and the daemon its answer goes to by the daemon id rule (`app.domain.daemon_ids`), the one
  the command feed reads that daemon's commands by;
- an answer is checked against the question's type (`parse_answer`) and normalised, so the
  same answer sent twice compares equal (`same_answer`: a multiple choice in any order);
- asking again with the same question id is the same question only with the same content
  (`QuestionDraft.differences`); where it came from (task, daemon) is routing, not content;
- what a question does to its contract (`status_after_asking`, `resumes_after`): an `active`
  contract waits for input (`waiting_for = 'question'`) until its last open question is
  answered or withdrawn; any other open status keeps its status; a closed contract takes no
  more questions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from app.domain.control_characters import is_blank
from app.domain.daemon_ids import MAX_DAEMON_ID, daemon_id_refusal
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status, WaitingFor

MAX_QUESTION: Final = 4000
MAX_CONTEXT: Final = 8000
MIN_OPTIONS: Final = 2
MAX_OPTIONS: Final = 20
MAX_OPTION: Final = 500
MAX_FREE_TEXT_ANSWER: Final = 10_000
MAX_REASON: Final = 2000

# Who may do what with a question (the values of `app.auth.Role`): the asking side is the
# supervisor (a daemon acting for the owner) or an operator; a question exists so that a
# person decides, so only a person answers.
ASKING_ROLES: Final = ("supervisor", "admin")
ANSWERING_ROLES: Final = ("user", "admin")


class QuestionType(StrEnum):
    FREE_TEXT = "free_text"
    SINGLE_CHOICE = "single_choice"
    MULTIPLE_CHOICE = "multiple_choice"
    CONFIRMATION = "confirmation"

    @property
    def has_options(self) -> bool:
        return self in (QuestionType.SINGLE_CHOICE, QuestionType.MULTIPLE_CHOICE)


class QuestionStatus(StrEnum):
    """`open` until answered (once) or cancelled (withdrawn, or its contract closed)."""

    OPEN = "open"
    ANSWERED = "answered"
    CANCELLED = "cancelled"


# What an answer is, per type: free_text and single_choice a string, multiple_choice a list of
# strings (kept in the options' order), confirmation a boolean.
Answer = str | list[str] | bool

_TYPES: Final = [t.value for t in QuestionType]


@dataclass(frozen=True, slots=True)
class QuestionDraft:
    """A question as asked, checked: what is stored and compared when it is asked again."""

    question: str
    type: QuestionType
    options: tuple[str, ...] = ()
    context: str | None = None
    task_id: uuid.UUID | None = None
    daemon_id: str | None = None

    def differences(
        self, question: str, type_: str, options: Sequence[str], context: str | None
    ) -> list[str]:
        """The content fields (camelCase) in which a stored question differs from this one.

        Empty means the same question. `taskId` and `daemonId` say where the question came
        from and where its answer goes, not what it asks, so they are not compared.
        """
        stored = {"question": question, "type": type_, "options": tuple(options), "context": context}
        given = {
            "question": self.question,
            "type": self.type.value,
            "options": self.options,
            "context": self.context,
        }
        return [name for name in stored if stored[name] != given[name]]


def _refuse(field: str, message: str, missing: bool = False, **details: Any) -> ValidationFailed:
    return ValidationFailed(message, missing=[field] if missing else [], details={"field": field, **details})


def _text(value: object, field: str, limit: int, *, required: bool) -> str | None:
    """A string of 1..limit characters with something besides blanks in it, and no NUL."""
    if value is None:
        if required:
            raise _refuse(field, f"A question needs '{field}'.", missing=True)
        return None
    if not isinstance(value, str):
        raise _refuse(field, f"'{field}' must be a string; got {type(value).__name__}.")
    if is_blank(value):
        raise _refuse(
            field, f"'{field}' must not be empty or only blanks (spaces, zero-width characters).", limit=limit
        )
    if len(value) > limit:
        raise _refuse(
            field, f"'{field}' may have at most {limit} characters; it has {len(value)}.", limit=limit
        )
    if "\x00" in value:
        raise _refuse(field, f"'{field}' must not contain NUL (\\u0000) characters.")
    return value


def _daemon_id(value: object) -> str | None:
    """The daemon an answer is sent to, by the feed's rule and in its words.

    The answer is queued as a command on this daemon's feed, so an id the feed refuses (a
    newline, another control character, U+FFFD) would queue an answer no daemon can read.
    """
    if value is None:
        return None
    refusal = daemon_id_refusal(value, "daemonId")
    if refusal is not None:
        raise _refuse("daemonId", refusal, limit=MAX_DAEMON_ID)
    assert isinstance(value, str)
    return value


def parse_type(value: object) -> QuestionType:
    """A question type by name, or VALIDATION_FAILED listing the types."""
    if value is None:
        raise _refuse(
            "type", f"A question needs 'type': one of {', '.join(_TYPES)}.", missing=True, allowed=_TYPES
        )
    if isinstance(value, str) and value in _TYPES:
        return QuestionType(value)
    given = repr(value)[:100] if isinstance(value, str) else type(value).__name__
    raise _refuse(
        "type", f"A question's type must be one of: {', '.join(_TYPES)}; got {given}.", allowed=_TYPES
    )


def _options(type_: QuestionType, raw: object) -> tuple[str, ...]:
    given = [] if raw is None else raw
    if not isinstance(given, list | tuple):
        raise _refuse("options", f"'options' must be a list of strings; got {type(raw).__name__}.")
    if not type_.has_options:
        if given:
            raise _refuse(
                "options",
                f"A {type_.value} question takes no options; only single_choice and multiple_choice "
                "questions have them.",
                type=type_.value,
            )
        return ()
    if not MIN_OPTIONS <= len(given) <= MAX_OPTIONS:
        raise _refuse(
            "options",
            f"A {type_.value} question needs {MIN_OPTIONS} to {MAX_OPTIONS} options; it has {len(given)}.",
            missing=not given,
            type=type_.value,
            min=MIN_OPTIONS,
            max=MAX_OPTIONS,
            count=len(given),
        )
    seen: set[str] = set()
    for index, option in enumerate(given):
        label = f"options[{index}]"
        if not isinstance(option, str):
            raise _refuse("options", f"{label} must be a string; got {type(option).__name__}.", index=index)
        problem = None
        if is_blank(option):
            problem = "is empty or only blanks (spaces, zero-width characters)"
        elif len(option) > MAX_OPTION:
            problem = f"has {len(option)} characters"
        elif "\x00" in option:
            problem = "contains a NUL (\\u0000) character"
        if problem is not None:
            raise _refuse(
                "options",
                f"{label} {problem}; an option has 1 to {MAX_OPTION} characters, not only blanks, no NUL.",
                index=index,
                limit=MAX_OPTION,
            )
        if option in seen:
            raise _refuse(
                "options", f"{label} repeats the option {option!r}; options must be distinct.", index=index
            )
        seen.add(option)
    return tuple(given)


def parse_question(
    question: object,
    type_: object,
    *,
    options: object = None,
    context: object = None,
    task_id: uuid.UUID | None = None,
    daemon_id: object = None,
) -> QuestionDraft:
    """A question as a daemon sends it → `QuestionDraft`, or VALIDATION_FAILED naming the field."""
    text = _text(question, "question", MAX_QUESTION, required=True)
    assert text is not None
    kind = parse_type(type_)
    return QuestionDraft(
        question=text,
        type=kind,
        options=_options(kind, options),
        context=_text(context, "context", MAX_CONTEXT, required=False),
        task_id=task_id,
        daemon_id=_daemon_id(daemon_id),
    )


def _wrong_answer(type_: QuestionType, options: Sequence[str], problem: str) -> ValidationFailed:
    expected = {
        QuestionType.FREE_TEXT: f"a string of 1 to {MAX_FREE_TEXT_ANSWER} characters",
        QuestionType.SINGLE_CHOICE: "one of the options, as a string",
        QuestionType.MULTIPLE_CHOICE: "a list of one or more distinct options",
        QuestionType.CONFIRMATION: "true or false",
    }[type_]
    details: dict[str, Any] = {"field": "answer", "type": type_.value, "expected": expected}
    if type_.has_options:
        details["allowed"] = list(options)
    allowed = f" Options: {', '.join(repr(o) for o in options)}." if type_.has_options else ""
    return ValidationFailed(
        f"A {type_.value} question's answer is {expected}: {problem}.{allowed}", details=details
    )


def parse_answer(type_: QuestionType, options: Sequence[str], answer: object) -> Answer:
    """An answer checked against its question, normalised (a multiple choice in the options' order)."""
    if type_ is QuestionType.CONFIRMATION:
        if not isinstance(answer, bool):
            raise _wrong_answer(type_, options, f"got {answer!r}")
        return answer
    if type_ is QuestionType.FREE_TEXT:
        if not isinstance(answer, str):
            raise _wrong_answer(type_, options, f"got {type(answer).__name__}")
        if is_blank(answer):
            raise _wrong_answer(type_, options, "it is empty or only blanks (spaces, zero-width characters)")
        if len(answer) > MAX_FREE_TEXT_ANSWER:
            raise _wrong_answer(type_, options, f"it has {len(answer)} characters")
        if "\x00" in answer:
            raise _wrong_answer(type_, options, "it contains a NUL (\\u0000) character")
        return answer
    if type_ is QuestionType.SINGLE_CHOICE:
        if not isinstance(answer, str) or answer not in options:
            given = repr(answer) if isinstance(answer, str) else type(answer).__name__
            raise _wrong_answer(type_, options, f"got {given[:200]}")
        return answer
    if not isinstance(answer, list) or not answer:
        given = "an empty list" if answer == [] else type(answer).__name__
        raise _wrong_answer(type_, options, f"got {given}")
    unknown = [a for a in answer if not isinstance(a, str) or a not in options]
    if unknown:
        raise _wrong_answer(type_, options, f"{str(unknown[0])[:200]!r} is not one of them")
    if len(set(answer)) != len(answer):
        raise _wrong_answer(type_, options, "an option is named twice")
    chosen = set(answer)
    return [o for o in options if o in chosen]


def same_answer(stored: object, given: Answer) -> bool:
    """Whether a normalised answer is the one stored (`True` is not `1`, nor `"true"`)."""
    return type(stored) is type(given) and stored == given


def status_after_asking(status: Status) -> Status | None:
    """The status a question moves its contract to; None when the status stays.

    An `active` contract waits for the answer; one already waiting, or not running
    (`created`, `paused`, `blocked`, `completing`), keeps its status and the question is
    recorded. A closed contract (`completed`, `failed`, `archived`) takes no more questions.
    """
    if status in Status.terminal():
        raise ValidationFailed(
            f"The contract is '{status.value}': no more questions can be asked on it.",
            details={"status": status.value},
        )
    return Status.WAITING_FOR_INPUT if status is Status.ACTIVE else None


def resumes_after(status: Status, waiting_for: str | None, still_open: int) -> bool:
    """Whether answering (or withdrawing) a question returns the contract to `active`.

    Only when no question is left open and the contract waits for a question: a contract
    waiting for a phase or completion confirmation, or paused meanwhile, stays as it is.
    """
    return still_open == 0 and status is Status.WAITING_FOR_INPUT and waiting_for == WaitingFor.QUESTION.value


__all__ = [
    "ANSWERING_ROLES",
    "ASKING_ROLES",
    "MAX_CONTEXT",
    "MAX_FREE_TEXT_ANSWER",
    "MAX_OPTION",
    "MAX_OPTIONS",
    "MAX_QUESTION",
    "MAX_REASON",
    "MIN_OPTIONS",
    "Answer",
    "QuestionDraft",
    "QuestionStatus",
    "QuestionType",
    "is_blank",
    "parse_answer",
    "parse_question",
    "parse_type",
    "resumes_after",
    "same_answer",
    "status_after_asking",
]
