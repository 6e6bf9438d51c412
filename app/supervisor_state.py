"""Supervisor persistent state: saving it (ordered, fenced, history in increments) and reading it.

A save is one short transaction, in the order every writer of a contract takes its locks:
the contract row, then the supervisor's `supervisors` row (shared: the incarnation in force
must not move under the save; the dead sweep skips it meanwhile), then its
`supervisor_states` row. The pure rules (`app.domain.supervisor_state`) decide; this module
reads and writes:

- the first save of a supervisor inserts its row with `ON CONFLICT DO NOTHING`, so two
  first saves at once are one insert and one ordinary save, never a key error;
- the history is one row per message in `supervisor_conversation` (`seq` from 0): an applied
  save deletes the rows at and after `historyFrom` and inserts its append, in two statements
  whatever its length;
- a `supervisor_state_saved` event only for a first save, a change of state or phase, or a
  checkpoint (`worth_an_event`);
- a duplicate (the stored (incarnation, stateVersion) sent again) writes nothing and answers
  the stored figures, so a resend after a lost answer is one save.

Reads (`read_state`, `read_history`) are owner-scoped like every read and never fail on a
damaged row: a stored value that does not parse is shown as stored, a message that is not
one is listed under `malformed`, a missing one under `missing`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import Field
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.contract_rows import CONTRACT_ID_FIELD, get_contract, lock_contract, refuse_if_closed
from app.daemon_commands import check_daemon_id
from app.db import UnitOfWork, upsert_ignoring
from app.domain.errors import Forbidden, SupervisorNotFound
from app.domain.records import EventType
from app.domain.supervisor_state import (
    InvalidValue,
    SavePlan,
    SaveVerdict,
    Snapshot,
    StateSave,
    StoredOrder,
    checkpoint_after,
    current_incarnation,
    judge_save,
    parse_message,
    parse_snapshot,
    refuse_a_different_resend,
    resend_window,
    worth_an_event,
)
from app.events import record_event
from app.foreign_tasks import refuse_held_task
from app.models import ConversationMessage, Supervisor, SupervisorStateRow
from app.schemas import Schema, Timestamp

SAVING_ROLES: Final = (Role.SUPERVISOR, Role.ADMIN)
MAX_HISTORY_PAGE: Final = 1000
# One answer's history is bounded by size as well as by count: messages are added while their
# stored size (UTF-8 JSON) stays within this, so a page of 1000 messages of 64 Ki characters
# cannot make a 260 MB answer; the answer says where to read on.
HISTORY_BYTES: Final = 4 * 1024 * 1024


# --- answers --------------------------------------------------------------------------------


class CheckpointView(Schema):
    """The last checkpoint: a snapshot of the save the daemon marked as a consistent point."""

    id: str
    note: str | None
    incarnation: int
    state_version: int
    state: str
    phase: str
    current_activity: str
    progress: int
    spawned_task_ids: list[str]
    waiting_on_task_ids: list[str]
    history_length: int = Field(description="How many history messages the checkpoint covers")
    saved_at: Timestamp | None
    history_intact: bool = Field(
        description="False once a later save rewrote history the checkpoint covers: it is no "
        "longer restorable"
    )


class StateSaved(Schema):
    """What a save did: `applied` false means the stored save was sent again (nothing written)."""

    task_id: uuid.UUID
    incarnation: int = Field(description="The incarnation of the stored save")
    state_version: int = Field(description="The stateVersion of the stored save")
    applied: bool
    history_length: int
    checkpoint: CheckpointView | None
    saved_at: Timestamp


class StoredStateSummary(Schema):
    """A supervisor's stored persistent state in brief (what a sync answers with)."""

    task_id: uuid.UUID
    incarnation: int
    state_version: int
    state: str
    phase: str
    current_activity: str
    progress: int
    history_length: int
    checkpoint_id: str | None
    saved_at: Timestamp


class SupervisorStateView(Schema):
    """A supervisor's stored persistent state; its history is read page by page."""

    task_id: uuid.UUID
    contract_id: uuid.UUID
    incarnation: int = Field(description="The incarnation that made the stored save")
    current_incarnation: int = Field(
        description="The incarnation in force now (the heartbeats' record, else the save's own); "
        "saves of older ones are fenced"
    )
    state_version: int
    state: str = Field(
        description="initializing, idle, working, waiting_for_user, waiting_for_tasks, blocked, "
        "completed, failed or interrupted"
    )
    phase: str
    current_activity: str
    progress: int
    error: str | None
    spawned_task_ids: list[str]
    waiting_on_task_ids: list[str]
    history_length: int
    checkpoint: CheckpointView | None
    daemon_id: str | None
    host: str | None
    created_at: Timestamp
    saved_at: Timestamp


class HistoryMessage(Schema):
    """One conversation message at its position."""

    seq: int
    role: str = Field(description="system, user, assistant or tool")
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    at: Timestamp | None = None


class HistoryPage(Schema):
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


# --- rows -----------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _strings(raw: Any) -> list[str]:
    """A stored id list as text, whatever it holds (a damaged row is shown, not refused)."""
    return [str(v) for v in raw] if isinstance(raw, list) else []


def state_snapshot(row: SupervisorStateRow) -> dict[str, Any]:
    """The stored save in the shape the pure rules read (camelCase, unchecked)."""
    return {
        "incarnation": row.incarnation,
        "stateVersion": row.state_version,
        "state": row.state,
        "phase": row.phase,
        "currentActivity": row.current_activity,
        "progress": row.progress,
        "error": row.error,
        "spawnedTaskIds": row.spawned_task_ids,
        "waitingOnTaskIds": row.waiting_on_task_ids,
        "historyLength": row.history_length,
        "savedAt": _aware(row.updated_at).isoformat(),
    }


def snapshot_fields(snap: Snapshot) -> dict[str, Any]:
    """The fields a checkpoint view and a restored state share, from one snapshot."""
    return {
        "incarnation": snap.incarnation,
        "state_version": snap.state_version,
        "state": snap.state.value,
        "phase": snap.phase,
        "current_activity": snap.current_activity,
        "progress": snap.progress,
        "spawned_task_ids": list(snap.spawned_task_ids),
        "waiting_on_task_ids": list(snap.waiting_on_task_ids),
        "history_length": snap.history_length,
        "saved_at": snap.saved_at,
    }


def checkpoint_view(raw: Any) -> CheckpointView | None:
    """The stored checkpoint, or None when there is none (or it no longer parses)."""
    if not isinstance(raw, Mapping):
        return None
    try:
        snap = parse_snapshot(raw)
    except InvalidValue:
        return None
    return CheckpointView(
        id=snap.checkpoint_id or "",
        note=snap.checkpoint_note,
        **snapshot_fields(snap),
        history_intact=raw.get("historyIntact", True) is True,
    )


def stored_summary(row: SupervisorStateRow) -> StoredStateSummary:
    checkpoint = row.checkpoint if isinstance(row.checkpoint, Mapping) else None
    return StoredStateSummary(
        task_id=row.task_id,
        incarnation=row.incarnation,
        state_version=row.state_version,
        state=row.state,
        phase=row.phase,
        current_activity=row.current_activity,
        progress=row.progress,
        history_length=row.history_length,
        checkpoint_id=str(checkpoint["id"]) if checkpoint and checkpoint.get("id") is not None else None,
        saved_at=_aware(row.updated_at),
    )


def find_state(
    session: Session, contract_id: uuid.UUID, task_id: uuid.UUID | None, *, lock: bool = False
) -> SupervisorStateRow | None:
    """The contract's stored state: `task_id`'s, or (none named) the most recently saved one."""
    query = select(SupervisorStateRow).where(SupervisorStateRow.contract_id == contract_id)
    if task_id is not None:
        query = query.where(SupervisorStateRow.task_id == task_id)
    else:
        query = query.order_by(SupervisorStateRow.updated_at.desc()).limit(1)
    if lock:
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).first()


def supervisor_incarnation(session: Session, task_id: uuid.UUID) -> int | None:
    """The incarnation the heartbeats' record holds for the supervisor (None: never heard)."""
    return session.scalar(select(Supervisor.incarnation).where(Supervisor.task_id == task_id))


def refuse_foreign_supervisor(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """A task id belongs to one contract: another contract's supervisor (its heartbeats' record
    or its saved state) or ordinary task (one reported started there) is refused, explained
    only to the owner of both (`app.foreign_tasks.refuse_held_task`, the task reports' check too)."""
    refuse_held_task(session, contract_id, task_id)


# --- saving ---------------------------------------------------------------------------------


def require_saver(caller: Caller) -> None:
    """Only a supervisor (a daemon) or an operator writes a supervisor's state."""
    if caller.role not in SAVING_ROLES:
        raise Forbidden("save a supervisor's state", caller.role.value, [r.value for r in SAVING_ROLES])


def _row_values(
    save: StateSave, plan: SavePlan, checkpoint: dict[str, Any] | None, now: datetime
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "incarnation": plan.incarnation,
        "state_version": save.state_version,
        "state": save.state.value,
        "phase": save.phase,
        "current_activity": save.current_activity,
        "progress": save.progress,
        "error": save.error,
        "spawned_task_ids": list(save.spawned_task_ids),
        "waiting_on_task_ids": list(save.waiting_on_task_ids),
        "history_length": plan.history_length,
        "checkpoint": checkpoint,
        "updated_at": now,
    }
    if save.daemon_id is not None:
        values["daemon_id"] = save.daemon_id
    if save.host is not None:
        values["host"] = save.host
    return values


def _write_history(
    session: Session, contract_id: uuid.UUID, save: StateSave, plan: SavePlan, now: datetime
) -> None:
    """Replace the messages at and after `historyFrom` with the append (two statements)."""
    if plan.history_from is None:
        return
    session.execute(
        delete(ConversationMessage).where(
            ConversationMessage.task_id == save.task_id, ConversationMessage.seq >= plan.history_from
        )
    )
    if save.history_append:
        session.execute(
            insert(ConversationMessage),
            [
                {
                    "task_id": save.task_id,
                    "seq": plan.history_from + i,
                    "contract_id": contract_id,
                    "message": message.to_json(),
                    "created_at": now,
                }
                for i, message in enumerate(save.history_append)
            ],
        )


def _saved(task_id: uuid.UUID, values: Mapping[str, Any], applied: bool) -> StateSaved:
    return StateSaved(
        task_id=task_id,
        incarnation=values["incarnation"],
        state_version=values["state_version"],
        applied=applied,
        history_length=values["history_length"],
        checkpoint=checkpoint_view(values["checkpoint"]),
        saved_at=_aware(values["updated_at"]),
    )


def save_state(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, save: StateSave, now: datetime
) -> StateSaved:
    """Apply one save (see the module docstring); raises what `judge_save` raises."""
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    require_saver(caller)
    refuse_if_closed(contract, "supervisor state saves", CONTRACT_ID_FIELD)
    if save.daemon_id is not None:  # a restoration or restart may address commands to it
        check_daemon_id(save.daemon_id)
    refuse_foreign_supervisor(session, contract.id, save.task_id)
    # Read, not locked: heartbeat ingestion locks `supervisors` rows before it touches their
    # contracts, so a lock here (taken after the contract's) would invert that order and
    # deadlock. Restorations and restarts bump the incarnation under the contract lock this
    # save holds; a death declared meanwhile orders as after this save.
    in_force = session.scalar(select(Supervisor.incarnation).where(Supervisor.task_id == save.task_id))
    row = find_state(session, contract.id, save.task_id, lock=True)
    if row is None:
        plan = judge_save(contract.id, save, None, current_incarnation(in_force, None))
        values = _row_values(save, plan, checkpoint_after(save, plan, None, now), now)
        inserted = session.execute(
            upsert_ignoring(session, SupervisorStateRow, ["task_id"]).values(
                task_id=save.task_id,
                contract_id=contract.id,
                created_at=now,
                daemon_id=save.daemon_id,
                host=save.host,
                **{k: v for k, v in values.items() if k not in ("daemon_id", "host")},
            )
        )
        if getattr(inserted, "rowcount", 0):
            _write_history(session, contract.id, save, plan, now)
            _record_saved(session, contract.id, save, plan, None, None, now)
            return _saved(save.task_id, values, applied=True)
        # Another first save won the insert: judge this one against it, like any other.
        row = find_state(session, contract.id, save.task_id, lock=True)
        if row is None:
            refuse_foreign_supervisor(session, contract.id, save.task_id)
            raise RuntimeError(f"supervisor state {save.task_id} neither inserted nor found")
    stored = StoredOrder(row.incarnation, row.state_version, row.history_length)
    plan = judge_save(contract.id, save, stored, current_incarnation(in_force, stored))
    if plan.verdict is SaveVerdict.DUPLICATE:
        window = resend_window(save, row.history_length)
        resent = None if window is None else [m for _, m in history_rows(session, save.task_id, *window)]
        stored_values = {**state_snapshot(row), "daemonId": row.daemon_id, "host": row.host}
        refuse_a_different_resend(
            save, plan, stored_values, row.checkpoint if isinstance(row.checkpoint, Mapping) else None, resent
        )
        return _saved(save.task_id, _current_values(row), applied=False)
    before_state, before_phase = row.state, row.phase
    stored_checkpoint = row.checkpoint if isinstance(row.checkpoint, Mapping) else None
    values = _row_values(save, plan, checkpoint_after(save, plan, stored_checkpoint, now), now)
    for key, value in values.items():
        setattr(row, key, value)
    _write_history(session, contract.id, save, plan, now)
    _record_saved(session, contract.id, save, plan, before_state, before_phase, now)
    return _saved(save.task_id, values, applied=True)


def _current_values(row: SupervisorStateRow) -> dict[str, Any]:
    return {
        "incarnation": row.incarnation,
        "state_version": row.state_version,
        "history_length": row.history_length,
        "checkpoint": row.checkpoint,
        "updated_at": row.updated_at,
    }


def _record_saved(
    session: Session,
    contract_id: uuid.UUID,
    save: StateSave,
    plan: SavePlan,
    before_state: str | None,
    before_phase: str | None,
    now: datetime,
) -> None:
    if not worth_an_event(save, before_state, before_phase):
        return
    record_event(
        session,
        contract_id,
        EventType.SUPERVISOR_STATE_SAVED,
        {
            "taskId": str(save.task_id),
            "incarnation": plan.incarnation,
            "stateVersion": save.state_version,
            "oldState": before_state,
            "state": save.state.value,
            "oldPhase": before_phase,
            "phase": save.phase,
            "historyLength": plan.history_length,
            "checkpointId": save.checkpoint.id if save.checkpoint is not None else None,
        },
        now,
    )


# --- reading --------------------------------------------------------------------------------


def _require_state(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID | None) -> SupervisorStateRow:
    row = find_state(session, contract_id, task_id)
    if row is None:
        which = f"supervisor {task_id}" if task_id is not None else "any supervisor"
        raise SupervisorNotFound(
            contract_id,
            f"Contract {contract_id} has no stored state for {which}: no supervisor has saved one "
            "(POST .../supervisor/state).",
        )
    return row


def read_state(
    session: Session, caller: Caller, contract_id: uuid.UUID, task_id: uuid.UUID | None
) -> SupervisorStateView:
    """The stored state (`task_id`'s, or the most recently saved one); SUPERVISOR_NOT_FOUND if none."""
    contract = get_contract(session, caller, contract_id)
    row = _require_state(session, contract.id, task_id)
    stored = StoredOrder(row.incarnation, row.state_version, row.history_length)
    return SupervisorStateView(
        task_id=row.task_id,
        contract_id=row.contract_id,
        incarnation=row.incarnation,
        current_incarnation=current_incarnation(supervisor_incarnation(session, row.task_id), stored),
        state_version=row.state_version,
        state=row.state,
        phase=row.phase,
        current_activity=row.current_activity,
        progress=row.progress,
        error=row.error,
        spawned_task_ids=_strings(row.spawned_task_ids),
        waiting_on_task_ids=_strings(row.waiting_on_task_ids),
        history_length=row.history_length,
        checkpoint=checkpoint_view(row.checkpoint),
        daemon_id=row.daemon_id,
        host=row.host,
        created_at=_aware(row.created_at),
        saved_at=_aware(row.updated_at),
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
    row = _require_state(session, contract.id, task_id)
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
    "CheckpointView",
    "HistoryMessage",
    "HistoryPage",
    "HistoryWindow",
    "StateSaved",
    "StoredStateSummary",
    "SupervisorStateView",
    "checkpoint_view",
    "find_state",
    "history_rows",
    "history_window",
    "message_view",
    "newest_history",
    "read_history",
    "read_state",
    "refuse_foreign_supervisor",
    "require_saver",
    "save_state",
    "state_snapshot",
    "stored_size",
    "stored_summary",
    "supervisor_incarnation",
]
