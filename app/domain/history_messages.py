"""A supervisor's conversation, one message at a time: its shape on the wire and in storage.

A save appends messages to the stored history (`historyAppend`), the history rows keep each
one as sent, and a restoration hands them back to the daemon's model client: all three read a
message through `parse_message`, so a stored row is judged by the rule it was accepted under,
and the HTTP front's schema asks `message_time` for a message's `at` so it refuses what a
save would, in the same words. Stdlib only, like all of `app.domain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from app.domain.state_values import (
    MAX_CONTENT,
    MAX_MESSAGE_NAME,
    MAX_TOOL_CALL_ID,
    InvalidValue,
    refuse_unknown_fields,
    text_value,
    time_value,
)

ROLES: Final = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS: Final = frozenset({"role", "content", "name", "toolCallId", "at"})


def message_time(raw: Any, name: str = "at") -> datetime:
    """A message's `at` by the save's rule (`time_value`), in UTC, else `InvalidValue` naming
    `name`: the HTTP front's schema asks this too, so it refuses what a save would, in the same
    words."""
    return time_value(raw, name)


@dataclass(frozen=True, slots=True)
class Message:
    """One conversation message, as the daemon's model client knows it."""

    role: str
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The stored and wire form (camelCase); `parse_message(m.to_json()) == m`."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["toolCallId"] = self.tool_call_id
        if self.at is not None:
            out["at"] = self.at.isoformat()
        return out


def parse_message(raw: Any, where: str = "message") -> Message:
    """A message as sent or stored → `Message`, or `InvalidValue` naming the field."""
    if not isinstance(raw, Mapping):
        raise InvalidValue(where, "must be a JSON object {role, content, name?, toolCallId?, at?}")
    refuse_unknown_fields(raw, MESSAGE_FIELDS, where)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidValue(f"{where}.role", f"must be one of: {', '.join(ROLES)}")
    if raw.get("content") is None:
        raise InvalidValue(f"{where}.content", "is required")
    content = text_value(raw["content"], f"{where}.content", MAX_CONTENT)
    name = raw.get("name")
    if name is not None:
        name = text_value(name, f"{where}.name", MAX_MESSAGE_NAME, empty=False)
    tool_call_id = raw.get("toolCallId")
    if tool_call_id is not None:
        tool_call_id = text_value(tool_call_id, f"{where}.toolCallId", MAX_TOOL_CALL_ID, empty=False)
    at = raw.get("at")
    return Message(
        role=str(role),
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        at=time_value(at, f"{where}.at") if at is not None else None,
    )


__all__ = [
    "ROLES",
    "Message",
    "message_time",
    "parse_message",
]
