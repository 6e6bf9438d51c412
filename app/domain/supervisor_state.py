"""Supervisor persistent state (seed 3.4): pure rules.

A daemon saves what it would need after a crash at the plan's save points (an LLM response, a
task spawned, a question asked, a phase change); the server keeps it and, when a daemon
restarts, decides how to restore it. Everything here takes and returns plain values (stdlib
only, the clock passed in), so the API module, the HTTP front and the tests judge alike:

- **A save** (`parse_save`): the wire form (camelCase) becomes a `StateSave`, or
  `ValidationFailed` naming the field and the limit. Requests are bounded: at most
  `MAX_APPEND` history messages per save, `MAX_TASK_IDS` task ids per list, `MAX_CONTENT`
  characters per message.
- **Ordering** (`judge_save`): saves are ordered by (incarnation, stateVersion). A save of an
  incarnation older than the current one is fenced (`SupervisorFenced`), as is one naming
  none once the server has issued an incarnation; one above the current one was never issued
  (`IncarnationNotIssued`); one older than the
  stored save is `StaleState`; an equal one must be the same save sent again (a duplicate:
  nothing is written, the stored figures are the answer; `resend_differences` names what a
  different save under the same key changed, refused as `StateVersionReused`); a newer one is
  applied. A newer incarnation
  wins whatever its stateVersion, so a restored daemon may count its versions afresh.
- **History** is appended in increments: `historyFrom` is the position of the first message
  sent. It may not lie past the stored end (`HistoryGap`, which says where to resend from);
  messages at or after it are replaced, so a daemon that compacted its conversation rewrites
  its tail. Without `historyFrom` an append lands at the end; without either the history is
  untouched.
- **Checkpoints** mark a save as a consistent point: a snapshot of the state and of how long
  the history was is kept beside the current state. A later save that rewrites history the
  checkpoint covers leaves it unusable (`historyIntact: false`): its messages are gone.
- **The stored snapshot** (`parse_snapshot`): a stored save or checkpoint read back and every
  value checked again, for the checkpoint view and for the restoration decision, which lives
  in `app.domain.restoration`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from app.domain.control_characters import one_line_problem
from app.domain.daemon_ids import MAX_DAEMON_ID, daemon_id_problem
from app.domain.errors import (
    HistoryGap,
    IncarnationNotIssued,
    StaleState,
    StateVersionReused,
    SupervisorFenced,
    ValidationFailed,
)
from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import (
    ACTIVITY_RULE,
    MAX_ACTIVITY,
    MAX_HOST,
    MAX_PHASE,
    PHASE_RULE,
    host_problem,
)
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

ROLES: Final = ("system", "user", "assistant", "tool")
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
MESSAGE_FIELDS: Final = frozenset({"role", "content", "name", "toolCallId", "at"})
# The form a message's `at` (and a stored snapshot's `savedAt`) takes, in the words its
# refusals end with.
TIME_FORM: Final = (
    "an ISO 8601 date-time with a time zone: Z or an offset from UTC (+HH:MM or -HH:MM), for "
    "example 2026-01-31T10:30:00Z or 2026-01-31T12:30:00+02:00"
)
CHECKPOINT_FIELDS: Final = frozenset({"id", "note"})


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


# --- values ---------------------------------------------------------------------------------


def _text(raw: Any, name: str, limit: int, *, empty: bool = True, one_line: str | None = None) -> str:
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


def message_time(raw: Any, name: str = "at") -> datetime:
    """A message's `at` by the save's rule (`_timestamp`), in UTC, else `InvalidValue` naming
    `name`: the HTTP front's schema asks this too, so it refuses what a save would, in the same
    words."""
    return _timestamp(raw, name)


def _daemon_id(raw: Any) -> str:
    """A save's daemon id, by the feed's and the heartbeat's rule (`daemon_id_problem`): a
    restoration or restart addresses commands to it."""
    problem = daemon_id_problem(raw)
    if problem is not None:
        raise InvalidValue("daemonId", problem, MAX_DAEMON_ID)
    return str(raw)


def _host(raw: Any) -> str:
    """A daemon's host, by the heartbeat's rule (`host_problem`): a host a save or a claim
    stores is shown where a heartbeat's is, so neither may take one the other refuses."""
    problem = host_problem(raw)
    if problem is not None:
        too_long = isinstance(raw, str) and len(raw) > MAX_HOST
        raise InvalidValue("host", problem, MAX_HOST if too_long else None)
    return str(raw)


def check_host(raw: Any) -> str:
    """A restoration's `host` (`_host`'s rule), else `ValidationFailed` naming the field."""
    try:
        return _host(raw)
    except InvalidValue as exc:
        raise exc.as_validation_failed() from None


def _int(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidValue(name, f"must be a whole number from {low} to {high}")
    if not low <= raw <= high:
        raise InvalidValue(name, f"must be from {low} to {high} (got {raw})")
    return raw


def _uuid(raw: Any, name: str) -> uuid.UUID:
    return parse_uuid(raw, name, InvalidValue)


def _uuid_list(raw: Any, name: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise InvalidValue(name, "must be a list of task ids (UUIDs)")
    if len(raw) > MAX_TASK_IDS:
        raise InvalidValue(name, f"at most {MAX_TASK_IDS} task ids (this one has {len(raw)})", MAX_TASK_IDS)
    return tuple(dict.fromkeys(str(_uuid(item, f"{name}[{i}]")) for i, item in enumerate(raw)))


def _timestamp(raw: Any, name: str) -> datetime:
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


def _state(raw: Any, name: str) -> SupervisorState:
    try:
        return SupervisorState(raw)
    except (ValueError, TypeError):
        allowed = ", ".join(s.value for s in SupervisorState)
        shown = str(raw)[:60]
        raise InvalidValue(name, f"'{shown}' is not a supervisor state; one of: {allowed}") from None


def _unknown(raw: Mapping[Any, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        name = f"{where}.{unknown[0][:60]}" if where else unknown[0][:60]
        raise InvalidValue(name, f"unknown field; allowed: {', '.join(sorted(allowed))}")


# --- messages -------------------------------------------------------------------------------


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
    _unknown(raw, MESSAGE_FIELDS, where)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidValue(f"{where}.role", f"must be one of: {', '.join(ROLES)}")
    if raw.get("content") is None:
        raise InvalidValue(f"{where}.content", "is required")
    content = _text(raw["content"], f"{where}.content", MAX_CONTENT)
    name = raw.get("name")
    if name is not None:
        name = _text(name, f"{where}.name", MAX_MESSAGE_NAME, empty=False)
    tool_call_id = raw.get("toolCallId")
    if tool_call_id is not None:
        tool_call_id = _text(tool_call_id, f"{where}.toolCallId", MAX_TOOL_CALL_ID, empty=False)
    at = raw.get("at")
    return Message(
        role=str(role),
        content=content,
        name=name,
        tool_call_id=tool_call_id,
        at=_timestamp(at, f"{where}.at") if at is not None else None,
    )


# --- a save ---------------------------------------------------------------------------------


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
    _unknown(raw, SAVE_FIELDS, "")
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
        history_from = _int(history_from, "historyFrom", 0, MAX_HISTORY_POSITION)
    checkpoint_raw = raw.get("checkpoint")
    checkpoint: CheckpointMark | None = None
    if checkpoint_raw is not None:
        if not isinstance(checkpoint_raw, Mapping):
            raise InvalidValue("checkpoint", "must be an object {id, note?} or null")
        _unknown(checkpoint_raw, CHECKPOINT_FIELDS, "checkpoint")
        if checkpoint_raw.get("id") is None:
            raise InvalidValue("checkpoint.id", "is required")
        note = checkpoint_raw.get("note")
        checkpoint = CheckpointMark(
            _text(checkpoint_raw["id"], "checkpoint.id", MAX_CHECKPOINT_ID, empty=False),
            _text(note, "checkpoint.note", MAX_NOTE) if note is not None else None,
        )
    incarnation = raw.get("incarnation")
    activity = raw.get("currentActivity")
    progress = raw.get("progress")
    error = raw.get("error")
    daemon_id = raw.get("daemonId")
    host = raw.get("host")
    return StateSave(
        task_id=_uuid(raw["taskId"], "taskId"),
        state_version=_int(raw["stateVersion"], "stateVersion", 0, MAX_STATE_VERSION),
        state=_state(raw["state"], "state"),
        phase=_text(raw["phase"], "phase", MAX_PHASE, empty=False, one_line=PHASE_RULE),
        current_activity=""
        if activity is None
        else _text(activity, "currentActivity", MAX_ACTIVITY, one_line=ACTIVITY_RULE),
        progress=0 if progress is None else _int(progress, "progress", 0, 100),
        error=None if error is None else _text(error, "error", MAX_ERROR),
        spawned_task_ids=_uuid_list(raw.get("spawnedTaskIds"), "spawnedTaskIds"),
        waiting_on_task_ids=_uuid_list(raw.get("waitingOnTaskIds"), "waitingOnTaskIds"),
        incarnation=None if incarnation is None else _int(incarnation, "incarnation", 1, MAX_INCARNATION),
        history_from=history_from,
        history_append=append,
        checkpoint=checkpoint,
        daemon_id=None if daemon_id is None else _daemon_id(daemon_id),
        host=None if host is None else _host(host),
    )


# --- ordering -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """What ordering needs of the stored save: its key and how long its history is."""

    incarnation: int
    state_version: int
    history_length: int

    def key(self) -> tuple[int, int]:
        return (self.incarnation, self.state_version)


class SaveVerdict(StrEnum):
    APPLY = "apply"  # newer than the stored save: written
    DUPLICATE = "duplicate"  # the stored save sent again: nothing written, the stored figures answer


@dataclass(frozen=True, slots=True)
class SavePlan:
    """What one save does: its verdict, the incarnation it speaks for, where its history lands."""

    verdict: SaveVerdict
    incarnation: int
    history_from: int | None  # None: the history is left as it is
    history_length: int  # after the save


def current_incarnation(supervisor_incarnation: int | None, stored: StoredOrder | None) -> int:
    """The incarnation in force: the supervisors row's (the heartbeats' authority), else the
    stored save's own, else 1."""
    if supervisor_incarnation is not None:
        return supervisor_incarnation
    return stored.incarnation if stored is not None else 1


def judge_save(contract_id: uuid.UUID, save: StateSave, stored: StoredOrder | None, current: int) -> SavePlan:
    """Decide a save against the stored one; raises SupervisorFenced, IncarnationNotIssued,
    StaleState, HistoryGap.

    Fencing comes first (an old incarnation may write nothing, whatever it sends), then the
    order, then the history: a duplicate is answered before its history is looked at, so a
    resent append is one append. Only the server issues incarnations (`current` is the one in
    force): a save may leave its incarnation out only while the first one is in force (nothing
    was restored, restarted or declared dead), since afterwards the replaced daemon's save would
    look the same; an incarnation above the one in force was never issued and is refused, or it
    would lock the real incarnation out.
    """
    if save.incarnation is None:
        if current > 1:  # the server has issued an incarnation: the save must say it is that one
            raise SupervisorFenced(contract_id, save.task_id, None, current)
        incarnation = current
    else:
        incarnation = save.incarnation
    if incarnation < current:
        raise SupervisorFenced(contract_id, save.task_id, incarnation, current)
    if incarnation > current:
        raise IncarnationNotIssued(contract_id, save.task_id, incarnation, current)
    key = (incarnation, save.state_version)
    if stored is not None:
        if key < stored.key():
            raise StaleState(save.task_id, key, stored.key())
        if key == stored.key():
            return SavePlan(SaveVerdict.DUPLICATE, incarnation, None, stored.history_length)
    stored_length = stored.history_length if stored is not None else 0
    history_from = save.history_from
    if history_from is None and save.history_append is not None:
        history_from = stored_length
    if history_from is not None and history_from > stored_length:
        raise HistoryGap(save.task_id, history_from, stored_length)
    if history_from is None:
        return SavePlan(SaveVerdict.APPLY, incarnation, None, stored_length)
    return SavePlan(
        SaveVerdict.APPLY, incarnation, history_from, history_from + len(save.history_append or ())
    )


def resend_window(save: StateSave, stored_length: int) -> tuple[int, int] | None:
    """Where a resend's history append would lie in the stored history, as (start, end), or
    None when the save carries no history (or its append cannot have made the stored length)."""
    if not save.touches_history():
        return None
    count = len(save.history_append or ())
    start = save.history_from if save.history_from is not None else stored_length - count
    if start < 0 or start + count != stored_length:
        return None
    return (start, stored_length)


def resend_differences(
    save: StateSave,
    stored: Mapping[str, Any],
    stored_checkpoint: Mapping[str, Any] | None,
    stored_history: Sequence[Any] | None,
) -> list[str]:
    """The fields (wire names) in which a save with the stored (incarnation, stateVersion)
    differs from the stored save; empty for a true resend.

    `stored` is the stored state as `state_snapshot` gives it; `stored_history` the stored
    messages in `resend_window` (None when there is no such window). A key names one save: a
    daemon that changed anything must count a new stateVersion, or a lost answer's resend and
    a new state could not be told apart (and the new one would be dropped in silence).
    """
    sent: dict[str, Any] = {
        "state": save.state.value,
        "phase": save.phase,
        "currentActivity": save.current_activity,
        "progress": save.progress,
        "error": save.error,
        "spawnedTaskIds": list(save.spawned_task_ids),
        "waitingOnTaskIds": list(save.waiting_on_task_ids),
    }
    differs = [name for name, value in sent.items() if _stored_value(stored.get(name), name) != value]
    for name, value in (("daemonId", save.daemon_id), ("host", save.host)):
        if value is not None and stored.get(name) is not None and stored.get(name) != value:
            differs.append(name)
    if save.touches_history():
        append = [m.to_json() for m in save.history_append or ()]
        if stored_history is None or list(stored_history) != append:
            differs.append("history")
    key = (stored.get("incarnation"), stored.get("stateVersion"))
    took = (
        stored_checkpoint is not None
        and (stored_checkpoint.get("incarnation"), stored_checkpoint.get("stateVersion")) == key
    )
    if save.checkpoint is None:
        if took:
            differs.append("checkpoint")
    elif (
        not took
        or stored_checkpoint is None
        or (stored_checkpoint.get("id"), stored_checkpoint.get("note"))
        != (save.checkpoint.id, save.checkpoint.note)
    ):
        differs.append("checkpoint")
    return differs


def _stored_value(value: Any, name: str) -> Any:
    """A stored value in the form a save's compares with (id lists as lists of text)."""
    if name in ("spawnedTaskIds", "waitingOnTaskIds"):
        return [str(v) for v in value] if isinstance(value, list) else value
    return value


def refuse_a_different_resend(
    save: StateSave,
    plan: SavePlan,
    stored: Mapping[str, Any],
    stored_checkpoint: Mapping[str, Any] | None,
    stored_history: Sequence[Any] | None,
) -> None:
    """Raise `StateVersionReused` when a duplicate's content is not the stored save's."""
    differs = resend_differences(save, stored, stored_checkpoint, stored_history)
    if differs:
        raise StateVersionReused(save.task_id, plan.incarnation, save.state_version, differs)


def snapshot_of(
    save: StateSave, plan: SavePlan, saved_at: datetime, checkpoint: CheckpointMark | None = None
) -> dict[str, Any]:
    """The state a save leaves, as a checkpoint stores it (camelCase JSON)."""
    out: dict[str, Any] = {
        "incarnation": plan.incarnation,
        "stateVersion": save.state_version,
        "state": save.state.value,
        "phase": save.phase,
        "currentActivity": save.current_activity,
        "progress": save.progress,
        "error": save.error,
        "spawnedTaskIds": list(save.spawned_task_ids),
        "waitingOnTaskIds": list(save.waiting_on_task_ids),
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


def worth_an_event(save: StateSave, before_state: str | None, before_phase: str | None) -> bool:
    """A `supervisor_state_saved` event only for what a person would want in the history: a
    first save, a change of state or phase, a checkpoint. Not one per save."""
    return (
        before_state is None
        or before_state != save.state.value
        or before_phase != save.phase
        or save.checkpoint is not None
    )


# --- the stored snapshot -------------------------------------------------------------------


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
        incarnation=_int(raw.get("incarnation"), "incarnation", 1, MAX_INCARNATION),
        state_version=_int(raw.get("stateVersion"), "stateVersion", 0, MAX_STATE_VERSION),
        state=_state(raw.get("state"), "state"),
        phase=_text(raw.get("phase"), "phase", MAX_PHASE, empty=False),
        current_activity=_text(raw.get("currentActivity", ""), "currentActivity", MAX_ACTIVITY),
        progress=_int(raw.get("progress", 0), "progress", 0, 100),
        error=None if error is None else _text(error, "error", MAX_ERROR),
        spawned_task_ids=_uuid_list(raw.get("spawnedTaskIds"), "spawnedTaskIds"),
        waiting_on_task_ids=_uuid_list(raw.get("waitingOnTaskIds"), "waitingOnTaskIds"),
        history_length=_int(history_length, "historyLength", 0, MAX_HISTORY_POSITION),
        saved_at=None if saved_at is None else _timestamp(saved_at, "savedAt"),
        checkpoint_id=None if checkpoint_id is None else _text(checkpoint_id, "id", MAX_CHECKPOINT_ID),
        checkpoint_note=None if note is None else _text(note, "note", MAX_NOTE),
    )


__all__ = [
    "MAX_APPEND",
    "MAX_CONTENT",
    "MAX_TASK_IDS",
    "ROLES",
    "TIME_FORM",
    "CheckpointMark",
    "InvalidValue",
    "Message",
    "SavePlan",
    "SaveVerdict",
    "Snapshot",
    "StateSave",
    "StoredOrder",
    "check_host",
    "checkpoint_after",
    "current_incarnation",
    "judge_save",
    "message_time",
    "parse_message",
    "parse_save",
    "parse_snapshot",
    "snapshot_of",
    "worth_an_event",
]
