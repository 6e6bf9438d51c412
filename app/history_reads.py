"""Reading a supervisor's stored conversation: a page, a window bounded in bytes, the newest messages.

The history is one row per message in `supervisor_conversation` (`seq` from 0), and any of it
may be large: an answer is bounded by count and by size (`HISTORY_BYTES`) and says where to
read on, the rows are streamed rather than loaded whole, and a damaged row never fails a read
(a message that is not one is listed under `malformed`, a missing one under `missing`). The
history page, a restoration's newest messages (`newest_history`) and a resend's comparison
(`history_rows`) all read it here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.contract_rows import get_contract
from app.domain.history_messages import parse_message
from app.domain.state_values import InvalidValue
from app.models import ConversationMessage
from app.schemas import Schema, Timestamp
from app.state_rows import require_state

MAX_HISTORY_PAGE: Final = 1000
# One answer's history is bounded by size as well as by count: messages are added while their
# stored size (UTF-8 JSON) stays within this, so a page of 1000 messages of 64 Ki characters
# cannot make a 260 MB answer; the answer says where to read on.
HISTORY_BYTES: Final = 4 * 1024 * 1024


class HistoryMessage(Schema):
    """One conversation message at its position."""

    seq: int
    role: str = Field(description="system, user, assistant or tool")
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    at: Timestamp | None = None


class HistoryPage(Schema):
    """A page of the conversation, and where the next one starts."""

    task_id: uuid.UUID
    from_: int = Field(alias="from", description="The position of the first message asked for")
    messages: list[HistoryMessage] = Field(description="In order, only positions below historyLength")
    history_length: int
    missing: list[int] = Field(description="Positions in this page with no stored message")
    malformed: list[int] = Field(description="Positions in this page whose stored row is not a message")
    truncated: bool = Field(
        False,
        description="True when the page stopped early at the size bound (4 MiB of stored messages) "
        "before `limit` messages or the end: read on from `nextFrom`",
    )
    next_from: int | None = Field(
        None, description="Where the next page starts (the `from` to send); null when the history ends here"
    )


def message_view(seq: int, raw: Any) -> HistoryMessage | None:
    """A stored message at its position, or None if the row is not a valid message."""
    try:
        message = parse_message(raw)
    except InvalidValue:
        return None
    return HistoryMessage(
        seq=seq,
        role=message.role,
        content=message.content,
        name=message.name,
        tool_call_id=message.tool_call_id,
        at=message.at,
    )


def history_rows(session: Session, task_id: uuid.UUID, start: int, end: int) -> list[tuple[int, Any]]:
    """(seq, stored message) for positions start ≤ seq < end, in order."""
    if end <= start:
        return []
    rows = session.execute(
        select(ConversationMessage.seq, ConversationMessage.message)
        .where(
            ConversationMessage.task_id == task_id,
            ConversationMessage.seq >= start,
            ConversationMessage.seq < end,
        )
        .order_by(ConversationMessage.seq)
    )
    return [(int(seq), message) for seq, message in rows]


def stored_size(raw: Any) -> int:
    """A stored message's size as an answer carries it (UTF-8 JSON), for the size bound."""
    try:
        return len(json.dumps(raw, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    except (TypeError, ValueError):
        return len(str(raw))


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """Messages read from `start`: the valid ones, the positions missing or malformed, and
    where the next read starts when the size bound stopped it before `end` (else None)."""

    messages: list[HistoryMessage]
    missing: list[int]
    malformed: list[int]
    next_from: int | None = None


def _streamed(session: Session, task_id: uuid.UUID, start: int, end: int, *, newest_first: bool) -> Any:
    order = ConversationMessage.seq.desc() if newest_first else ConversationMessage.seq
    return session.execute(
        select(ConversationMessage.seq, ConversationMessage.message)
        .where(
            ConversationMessage.task_id == task_id,
            ConversationMessage.seq >= start,
            ConversationMessage.seq < end,
        )
        .order_by(order)
        .execution_options(yield_per=100)
    )


def history_window(
    session: Session, task_id: uuid.UUID, start: int, end: int, budget: int = HISTORY_BYTES
) -> HistoryWindow:
    """The messages at start ≤ seq < end, oldest first, streamed: reading stops before the
    message that would take the page past `budget` bytes (one message is always taken)."""
    messages: list[HistoryMessage] = []
    missing: list[int] = []
    malformed: list[int] = []
    expected, used = start, 0
    if end > start:
        for seq, raw in _streamed(session, task_id, start, end, newest_first=False):
            seq = int(seq)
            size = stored_size(raw)
            if used and used + size > budget:
                missing.extend(range(expected, seq))
                return HistoryWindow(messages, missing, malformed, seq)
            used += size
            missing.extend(range(expected, seq))
            expected = seq + 1
            view = message_view(seq, raw)
            if view is None:
                malformed.append(seq)
            else:
                messages.append(view)
    missing.extend(range(expected, end))
    return HistoryWindow(messages, missing, malformed)


def newest_history(
    session: Session, task_id: uuid.UUID, start: int, end: int, budget: int = HISTORY_BYTES
) -> tuple[list[HistoryMessage], int, bool]:
    """The newest messages at start ≤ seq < end that fit in `budget` bytes (at least one), in
    order: (messages, the position they start at, whether the bound cut older ones off)."""
    taken: list[HistoryMessage] = []
    used, first = 0, start
    if end > start:
        for seq, raw in _streamed(session, task_id, start, end, newest_first=True):
            seq = int(seq)
            size = stored_size(raw)
            if used and used + size > budget:
                return list(reversed(taken)), first, True
            used += size
            first = seq
            view = message_view(seq, raw)
            if view is not None:
                taken.append(view)
    return list(reversed(taken)), start, False


def read_history(
    session: Session,
    caller: Caller,
    contract_id: uuid.UUID,
    task_id: uuid.UUID | None,
    start: int,
    limit: int,
) -> HistoryPage:
    """A page of the stored conversation, from position `start`, at most `limit` messages and
    about `HISTORY_BYTES` of them (`truncated`, `nextFrom` say where to read on)."""
    contract = get_contract(session, caller, contract_id)
    row = require_state(session, contract.id, task_id)
    end = min(start + limit, row.history_length)
    window = history_window(session, row.task_id, start, end)
    truncated = window.next_from is not None
    next_from = window.next_from if truncated else (end if end < row.history_length else None)
    return HistoryPage(
        task_id=row.task_id,
        from_=start,
        messages=window.messages,
        history_length=row.history_length,
        missing=window.missing,
        malformed=window.malformed,
        truncated=truncated,
        next_from=next_from,
    )


__all__ = [
    "HISTORY_BYTES",
    "MAX_HISTORY_PAGE",
    "HistoryMessage",
    "HistoryPage",
    "HistoryWindow",
    "history_rows",
    "history_window",
    "message_view",
    "newest_history",
    "read_history",
    "stored_size",
]
