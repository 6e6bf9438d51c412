"""The request bodies the HTTP front accepts: strict, camelCase, nothing unknown.

Why strict at the edge: a client bug (`"true"` for a boolean, a misspelt field) should be a
422 that names the field, not something the service silently takes to mean something else.
The answers live in `app.schemas`; these classes describe only what callers send.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from app.domain.lifecycle import Status, WaitingFor
from app.domain.phases import contract_type_names
from app.domain.uuids import uuid_problem

MAX_TEXT: Final = 10_000


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold U+0000; refuse it here, where the field can be named."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]


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
    name: SafeStr = Field(min_length=1, max_length=500, description="What the contract is for.")
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
    task_name: SafeStr = Field(min_length=1, max_length=500)
    is_supervisor: bool = Field(False, description="A supervisor starting makes a 'created' contract active.")
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class TaskCompletedRequest(_Body):
    task_name: SafeStr = Field(min_length=1, max_length=500)
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
    "AutoCompleteRequest",
    "ChangePhaseRequest",
    "ChangeStatusRequest",
    "CompleteDeliverableRequest",
    "CreateContractRequest",
    "SafeStr",
    "TaskCompletedRequest",
    "TaskStartedRequest",
    "UUIDText",
    "WorktreeCreatedRequest",
    "WorktreeRemovedRequest",
]
