"""The messages daemons and the API send through the broker, and how a worker checks them.

Each message names the principal that sent it; the worker reloads that principal and
applies the same visibility rule as HTTP before touching anything. A message that fails
validation or the check raises `MessageRejected`, which the worker turns into a dead letter.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from sqlalchemy.orm import Session

from app.auth import Caller, InvalidPrincipal, check_principal


class MessageRejected(Exception):
    """The message cannot be applied as sent; retrying it unchanged will never help."""


class Message(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    message_id: str = Field(min_length=1, max_length=200)
    principal_id: uuid.UUID
    contract_id: uuid.UUID


class TaskStarted(Message):
    task_id: uuid.UUID
    task_name: str = Field(min_length=1, max_length=500)
    is_supervisor: bool = False


class TaskCompleted(Message):
    task_id: uuid.UUID
    task_name: str = Field(min_length=1, max_length=500)
    success: bool


class DeliverableMarked(Message):
    deliverable_id: str = Field(min_length=1, max_length=200)
    phase: str | None = None


class CompletionCheck(Message):
    """A daemon asking for the gate to be judged now; carries only who asks and for what."""


class WorktreeCreated(Message):
    path: str = Field(min_length=1)
    daemon_id: str | None = Field(default=None, min_length=1, max_length=200)


class WorktreeRemoved(Message):
    path: str = Field(min_length=1)
    daemon_id: str | None = Field(default=None, min_length=1, max_length=200)


class ContractRef(BaseModel):
    """Internal follow-ups (evaluate, finalize) name only the contract: the service acts."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    contract_id: uuid.UUID


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
        )
        raise MessageRejected(f"{model.__name__} message is not valid: {problems}") from None


def caller_of(session: Session, message: Message) -> Caller:
    """The sender, re-checked as it is now: a message whose sender no longer exists, or has
    no live token (every one revoked or expired since it sent), acts for nobody.

    Raising `MessageRejected` parks the message as a dead letter with the reason; the check
    is at most `PRINCIPAL_CACHE_SECONDS` stale (`app.auth.check_principal`).
    """
    try:
        return check_principal(session, message.principal_id)
    except InvalidPrincipal as exc:
        raise MessageRejected(f"{exc}; the message acts for nobody") from None


__all__ = [
    "CompletionCheck",
    "ContractRef",
    "DeliverableMarked",
    "Message",
    "MessageRejected",
    "TaskCompleted",
    "TaskStarted",
    "WorktreeCreated",
    "WorktreeRemoved",
    "caller_of",
    "decode",
]
