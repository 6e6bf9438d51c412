"""Saving a supervisor's persistent state: ordered, fenced, its history in increments.

A save is one short transaction, in the order every writer of a contract takes its locks:
the contract row, then the supervisor's `supervisor_states` row (the incarnation in force is
read from its `supervisors` row, not locked: see `save_state`). The pure rules decide
(`app.domain.save_plan`, `app.domain.save_resends`, `app.domain.state_snapshots`); this
module writes:

- the first save of a supervisor inserts its row with `ON CONFLICT DO NOTHING`, so two
  first saves at once are one insert and one ordinary save, never a key error;
- the history is one row per message in `supervisor_conversation` (`seq` from 0): an applied
  save deletes the rows at and after `historyFrom` and inserts its append, in two statements
  whatever its length;
- a `supervisor_state_saved` event only for a first save, a change of state or phase, or a
  checkpoint (`worth_an_event`);
- a duplicate (the stored (incarnation, stateVersion) sent again) writes nothing and answers
  the stored figures, so a resend after a lost answer is one save.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from pydantic import Field
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.contract_rows import CONTRACT_ID_FIELD, lock_contract, refuse_if_closed
from app.daemon_commands import check_daemon_id
from app.db import UnitOfWork, upsert_ignoring
from app.domain.errors import Forbidden
from app.domain.records import EventType
from app.domain.save_plan import (
    SavePlan,
    SaveVerdict,
    StoredOrder,
    current_incarnation,
    judge_save,
    worth_an_event,
)
from app.domain.save_resends import refuse_a_different_resend, resend_window
from app.domain.state_saves import StateSave
from app.domain.state_snapshots import checkpoint_after
from app.events import record_event
from app.history_reads import history_rows
from app.models import ConversationMessage, Supervisor, SupervisorStateRow
from app.schemas import Schema, Timestamp
from app.state_reads import CheckpointView, checkpoint_view
from app.state_rows import aware, find_state, refuse_foreign_supervisor, state_snapshot

SAVING_ROLES: Final = (Role.SUPERVISOR, Role.ADMIN)


class StateSaved(Schema):
    """What a save did: `applied` false means the stored save was sent again (nothing written)."""

    task_id: uuid.UUID
    incarnation: int = Field(description="The incarnation of the stored save")
    state_version: int = Field(description="The stateVersion of the stored save")
    applied: bool
    history_length: int
    checkpoint: CheckpointView | None
    saved_at: Timestamp


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
        saved_at=aware(values["updated_at"]),
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


__all__ = [
    "SAVING_ROLES",
    "StateSaved",
    "require_saver",
    "save_state",
]
