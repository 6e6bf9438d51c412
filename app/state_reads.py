"""Reading a supervisor's stored state: the state view, its checkpoint, the summary a sync answers with.

Reads are owner-scoped like every read and never fail on a damaged row: a stored value that
does not parse is shown as stored, a checkpoint that no longer parses is shown as none. The
checkpoint view and a restoration's state are read from one snapshot (`snapshot_fields`), so
they show the same fields alike. The conversation is read page by page in
`app.history_reads`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import Field
from sqlalchemy.orm import Session

from app.auth import Caller
from app.contract_rows import get_contract
from app.domain.save_plan import StoredOrder, current_incarnation
from app.domain.state_snapshots import Snapshot, parse_snapshot
from app.domain.state_values import InvalidValue
from app.models import SupervisorStateRow
from app.schemas import Schema, Timestamp
from app.state_rows import aware, require_state, supervisor_incarnation


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


def _strings(raw: Any) -> list[str]:
    """A stored id list as text, whatever it holds (a damaged row is shown, not refused)."""
    return [str(v) for v in raw] if isinstance(raw, list) else []


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
    """The stored state in brief, for an answer that only points at it (a sync's)."""
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
        saved_at=aware(row.updated_at),
    )


def read_state(
    session: Session, caller: Caller, contract_id: uuid.UUID, task_id: uuid.UUID | None
) -> SupervisorStateView:
    """The stored state (`task_id`'s, or the most recently saved one); SUPERVISOR_NOT_FOUND if none."""
    contract = get_contract(session, caller, contract_id)
    row = require_state(session, contract.id, task_id)
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
        created_at=aware(row.created_at),
        saved_at=aware(row.updated_at),
    )


__all__ = [
    "CheckpointView",
    "StoredStateSummary",
    "SupervisorStateView",
    "checkpoint_view",
    "read_state",
    "snapshot_fields",
    "stored_summary",
]
