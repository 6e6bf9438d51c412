"""Questions a supervisor asks a person, as pure rules (app/domain/questions.py).

- A question has a non-blank text of at most 4000 characters and one of four types; only
  `single_choice` and `multiple_choice` take options (2 to 20, distinct, non-blank, at most
  500 characters each); a context is at most 8000 characters; the daemon an answer goes to
  is named by the command feed's daemon id rule. Each refusal is VALIDATION_FAILED naming the
  field and what is allowed.
- An answer fits its question's type: free text 1..10000 characters, one option, a non-empty
  list of distinct options (normalised to the options' order), or a boolean.
- The same question id is the same question only with the same content; the same answer is
  the same answer whatever the order of a multiple choice, and `true` is not `1`.
- An `active` contract waits for the answer; others keep their status; a closed contract takes
  no question. The last open question answered returns a contract waiting for a question to
  `active`, and nothing else does.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.daemon_commands import check_daemon_id
from app.domain.daemon_ids import DAEMON_ID_RULE
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status, WaitingFor
from app.domain.questions import (
    MAX_CONTEXT,
    MAX_FREE_TEXT_ANSWER,
    MAX_OPTION,
    MAX_OPTIONS,
    MAX_QUESTION,
    QuestionType,
    parse_answer,
    parse_question,
    resumes_after,
    same_answer,
    status_after_asking,
)

COLOURS = ["red", "green", "blue"]
T = QuestionType


def refused(call: Any, *args: Any, **kwargs: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        call(*args, **kwargs)
    return caught.value


# --- asking -------------------------------------------------------------------------------------


def test_a_well_formed_question_of_each_type_is_kept_as_asked() -> None:
    task = uuid.uuid4()
    draft = parse_question(
        "Which colour?", "single_choice", options=COLOURS, context="the logo", task_id=task, daemon_id="d-1"
    )
    assert (draft.question, draft.type, draft.options, draft.context) == (
        "Which colour?",
        T.SINGLE_CHOICE,
        ("red", "green", "blue"),
        "the logo",
    )
    assert (draft.task_id, draft.daemon_id) == (task, "d-1")
    assert parse_question("Ship it?", "confirmation").options == ()
    assert parse_question("Why?", "free_text", options=[]).options == ()
    assert parse_question("Which ones?", "multiple_choice", options=["a", "b"]).type is T.MULTIPLE_CHOICE


@pytest.mark.parametrize(
    ("question", "field", "words"),
    [
        (None, "question", "needs 'question'"),
        ("", "question", "empty"),
        ("   \n", "question", "empty"),
        ("\u200b", "question", "only blanks"),
        ("\ufeff\u00a0\u2060", "question", "only blanks"),
        ("x" * (MAX_QUESTION + 1), "question", f"at most {MAX_QUESTION}"),
        ("a\x00b", "question", "NUL"),
        (42, "question", "must be a string"),
    ],
)
def test_the_question_text_is_required_bounded_and_storable(question: Any, field: str, words: str) -> None:
    error = refused(parse_question, question, "free_text")
    assert error.details["field"] == field
    assert words in error.message


def test_the_longest_question_and_context_are_accepted() -> None:
    draft = parse_question("q" * MAX_QUESTION, "free_text", context="c" * MAX_CONTEXT)
    assert len(draft.question) == MAX_QUESTION and draft.context is not None


def test_an_unknown_type_is_refused_with_the_four_types() -> None:
    for given in ("essay", "FREE_TEXT", 3, None):
        error = refused(parse_question, "q?", given)
        assert error.details["field"] == "type"
        assert error.details["allowed"] == ["free_text", "single_choice", "multiple_choice", "confirmation"]
        assert "free_text, single_choice, multiple_choice, confirmation" in error.message


@pytest.mark.parametrize("kind", ["free_text", "confirmation"])
def test_only_choice_questions_take_options(kind: str) -> None:
    error = refused(parse_question, "q?", kind, options=["yes", "no"])
    assert error.details["field"] == "options"
    assert f"A {kind} question takes no options" in error.message


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (None, "needs 2 to 20 options; it has 0"),
        ([], "needs 2 to 20 options; it has 0"),
        (["only"], "needs 2 to 20 options; it has 1"),
        ([f"o{i}" for i in range(MAX_OPTIONS + 1)], "needs 2 to 20 options; it has 21"),
        (["a", "a"], "options[1] repeats the option 'a'"),
        (["a", " "], "options[1] is empty or only blanks"),
        (["a", "\u200b"], "options[1] is empty or only blanks"),
        (["a", "x" * (MAX_OPTION + 1)], "options[1] has 501 characters; an option has 1 to 500 characters"),
        (["a", "b\x00"], "options[1] contains a NUL"),
        (["a", 2], "options[1] must be a string"),
        ("a,b", "must be a list of strings"),
    ],
)
def test_choice_options_are_two_to_twenty_distinct_non_blank_strings(options: Any, words: str) -> None:
    error = refused(parse_question, "Pick", "single_choice", options=options)
    assert error.details["field"] == "options"
    assert words in error.message


def test_twenty_options_of_five_hundred_characters_are_accepted() -> None:
    options = [f"{i:03d}" + "x" * (MAX_OPTION - 3) for i in range(MAX_OPTIONS)]
    assert len(parse_question("Pick", "multiple_choice", options=options).options) == MAX_OPTIONS


def test_context_and_daemon_id_are_bounded() -> None:
    assert (
        refused(parse_question, "q", "free_text", context="c" * (MAX_CONTEXT + 1)).details["field"]
        == "context"
    )
    assert refused(parse_question, "q", "free_text", daemon_id="d" * 201).details["field"] == "daemonId"
    assert refused(parse_question, "q", "free_text", daemon_id="").details["field"] == "daemonId"


@pytest.mark.parametrize(
    ("daemon_id", "found"),
    [("gpu\n7", "U+000A"), ("gpu\t7", "U+0009"), ("gpu\x1b[2J", "U+001B"), ("gpu\u0085", "U+0085")],
)
def test_a_daemon_id_the_command_feed_refuses_is_refused_in_the_feed_s_words(
    daemon_id: str, found: str
) -> None:
    """The answer is queued on that daemon's feed: an id the feed refuses would queue an answer
    no daemon can read."""
    error = refused(parse_question, "q", "free_text", daemon_id=daemon_id)
    with pytest.raises(ValidationFailed) as feed:
        check_daemon_id(daemon_id)
    words = f"daemonId must not contain NUL or control characters (found {found}): {DAEMON_ID_RULE}."
    assert error.message == feed.value.message == words
    assert error.details == feed.value.details == {"missing": [], "field": "daemonId", "limit": 200}


def test_a_daemon_id_the_command_feed_takes_is_kept_as_given() -> None:
    for daemon_id in ("démon-7", "gpu 7 / 東京", "d" * 200):
        assert parse_question("q", "free_text", daemon_id=daemon_id).daemon_id == daemon_id


def test_the_same_question_id_is_the_same_question_only_with_the_same_content() -> None:
    draft = parse_question("Pick", "single_choice", options=COLOURS, context="logo", task_id=uuid.uuid4())
    assert draft.differences("Pick", "single_choice", COLOURS, "logo") == []
    # Where it came from (task, daemon) is not what it asks.
    assert (
        parse_question("Pick", "single_choice", options=COLOURS, context="logo", daemon_id="d-2").differences(
            "Pick", "single_choice", COLOURS, "logo"
        )
        == []
    )
    assert draft.differences("Pick!", "single_choice", COLOURS, "logo") == ["question"]
    assert draft.differences("Pick", "multiple_choice", COLOURS, "logo") == ["type"]
    assert draft.differences("Pick", "single_choice", ["blue", "green", "red"], "logo") == ["options"]
    assert draft.differences("Pick", "single_choice", COLOURS, None) == ["context"]


# --- answering ----------------------------------------------------------------------------------


def test_free_text_takes_one_to_ten_thousand_characters() -> None:
    assert parse_answer(T.FREE_TEXT, [], "Use PostgreSQL.") == "Use PostgreSQL."
    assert parse_answer(T.FREE_TEXT, [], "x" * MAX_FREE_TEXT_ANSWER) == "x" * MAX_FREE_TEXT_ANSWER
    for wrong, words in [
        ("", "empty"),
        ("  ", "empty"),
        ("\u200b", "only blanks"),
        ("\ufeff ", "only blanks"),
        ("x" * (MAX_FREE_TEXT_ANSWER + 1), "10001 characters"),
        ("a\x00", "NUL"),
        (True, "got bool"),
        (["a"], "got list"),
    ]:
        error = refused(parse_answer, T.FREE_TEXT, [], wrong)
        assert words in error.message
        assert error.details["field"] == "answer" and error.details["type"] == "free_text"


def test_single_choice_takes_one_of_the_options_and_names_them() -> None:
    assert parse_answer(T.SINGLE_CHOICE, COLOURS, "green") == "green"
    for wrong in ("purple", "Green", ["green"], True):
        error = refused(parse_answer, T.SINGLE_CHOICE, COLOURS, wrong)
        assert error.details["allowed"] == COLOURS
        assert "Options: 'red', 'green', 'blue'." in error.message


def test_multiple_choice_takes_distinct_options_kept_in_the_options_order() -> None:
    assert parse_answer(T.MULTIPLE_CHOICE, COLOURS, ["blue", "red"]) == ["red", "blue"]
    assert parse_answer(T.MULTIPLE_CHOICE, COLOURS, ["green"]) == ["green"]
    for wrong, words in [
        ([], "got an empty list"),
        ("red", "got str"),
        (["red", "red"], "named twice"),
        (["red", "pink"], "'pink' is not one of them"),
        (["red", 1], "'1' is not one of them"),
    ]:
        error = refused(parse_answer, T.MULTIPLE_CHOICE, COLOURS, wrong)
        assert words in error.message
        assert error.details["allowed"] == COLOURS


def test_confirmation_takes_a_boolean_only() -> None:
    assert parse_answer(T.CONFIRMATION, [], True) is True
    assert parse_answer(T.CONFIRMATION, [], False) is False
    for wrong in ("yes", 1, 0, None, "true"):
        error = refused(parse_answer, T.CONFIRMATION, [], wrong)
        assert "true or false" in error.message


def test_the_same_answer_is_the_same_whatever_the_order_and_never_by_loose_equality() -> None:
    first = parse_answer(T.MULTIPLE_CHOICE, COLOURS, ["blue", "red"])
    assert same_answer(first, parse_answer(T.MULTIPLE_CHOICE, COLOURS, ["red", "blue"]))
    assert not same_answer(first, parse_answer(T.MULTIPLE_CHOICE, COLOURS, ["red"]))
    assert same_answer(True, True) and not same_answer(True, False)
    assert not same_answer(1, True) and not same_answer("True", True)
    assert same_answer("green", "green") and not same_answer("green", "red")


# --- what a question does to its contract ---------------------------------------------------------


def test_asking_makes_an_active_contract_wait_and_leaves_other_open_statuses_alone() -> None:
    assert status_after_asking(Status.ACTIVE) is Status.WAITING_FOR_INPUT
    for status in (
        Status.WAITING_FOR_INPUT,
        Status.CREATED,
        Status.PAUSED,
        Status.BLOCKED,
        Status.COMPLETING,
    ):
        assert status_after_asking(status) is None, status


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.ARCHIVED])
def test_a_closed_contract_takes_no_question(status: Status) -> None:
    error = refused(status_after_asking, status)
    assert error.details["status"] == status.value
    assert f"The contract is '{status.value}'" in error.message


def test_only_the_last_open_question_of_a_question_wait_resumes_the_contract() -> None:
    waiting, question = Status.WAITING_FOR_INPUT, WaitingFor.QUESTION.value
    assert resumes_after(waiting, question, 0)
    assert not resumes_after(waiting, question, 1)
    assert not resumes_after(waiting, WaitingFor.PHASE_CONFIRMATION.value, 0)
    assert not resumes_after(waiting, WaitingFor.COMPLETION_CONFIRMATION.value, 0)
    for status in (Status.PAUSED, Status.ACTIVE, Status.BLOCKED):
        assert not resumes_after(status, None, 0), status
