"""Ids sent as text: the one form a task, contract or heartbeat id may take.

Its own module because the rule is everyone's, not the heartbeat's alone: a heartbeat's ids, a
state save's, a restoration's and a restart's task ids, the live monitor's contractIds and every
id in an `/api/v1` path (`app.http.routing`, `app.http.bodies.UUIDText`) are held to it, so one
id has one spelling wherever it is sent. `uuid.UUID` reads far more (braces, `urn:uuid:`,
full-width digits, hyphens anywhere), which no other reader of the same text (PostgreSQL, a
daemon's tools) takes; `uuid_problem` says what is wrong in words that end with `UUID_FORM`,
and `parse_uuid` raises the caller's own error with them.

Pure (stdlib only).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any, Final

from app.domain.errors import ValidationFailed

# What a task, contract or heartbeat id sent as text may be, in the words its refusals end with.
UUID_FORM: Final = (
    "a UUID is 32 hexadecimal digits (0-9, a-f or A-F) grouped 8-4-4-4-12 by hyphens, for "
    "example 123e4567-e89b-42d3-a456-426614174000, or the same 32 digits without hyphens"
)

# ASCII hex digits only, in the two groupings: `uuid.UUID` also reads full-width digits,
# braces, a urn:uuid: prefix, hyphens anywhere, underscores and spaces, so one id had many
# spellings, some of which no other reader (PostgreSQL, a daemon's tools) takes. The pattern is
# public for the HTTP front's path ids (`app.http.routing`), which must match what this takes.
UUID_TEXT_PATTERN: Final = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
_UUID_TEXT: Final = re.compile(UUID_TEXT_PATTERN)


def uuid_problem(value: object) -> str | None:
    """What is wrong with `value` as an id sent as text (a phrase to follow the field's name), or
    None: a `UUID`, or text in `UUID_FORM`, either case.

    The one rule for an id: a heartbeat's (taskId, contractId, id, each of pendingTaskIds), a
    state save's, a restoration's and a restart's task ids, the live monitor's contractIds, and
    the HTTP front's path ids (`app.http.routing`, `app.http.bodies.UUIDText`). Its refusals end
    with `UUID_FORM`.
    """
    if isinstance(value, uuid.UUID):
        return None
    if not isinstance(value, str):
        return f"must be a UUID string: {UUID_FORM}"
    if _UUID_TEXT.fullmatch(value) is None:
        return f"'{value[:60]}' is not a UUID: {UUID_FORM}"
    return None


def parse_uuid(raw: Any, name: str, invalid: Callable[[str, str], Exception]) -> uuid.UUID:
    """An id as sent (or already a `UUID`) by `uuid_problem`'s rule; `invalid(field, problem)`
    is the caller's own error."""
    problem = uuid_problem(raw)
    if problem is not None:
        raise invalid(name, problem)
    return raw if isinstance(raw, uuid.UUID) else uuid.UUID(raw)


def id_argument(value: object, field: str) -> uuid.UUID:
    """An id a Python caller passed (the API module, the CLI): a `UUID`, or its text by the
    heartbeats' rule; anything else is `VALIDATION_FAILED` naming `field`, never a database
    error about a cast."""
    return parse_uuid(
        value, field, lambda name, problem: ValidationFailed(f"{name} {problem}", details={"field": name})
    )


__all__ = ["UUID_FORM", "UUID_TEXT_PATTERN", "id_argument", "parse_uuid", "uuid_problem"]
