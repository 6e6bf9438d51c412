"""A supervisor's stored state row: found, its incarnation in force, its snapshot for the pure rules.

Saving (`app.state_saves`), reading (`app.state_reads`, `app.history_reads`), restoration
(`app.restoration`) and restart (`app.supervisor_restart`) all start from the same
`supervisor_states` row: found the same way (a task's, or the contract's most recently saved
one), missing the same way (SUPERVISOR_NOT_FOUND), another contract's task refused the same
way, and handed to the pure rules in one shape (`state_snapshot`). One module, so they cannot
drift apart.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.errors import SupervisorNotFound
from app.foreign_tasks import refuse_held_task
from app.models import Supervisor, SupervisorStateRow


def aware(value: datetime) -> datetime:
    """A stored time as UTC: SQLite hands back naive datetimes, and every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


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
        "savedAt": aware(row.updated_at).isoformat(),
    }


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


def require_state(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID | None) -> SupervisorStateRow:
    """`find_state`, or SUPERVISOR_NOT_FOUND saying how a state comes to be stored."""
    row = find_state(session, contract_id, task_id)
    if row is None:
        which = f"supervisor {task_id}" if task_id is not None else "any supervisor"
        raise SupervisorNotFound(
            contract_id,
            f"Contract {contract_id} has no stored state for {which}: no supervisor has saved one "
            "(POST .../supervisor/state).",
        )
    return row


def supervisor_incarnation(session: Session, task_id: uuid.UUID) -> int | None:
    """The incarnation the heartbeats' record holds for the supervisor (None: never heard)."""
    return session.scalar(select(Supervisor.incarnation).where(Supervisor.task_id == task_id))


def refuse_foreign_supervisor(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """A task id belongs to one contract: another contract's supervisor (its heartbeats' record
    or its saved state) or ordinary task (one reported started there) is refused, explained
    only to the owner of both (`app.foreign_tasks.refuse_held_task`, the task reports' check too)."""
    refuse_held_task(session, contract_id, task_id)


__all__ = [
    "aware",
    "find_state",
    "refuse_foreign_supervisor",
    "require_state",
    "state_snapshot",
    "supervisor_incarnation",
]
