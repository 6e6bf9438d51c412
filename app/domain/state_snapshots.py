"""A supervisor's stored snapshot: written after a save, kept as its checkpoint, read back checked.

A restoration (`app.domain.restoration`) and the checkpoint view judge what was stored, not
what was sent, so the shape a save leaves (`snapshot_of`, camelCase JSON) and its reading back
(`parse_snapshot`, every value checked again by the save's rules) live together. Checkpoints
mark a save as a consistent point: a snapshot of the state and of how long the history was is
kept beside the current state (`checkpoint_after`). A later save that rewrites history the
checkpoint covers leaves it unusable (`historyIntact: false`): its messages are gone. Stdlib
only, like all of `app.domain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import MAX_ACTIVITY, MAX_PHASE
from app.domain.save_plan import SavePlan
from app.domain.state_saves import CheckpointMark, StateSave
from app.domain.state_values import (
    MAX_CHECKPOINT_ID,
    MAX_ERROR,
    MAX_HISTORY_POSITION,
    MAX_NOTE,
    MAX_STATE_VERSION,
    InvalidValue,
    state_value,
    task_id_list,
    text_value,
    time_value,
    whole_number,
)
from app.domain.supervisors import SupervisorState


def snapshot_of(
    save: StateSave, plan: SavePlan, saved_at: datetime, checkpoint: CheckpointMark | None = None
) -> dict[str, Any]:
    """The state a save leaves, as a checkpoint stores it (camelCase JSON)."""
    out: dict[str, Any] = {
        "incarnation": plan.incarnation,
        "stateVersion": save.state_version,
        **save.state_fields(),
        "historyLength": plan.history_length,
        "savedAt": saved_at.isoformat(),
    }
    if checkpoint is not None:
        out = {"id": checkpoint.id, "note": checkpoint.note, **out, "historyIntact": True}
    return out


def checkpoint_after(
    save: StateSave, plan: SavePlan, stored: Mapping[str, Any] | None, saved_at: datetime
) -> dict[str, Any] | None:
    """The checkpoint kept after an applied save: a new one if the save takes one; else the
    stored one, marked `historyIntact: false` once the save rewrote history it covers."""
    if save.checkpoint is not None:
        return snapshot_of(save, plan, saved_at, save.checkpoint)
    if stored is None:
        return None
    covered = stored.get("historyLength")
    if (
        plan.history_from is not None
        and isinstance(covered, int)
        and plan.history_from < covered
        and stored.get("historyIntact", True) is True
    ):
        return {**stored, "historyIntact": False, "historyRewrittenFrom": plan.history_from}
    return dict(stored)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A restorable state: the current save or a checkpoint, every value checked."""

    incarnation: int
    state_version: int
    state: SupervisorState
    phase: str
    current_activity: str
    progress: int
    error: str | None
    spawned_task_ids: tuple[str, ...]
    waiting_on_task_ids: tuple[str, ...]
    history_length: int
    saved_at: datetime | None
    checkpoint_id: str | None = None
    checkpoint_note: str | None = None


def parse_snapshot(raw: Mapping[str, Any]) -> Snapshot:
    """A stored state (camelCase, as `snapshot_of` writes it) → `Snapshot`, or InvalidValue."""
    if not isinstance(raw, Mapping):
        raise InvalidValue("checkpoint", "is not an object")
    history_length = raw.get("historyLength")
    saved_at = raw.get("savedAt")
    error = raw.get("error")
    checkpoint_id = raw.get("id")
    note = raw.get("note")
    return Snapshot(
        incarnation=whole_number(raw.get("incarnation"), "incarnation", 1, MAX_INCARNATION),
        state_version=whole_number(raw.get("stateVersion"), "stateVersion", 0, MAX_STATE_VERSION),
        state=state_value(raw.get("state"), "state"),
        phase=text_value(raw.get("phase"), "phase", MAX_PHASE, empty=False),
        current_activity=text_value(raw.get("currentActivity", ""), "currentActivity", MAX_ACTIVITY),
        progress=whole_number(raw.get("progress", 0), "progress", 0, 100),
        error=None if error is None else text_value(error, "error", MAX_ERROR),
        spawned_task_ids=task_id_list(raw.get("spawnedTaskIds"), "spawnedTaskIds"),
        waiting_on_task_ids=task_id_list(raw.get("waitingOnTaskIds"), "waitingOnTaskIds"),
        history_length=whole_number(history_length, "historyLength", 0, MAX_HISTORY_POSITION),
        saved_at=None if saved_at is None else time_value(saved_at, "savedAt"),
        checkpoint_id=None if checkpoint_id is None else text_value(checkpoint_id, "id", MAX_CHECKPOINT_ID),
        checkpoint_note=None if note is None else text_value(note, "note", MAX_NOTE),
    )


__all__ = [
    "Snapshot",
    "checkpoint_after",
    "parse_snapshot",
    "snapshot_of",
]
