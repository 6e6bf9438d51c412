"""A supervisor as the server keeps it: its states, its stored record, a change of its state.

Its own module because every other supervisor rule speaks of these values and none owns them: a
heartbeat carries a `SupervisorState` (`app.domain.heartbeats`), the fold of a list judges each
heartbeat against a `SupervisorRecord` and answers `StateChange`s (`app.domain.heartbeat_plan`),
fencing compares incarnations with the record's (`app.domain.fencing`), and declaring a
supervisor dead writes a record and a change too (`app.domain.liveness`). The record is one row
of `supervisors`; its `order_key` is the order every state is judged by: (incarnation, the
daemon's timestamp).

The rest of what this module once held lives with the concept that owns it: ids
(`app.domain.uuids`), a daemon's texts (`app.domain.reported_text`), timestamps
(`app.domain.timestamps`), the heartbeat message (`app.domain.heartbeats`) and its wire form
(`app.domain.heartbeat_wire`), incarnations (`app.domain.incarnations`), fencing
(`app.domain.fencing`), a list's plan (`app.domain.heartbeat_plan`) and liveness
(`app.domain.liveness`).

Pure (stdlib only).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.domain.timestamps import EARLIEST


class SupervisorState(StrEnum):
    """What a supervisor is doing (seed 3.2), snake_case on the wire."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    WORKING = "working"
    WAITING_FOR_USER = "waiting_for_user"
    WAITING_FOR_TASKS = "waiting_for_tasks"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class SupervisorRecord:
    """A supervisor's current state as stored (one row of `supervisors`).

    `sent_at` is the daemon's timestamp of the heartbeat whose state is stored (None right
    after a death: no heartbeat of the new incarnation yet); `last_received_at` is when we
    last received a heartbeat of the current incarnation. `version` counts writes (0: not
    stored yet), so a writer can tell whether the row changed since it read it.
    """

    task_id: uuid.UUID
    contract_id: uuid.UUID
    incarnation: int
    state: SupervisorState
    phase: str
    current_activity: str
    progress: int
    pending_task_ids: tuple[str, ...]
    heartbeat_id: uuid.UUID | None
    sent_at: datetime | None
    last_received_at: datetime
    alive: bool
    dead_at: datetime | None
    daemon_id: str | None
    host: str | None
    version: int

    def order_key(self) -> tuple[int, datetime]:
        return (self.incarnation, self.sent_at or EARLIEST)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A supervisor's state really changed (a `supervisor_state_changed` event)."""

    contract_id: uuid.UUID
    task_id: uuid.UUID
    old_state: SupervisorState | None
    new_state: SupervisorState
    incarnation: int
    revived: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "taskId": str(self.task_id),
            "oldState": self.old_state.value if self.old_state is not None else None,
            "newState": self.new_state.value,
            "incarnation": self.incarnation,
            **({"revived": True} if self.revived else {}),
        }


__all__ = ["StateChange", "SupervisorRecord", "SupervisorState"]
