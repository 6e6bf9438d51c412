"""The values a supervisor's save holds: their bounds and the one check of each kind.

A save (`app.domain.state_saves`), its history messages (`app.domain.history_messages`) and a
stored snapshot read back (`app.domain.state_snapshots`) hold the same kinds of value (a text
of bounded length, a whole number in a range, task ids, a time, a supervisor state), and each
kind is judged once, here, so a value a save is refused for is refused in the same words when
it comes back from storage. A refused value is `InvalidValue`, naming the field and the bound it
broke; a front turns it into `ValidationFailed`. Stdlib only, like all of `app.domain`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from app.domain.control_characters import one_line_problem
from app.domain.daemon_ids import MAX_DAEMON_ID, daemon_id_problem
from app.domain.errors import ValidationFailed
from app.domain.reported_text import MAX_HOST, host_problem
from app.domain.supervisors import SupervisorState
from app.domain.timestamps import EARLIEST, LATEST
from app.domain.uuids import parse_uuid

# Bounds of one save (a request body is at most 1 MiB anyway; these keep each part honest).
MAX_TASK_IDS: Final = 1000
MAX_APPEND: Final = 200
MAX_CONTENT: Final = 65_536
MAX_MESSAGE_NAME: Final = 200
MAX_TOOL_CALL_ID: Final = 200
MAX_CHECKPOINT_ID: Final = 200
MAX_NOTE: Final = 2000
MAX_ERROR: Final = 10_000
MAX_STATE_VERSION: Final = 2**63 - 1
MAX_HISTORY_POSITION: Final = 2**31 - 1
# The form a message's `at` (and a stored snapshot's `savedAt`) takes, in the words its
# refusals end with.
TIME_FORM: Final = (
    "an ISO 8601 date-time with a time zone: Z or an offset from UTC (+HH:MM or -HH:MM), for "
    "example 2026-01-31T10:30:00Z or 2026-01-31T12:30:00+02:00"
)


class InvalidValue(ValueError):
    """One value cannot be accepted; `field` names it, `limit` is the bound it broke, if any."""

    def __init__(self, field_name: str, problem: str, limit: int | None = None) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem
        self.limit = limit

    def as_validation_failed(self) -> ValidationFailed:
        details: dict[str, Any] = {"field": self.field, "problem": self.problem}
        if self.limit is not None:
            details["limit"] = self.limit
        return ValidationFailed(f"{self.field}: {self.problem}.", details=details)


def text_value(raw: Any, name: str, limit: int, *, empty: bool = True, one_line: str | None = None) -> str:
    """A text field of a save. `one_line`: the rule of a field shown on one line as sent (a
    phase, an activity: `PHASE_RULE`, `ACTIVITY_RULE`), so no control character, line
    separator or bidirectional control, the heartbeat's rule for the same fields; a refusal
    names the character found and ends with the rule. A character is looked for before
    blankness, so a phase of a tab alone is refused for the tab."""
    if not isinstance(raw, str):
        raise InvalidValue(name, "must be a string")
    if one_line is not None and (problem := one_line_problem(raw)) is not None:
        raise InvalidValue(name, f"{problem}: {one_line}")
    if not empty and not raw.strip():
        raise InvalidValue(name, "must not be empty")
    if len(raw) > limit:
        raise InvalidValue(name, f"at most {limit} characters (this one has {len(raw)})", limit)
    if "\x00" in raw:
        raise InvalidValue(name, "must not contain NUL (U+0000): PostgreSQL text cannot hold it")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(name, "must be valid Unicode (no lone surrogates)") from None
    return raw


def daemon_id_value(raw: Any) -> str:
    """A save's daemon id, by the feed's and the heartbeat's rule (`daemon_id_problem`): a
    restoration or restart addresses commands to it."""
    problem = daemon_id_problem(raw)
    if problem is not None:
        raise InvalidValue("daemonId", problem, MAX_DAEMON_ID)
    return str(raw)


def host_value(raw: Any) -> str:
    """A daemon's host, by the heartbeat's rule (`host_problem`): a host a save or a claim
    stores is shown where a heartbeat's is, so neither may take one the other refuses."""
    problem = host_problem(raw)
    if problem is not None:
        too_long = isinstance(raw, str) and len(raw) > MAX_HOST
        raise InvalidValue("host", problem, MAX_HOST if too_long else None)
    return str(raw)


def check_host(raw: Any) -> str:
    """A restoration's `host` (`host_value`'s rule), else `ValidationFailed` naming the field."""
    try:
        return host_value(raw)
    except InvalidValue as exc:
        raise exc.as_validation_failed() from None


def whole_number(raw: Any, name: str, low: int, high: int) -> int:
    """A count, a version or a position: a bool is refused though Python counts it an int."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidValue(name, f"must be a whole number from {low} to {high}")
    if not low <= raw <= high:
        raise InvalidValue(name, f"must be from {low} to {high} (got {raw})")
    return raw


def uuid_value(raw: Any, name: str) -> uuid.UUID:
    """A task id by the one rule of an id sent as text (`app.domain.uuids`)."""
    return parse_uuid(raw, name, InvalidValue)


def task_id_list(raw: Any, name: str) -> tuple[str, ...]:
    """Task ids as text, each checked and each once (in the order first sent), at most
    `MAX_TASK_IDS`: a restoration compares them with the contract's tasks."""
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise InvalidValue(name, "must be a list of task ids (UUIDs)")
    if len(raw) > MAX_TASK_IDS:
        raise InvalidValue(name, f"at most {MAX_TASK_IDS} task ids (this one has {len(raw)})", MAX_TASK_IDS)
    return tuple(dict.fromkeys(str(uuid_value(item, f"{name}[{i}]")) for i, item in enumerate(raw)))


def time_value(raw: Any, name: str) -> datetime:
    """A message's time or a snapshot's `savedAt`, in UTC. One without a time zone is told
    just that: it names no instant (10:30 where?), and it is not malformed."""
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str) and len(raw) <= 40:
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidValue(name, f"'{raw}' is not {TIME_FORM}") from None
    else:
        raise InvalidValue(name, f"must be a string: {TIME_FORM}")
    if value.tzinfo is None:
        raise InvalidValue(name, f"has no time zone, so it names no instant: send {TIME_FORM}")
    value = value.astimezone(UTC)
    if not EARLIEST <= value < LATEST:
        raise InvalidValue(name, f"must lie between {EARLIEST.year} and {LATEST.year}")
    return value


def state_value(raw: Any, name: str) -> SupervisorState:
    """A supervisor state by name; a refusal lists the states there are."""
    try:
        return SupervisorState(raw)
    except (ValueError, TypeError):
        allowed = ", ".join(s.value for s in SupervisorState)
        shown = str(raw)[:60]
        raise InvalidValue(name, f"'{shown}' is not a supervisor state; one of: {allowed}") from None


def refuse_unknown_fields(raw: Mapping[Any, Any], allowed: frozenset[str], where: str) -> None:
    """An unknown field is refused, never ignored: a misspelt one would be lost in silence."""
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        name = f"{where}.{unknown[0][:60]}" if where else unknown[0][:60]
        raise InvalidValue(name, f"unknown field; allowed: {', '.join(sorted(allowed))}")


__all__ = [
    "MAX_APPEND",
    "MAX_CHECKPOINT_ID",
    "MAX_CONTENT",
    "MAX_ERROR",
    "MAX_HISTORY_POSITION",
    "MAX_MESSAGE_NAME",
    "MAX_NOTE",
    "MAX_STATE_VERSION",
    "MAX_TASK_IDS",
    "MAX_TOOL_CALL_ID",
    "TIME_FORM",
    "InvalidValue",
    "check_host",
    "daemon_id_value",
    "host_value",
    "refuse_unknown_fields",
    "state_value",
    "task_id_list",
    "text_value",
    "time_value",
    "uuid_value",
    "whole_number",
]
