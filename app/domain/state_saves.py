"""A supervisor's save as a daemon sends it: its fields, their bounds, the checked `StateSave`.

A daemon saves what it would need after a crash at the plan's save points (an LLM response, a
task spawned, a question asked, a phase change). `parse_save` turns the wire form (camelCase)
into a `StateSave`, or `ValidationFailed` naming the field and the limit, before anything is
judged or written: requests are bounded (at most `MAX_APPEND` history messages per save,
`MAX_TASK_IDS` task ids per list, `MAX_CONTENT` characters per message), and an unknown field
is refused. What a checked save then does is `app.domain.save_plan`'s. Stdlib only, like all
of `app.domain`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from app.domain.history_messages import Message, parse_message
from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import ACTIVITY_RULE, MAX_ACTIVITY, MAX_PHASE, PHASE_RULE
from app.domain.state_values import (
    MAX_APPEND,
    MAX_CHECKPOINT_ID,
    MAX_ERROR,
    MAX_HISTORY_POSITION,
    MAX_NOTE,
    MAX_STATE_VERSION,
    InvalidValue,
    daemon_id_value,
    host_value,
    refuse_unknown_fields,
    state_value,
    task_id_list,
    text_value,
    uuid_value,
    whole_number,
)
from app.domain.supervisors import SupervisorState

SAVE_FIELDS: Final = frozenset(
    {
        "taskId",
        "incarnation",
        "stateVersion",
        "state",
        "phase",
        "currentActivity",
        "progress",
        "error",
        "spawnedTaskIds",
        "waitingOnTaskIds",
        "historyFrom",
        "historyAppend",
        "checkpoint",
        "daemonId",
        "host",
    }
)
CHECKPOINT_FIELDS: Final = frozenset({"id", "note"})


@dataclass(frozen=True, slots=True)
class CheckpointMark:
    """The daemon's word that this save is a consistent point."""

    id: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class StateSave:
    """One save of a supervisor's persistent state, checked."""

    task_id: uuid.UUID
    state_version: int
    state: SupervisorState
    phase: str
    current_activity: str = ""
    progress: int = 0
    error: str | None = None
    spawned_task_ids: tuple[str, ...] = ()
    waiting_on_task_ids: tuple[str, ...] = ()
    incarnation: int | None = None
    history_from: int | None = None
    history_append: tuple[Message, ...] | None = None
    checkpoint: CheckpointMark | None = None
    daemon_id: str | None = None
    host: str | None = None

    def state_fields(self) -> dict[str, Any]:
        """The state it reports, camelCase as stored: what a snapshot keeps and a resend must repeat."""
        return {
            "state": self.state.value,
            "phase": self.phase,
            "currentActivity": self.current_activity,
            "progress": self.progress,
            "error": self.error,
            "spawnedTaskIds": list(self.spawned_task_ids),
            "waitingOnTaskIds": list(self.waiting_on_task_ids),
        }

    def touches_history(self) -> bool:
        return self.history_from is not None or self.history_append is not None


def parse_save(raw: Any) -> StateSave:
    """A save as sent (camelCase JSON object) → `StateSave`, or `ValidationFailed` naming the
    field (and the limit it broke)."""
    try:
        return _parse_save(raw)
    except InvalidValue as exc:
        raise exc.as_validation_failed() from None


def _parse_save(raw: Any) -> StateSave:
    if not isinstance(raw, Mapping):
        raise InvalidValue("body", "must be a JSON object")
    refuse_unknown_fields(raw, SAVE_FIELDS, "")
    for name in ("taskId", "stateVersion", "state", "phase"):
        if raw.get(name) is None:
            raise InvalidValue(name, "is required")
    append_raw = raw.get("historyAppend")
    append: tuple[Message, ...] | None = None
    if append_raw is not None:
        if not isinstance(append_raw, list | tuple):
            raise InvalidValue("historyAppend", "must be a list of messages")
        if len(append_raw) > MAX_APPEND:
            raise InvalidValue(
                "historyAppend",
                f"at most {MAX_APPEND} messages per save (this one has {len(append_raw)}); send the "
                "rest in the next saves, each with historyFrom where it starts",
                MAX_APPEND,
            )
        append = tuple(parse_message(m, f"historyAppend[{i}]") for i, m in enumerate(append_raw))
    history_from = raw.get("historyFrom")
    if history_from is not None:
        history_from = whole_number(history_from, "historyFrom", 0, MAX_HISTORY_POSITION)
    checkpoint_raw = raw.get("checkpoint")
    checkpoint: CheckpointMark | None = None
    if checkpoint_raw is not None:
        if not isinstance(checkpoint_raw, Mapping):
            raise InvalidValue("checkpoint", "must be an object {id, note?} or null")
        refuse_unknown_fields(checkpoint_raw, CHECKPOINT_FIELDS, "checkpoint")
        if checkpoint_raw.get("id") is None:
            raise InvalidValue("checkpoint.id", "is required")
        note = checkpoint_raw.get("note")
        checkpoint = CheckpointMark(
            text_value(checkpoint_raw["id"], "checkpoint.id", MAX_CHECKPOINT_ID, empty=False),
            text_value(note, "checkpoint.note", MAX_NOTE) if note is not None else None,
        )
    incarnation = raw.get("incarnation")
    activity = raw.get("currentActivity")
    progress = raw.get("progress")
    error = raw.get("error")
    daemon_id = raw.get("daemonId")
    host = raw.get("host")
    return StateSave(
        task_id=uuid_value(raw["taskId"], "taskId"),
        state_version=whole_number(raw["stateVersion"], "stateVersion", 0, MAX_STATE_VERSION),
        state=state_value(raw["state"], "state"),
        phase=text_value(raw["phase"], "phase", MAX_PHASE, empty=False, one_line=PHASE_RULE),
        current_activity=""
        if activity is None
        else text_value(activity, "currentActivity", MAX_ACTIVITY, one_line=ACTIVITY_RULE),
        progress=0 if progress is None else whole_number(progress, "progress", 0, 100),
        error=None if error is None else text_value(error, "error", MAX_ERROR),
        spawned_task_ids=task_id_list(raw.get("spawnedTaskIds"), "spawnedTaskIds"),
        waiting_on_task_ids=task_id_list(raw.get("waitingOnTaskIds"), "waitingOnTaskIds"),
        incarnation=None
        if incarnation is None
        else whole_number(incarnation, "incarnation", 1, MAX_INCARNATION),
        history_from=history_from,
        history_append=append,
        checkpoint=checkpoint,
        daemon_id=None if daemon_id is None else daemon_id_value(daemon_id),
        host=None if host is None else host_value(host),
    )


__all__ = [
    "CheckpointMark",
    "StateSave",
    "parse_save",
]
