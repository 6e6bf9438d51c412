"""What the sender of a dead-lettered report reads as its refusal (`GET /messages/{id}`)."""

from __future__ import annotations

from app.dead_letters import INTERNAL_REFUSAL, RejectedMessage, _refusal


def rejected(error: str, code: str | None) -> RejectedMessage:
    return RejectedMessage(
        "contracts", "contracts.task_completed", "t-1", None, "{}", None, None, error, error_code=code
    )


def test_a_refusal_the_sender_can_act_on_reads_as_the_worker_wrote_it() -> None:
    message = "VALIDATION_FAILED: taskName must not be blank: a task name is 1 to 500 characters."
    assert _refusal(rejected(message, "VALIDATION_FAILED")) == (
        "VALIDATION_FAILED",
        "taskName must not be blank: a task name is 1 to 500 characters.",
    )


def test_an_internal_failure_tells_the_sender_what_happened_not_the_exception_text() -> None:
    """The exception's words (here a driver's, naming the host and the SQL) stay in the dead
    letter for the operators."""
    error = (
        'OperationalError: (psycopg2.OperationalError) connection to server at "db.internal" '
        "(10.0.3.7), port 5432 failed\n[SQL: UPDATE contracts SET ...]\n"
        "Traceback (most recent call last): ..."
    )
    code, message = _refusal(rejected(error, "INTERNAL_ERROR"))
    assert (code, message) == ("INTERNAL_ERROR", INTERNAL_REFUSAL)
    assert "db.internal" not in message and "SQL" not in message
