"""The request bodies the HTTP front accepts: strict, camelCase, nothing unknown.

Why strict at the edge: a client bug (`"true"` for a boolean, a misspelt field) should be a
422 that names the field, not something the service silently takes to mean something else.
The answers live in `app.schemas`; these classes describe only what callers send.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from app.domain.history_messages import message_time
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phases import contract_type_names
from app.domain.reported_text import (
    CONTRACT_NAME_RULE,
    MAX_CONTRACT_NAME,
    MAX_TASK_NAME,
    TASK_NAME_RULE,
    name_characters_problem,
)
from app.domain.state_values import InvalidValue
from app.domain.uuids import uuid_problem

MAX_TEXT: Final = 10_000

# How a schema problem names a NUL, wherever text may not hold one.
NUL_PROBLEM: Final = "must not contain NUL (U+0000): PostgreSQL text cannot hold it"


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold U+0000; refuse it here, where the field can be named, as a
    problem of its own type (`nul_character`) saying which character, not pydantic's generic
    "Value error"."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", NUL_PROBLEM)
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]


def _answer_without_nul(value: object) -> object:
    """A question's answer (text, a list of texts or a boolean) holds no NUL.

    Checked on the whole answer after its shape, not inside each member of the union: a NUL
    refused by the string member made every member fail, and the caller was told the answer
    "must be a string, a list of strings or a boolean" when it was a string."""
    texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    for index, text in enumerate(texts):
        if isinstance(text, str) and "\x00" in text:
            where = "" if isinstance(value, str) else f" (in item {index})"
            raise PydanticCustomError("nul_character", NUL_PROBLEM + where)
    return value


# A question's answer: its shapes as the union says, a NUL refused as a NUL.
AnswerValue = Annotated[str | list[str] | bool, AfterValidator(_answer_without_nul)]


def _shown_name(rule: str) -> Callable[[str], str]:
    """The check of a name shown as sent (`name_characters_problem` under `rule`): a 422 problem
    of type `one_line_text` naming the character found (U+202E, U+000A) and what a name may
    hold. A name of blanks alone passes here: the API module refuses it (`name_problem`) with
    the VALIDATION_FAILED a Python caller gets for it too."""

    def check(value: str) -> str:
        problem = name_characters_problem(value, rule)
        if problem is not None:
            raise PydanticCustomError("one_line_text", problem)
        return value

    return check


# A contract's name and a task's name, bounded and judged by the one-line rule
# (`app.domain.control_characters`): no control character, line separator or bidi control.
ContractName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_CONTRACT_NAME),
    AfterValidator(_shown_name(CONTRACT_NAME_RULE)),
]
TaskName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TASK_NAME),
    AfterValidator(_shown_name(TASK_NAME_RULE)),
]


def _message_time(value: object) -> object:
    """A message's `at` by the save's rule (`message_time`): an ISO 8601 date-time with Z or
    an offset. The strict body models refused every string for a datetime ("Input should be a
    valid datetime", a time zone or not), so this reads the text, and one without a time zone
    is told it has none."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return message_time(value)
    except InvalidValue as exc:
        raise PydanticCustomError("datetime_form", exc.problem) from None


# A message's time: read by `_message_time`, lax so the datetime it returns is taken as is.
MessageTime = Annotated[datetime, BeforeValidator(_message_time), Field(strict=False)]


def _uuid_text(value: object) -> object:
    """An id by the heartbeat's rule (`uuid_problem`): pydantic's UUID also reads braces and a
    urn:uuid: prefix, so a task had spellings here that a heartbeat naming it is refused for."""
    problem = uuid_problem(value)
    if problem is not None:
        raise PydanticCustomError("uuid_form", problem)
    return value


# An id in a body, a query or a path: a 422 problem of type `uuid_form` naming the field and the
# form, like a heartbeat's refusal (lax, so the JSON string is read as a UUID once it passed).
UUIDText = Annotated[uuid.UUID, BeforeValidator(_uuid_text), Field(strict=False)]


class _Body(BaseModel):
    """Request bodies: camelCase on the wire, snake_case accepted too, nothing unknown.

    `strict` refuses coercions such as "true" for a boolean or "5" for a number, so a client
    bug surfaces as a 422 instead of silently meaning something. Enum fields opt back into lax
    mode (`Field(strict=False)`) because strict Python validation would refuse their JSON
    string values. `validate_by_name` + `validate_by_alias` is pydantic 2.11's spelling of
    `populate_by_name=True`.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
    )


class CreateContractRequest(_Body):
    name: ContractName = Field(description="What the contract is for, on one line.")
    contract_type: SafeStr = Field(
        min_length=1,
        max_length=100,
        description=f"A known type ({', '.join(contract_type_names())}), or any name when the "
        "contract brings its own phaseConfig.",
    )
    phase_guard: bool = Field(False, description="Every phase change then needs confirmed=true.")
    auto_complete_enabled: bool | None = Field(
        None, description="Defaults to the server's [contracts] auto_complete_enabled."
    )
    phase_config: dict[str, Any] | None = Field(
        None,
        description='The contract\'s own phases: {"phases": [{"id", "name"?, "deliverables": '
        '[{"id", "name"?, "required"?}], "gate"?: {...}}]}; the last phase is terminal.',
    )


class ChangeStatusRequest(_Body):
    target_status: Annotated[Status, Field(strict=False)]
    reason: SafeStr | None = Field(None, max_length=MAX_TEXT, description="Required to move to 'failed'.")
    blocker: SafeStr | None = Field(None, max_length=MAX_TEXT, description="Required to move to 'blocked'.")
    waiting_for: Annotated[WaitingFor | None, Field(strict=False)] = Field(
        None, description="For 'waiting_for_input' (default 'question')."
    )


class ChangePhaseRequest(_Body):
    phase: SafeStr = Field(min_length=1, max_length=100, description="The phase to move to.")
    expected_version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="The version you read; a different current version answers 409 VERSION_CONFLICT.",
    )
    confirmed: bool = Field(False, description="A person confirmed the move (needed under phaseGuard).")
    force: bool = Field(False, description="Move even though the gate is unmet or the phase is not next.")


class CompleteDeliverableRequest(_Body):
    phase: SafeStr | None = Field(
        None, max_length=100, description="Defaults to the contract's current phase."
    )


class AutoCompleteRequest(_Body):
    enabled: bool


class TaskStartedRequest(_Body):
    task_name: TaskName
    is_supervisor: bool = Field(False, description="A supervisor starting makes a 'created' contract active.")
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class TaskCompletedRequest(_Body):
    task_name: TaskName
    success: bool
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class WorktreeCreatedRequest(_Body):
    path: SafeStr = Field(min_length=1, max_length=4096)
    daemon_id: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The daemon holding it (as in its heartbeats): commands about it go to its queue.",
    )
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class WorktreeRemovedRequest(_Body):
    path: SafeStr = Field(min_length=1, max_length=4096, description="The path as reported created.")
    daemon_id: SafeStr | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The daemon that removed it; needed only when two daemons hold the same path.",
    )
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


__all__ = [
    "NUL_PROBLEM",
    "AnswerValue",
    "AutoCompleteRequest",
    "ChangePhaseRequest",
    "ChangeStatusRequest",
    "CompleteDeliverableRequest",
    "ContractName",
    "CreateContractRequest",
    "MessageTime",
    "SafeStr",
    "TaskCompletedRequest",
    "TaskName",
    "TaskStartedRequest",
    "UUIDText",
    "WorktreeCreatedRequest",
    "WorktreeRemovedRequest",
]
