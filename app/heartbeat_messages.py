"""The `heartbeats.ingest` message: heartbeats grouped by the principal that sent them.

Its own module because both sides of the broker read it and only one of them ingests: the
senders (`app.heartbeat_buffer`, the API module's buffer and the HTTP group commit) build it
with `message_of` and bound it with `MAX_PER_MESSAGE`, and the worker (`app.heartbeats`) reads
it back with `groups_of`, which refuses a message of another shape, or a longer one, whole.
What each heartbeat in it may hold is `app.domain.heartbeats`'s (`parse_heartbeat`; the quick
`wire_heartbeat` of `app.domain.heartbeat_wire`), checked by the worker one heartbeat at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from app.messages import MessageRejected

# The most heartbeats one message may carry (a sender's list, or several coalesced).
MAX_PER_MESSAGE: Final = 5000


def message_of(groups: Mapping[uuid.UUID, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """The broker payload of `heartbeats.ingest`: heartbeats grouped by the principal that sent them."""
    return {
        "groups": [
            {"principalId": str(principal), "heartbeats": list(items)}
            for principal, items in groups.items()
            if items
        ]
    }


def groups_of(message: Any) -> list[tuple[Any, list[Any]]]:
    """The (principal id, heartbeats) groups of a message, as sent: each is checked later."""
    if not isinstance(message, Mapping) or not isinstance(message.get("groups"), list):
        raise MessageRejected("heartbeats message must be {'groups': [{principalId, heartbeats: [...]}]}")
    out: list[tuple[Any, list[Any]]] = []
    total = 0
    for group in message["groups"]:
        if not isinstance(group, Mapping) or not isinstance(group.get("heartbeats"), list):
            raise MessageRejected("each heartbeats group needs a principalId and a heartbeats list")
        total += len(group["heartbeats"])
        out.append((group.get("principalId"), group["heartbeats"]))
    if total > MAX_PER_MESSAGE:
        raise MessageRejected(f"a heartbeats message carries at most {MAX_PER_MESSAGE} heartbeats ({total})")
    return out


__all__ = ["MAX_PER_MESSAGE", "groups_of", "message_of"]
