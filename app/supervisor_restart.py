"""Restarting a supervisor: a person's or operator's decision, carried to its daemon.

**Restart** (`restart`) bumps the incarnation (fencing the running one: it is no longer
alive until the new incarnation reports; `app.incarnations.reincarnate`), queues a
`restart_supervisor` command for its daemon, and records `supervisor_restart_requested`
(counted as `supervisor_restarts_total`). Sending the incarnation to replace makes a retry
safe: a restart of an incarnation already replaced by a restart answers that restart again.
At `MAX_INCARNATION` there is no next incarnation to issue: INCARNATION_NOT_ISSUED (409) says
so and what to do, and nothing is restarted.

The contract row is locked first, as every writer of a contract does, so saves, claims and
restarts of one contract's supervisors take turns; only then the supervisor's
`supervisor_states` and `supervisors` rows.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.contract_rows import CONTRACT_ID_FIELD, lock_contract, refuse_if_closed
from app.daemon_commands import queue_command
from app.db import UnitOfWork
from app.domain.errors import Forbidden, SupervisorNotFound, ValidationFailed
from app.domain.records import EventType
from app.domain.restoration import restart_notice
from app.events import record_event
from app.incarnations import latest_supervisor_task, lock_supervisor, reincarnate
from app.models import DaemonCommand
from app.schemas import Schema
from app.state_rows import find_state, refuse_foreign_supervisor

RESTART_COMMAND: Final = "restart_supervisor"
MAX_REASON: Final = 2000
RESTARTING_ROLES: Final = (Role.USER, Role.ADMIN)


class RestartRequested(Schema):
    """A restart was asked of the supervisor's daemon (202)."""

    requested: bool
    task_id: uuid.UUID
    command_id: int = Field(description="The `restart_supervisor` daemon command")
    incarnation: int = Field(description="The new incarnation the restarted supervisor uses")
    previous_incarnation: int = Field(description="The incarnation replaced (now fenced)")
    notice: str = Field(
        description="What the restarted supervisor must do: send the new incarnation with every "
        "heartbeat and save (a save without it is fenced)"
    )


def _earlier_restart(
    session: Session, contract_id: uuid.UUID, task_id: uuid.UUID, replaced: int
) -> DaemonCommand | None:
    """The restart command that replaced incarnation `replaced` of the supervisor, if one did."""
    recent = session.scalars(
        select(DaemonCommand)
        .where(DaemonCommand.contract_id == contract_id, DaemonCommand.command == RESTART_COMMAND)
        .order_by(DaemonCommand.id.desc())
        .limit(100)
    )
    for command in recent:
        payload = command.payload if isinstance(command.payload, dict) else {}
        if payload.get("taskId") == str(task_id) and payload.get("previousIncarnation") == replaced:
            return command
    return None


def restart(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    now: datetime,
    *,
    task_id: uuid.UUID | None = None,
    reason: str | None = None,
    incarnation: int | None = None,
) -> RestartRequested:
    """Restart the contract's supervisor (`task_id`'s, or the one heard from last); see the
    module docstring. SUPERVISOR_NOT_FOUND when it has neither reported nor saved state."""
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    if caller.role not in RESTARTING_ROLES:
        raise Forbidden("restart a supervisor", caller.role.value, [r.value for r in RESTARTING_ROLES])
    refuse_if_closed(contract, "supervisor restarts", CONTRACT_ID_FIELD)
    if reason is not None and (len(reason) > MAX_REASON or "\x00" in reason):
        raise ValidationFailed(
            f"reason is at most {MAX_REASON} characters, without NUL.",
            details={"field": "reason", "limit": MAX_REASON},
        )
    if task_id is not None:
        refuse_foreign_supervisor(session, contract.id, task_id)
    chosen = task_id or latest_supervisor_task(session, contract.id)
    row = find_state(session, contract.id, chosen, lock=True)
    chosen = chosen or (row.task_id if row is not None else None)
    record = lock_supervisor(session, chosen) if chosen is not None else None
    if chosen is None or (record is None and row is None):
        raise SupervisorNotFound(
            contract.id,
            f"Contract {contract.id} has no supervisor to restart: none has sent a heartbeat or "
            "saved its state" + (f" as task {task_id}." if task_id is not None else "."),
        )
    current = record.incarnation if record is not None else (row.incarnation if row is not None else 1)
    if incarnation is not None and incarnation != current:
        earlier = _earlier_restart(session, contract.id, chosen, incarnation)
        if earlier is not None:
            return RestartRequested(
                requested=True,
                task_id=chosen,
                command_id=earlier.id,
                incarnation=int(earlier.payload["newIncarnation"]),
                previous_incarnation=incarnation,
                notice=restart_notice(int(earlier.payload["newIncarnation"])),
            )
        raise ValidationFailed(
            f"Incarnation {incarnation} of supervisor {chosen} is not the one in force ({current}) and "
            f"no restart replaced it. Restart incarnation {current} if a restart is still wanted.",
            details={"field": "incarnation", "incarnation": incarnation, "currentIncarnation": current},
        )
    given = reincarnate(session, contract, chosen, row, now, alive=False)
    why = reason or f"restart requested by a {caller.role.value}"
    command = queue_command(
        uow,
        contract.id,
        RESTART_COMMAND,
        {
            "taskId": str(chosen),
            "newIncarnation": given.new,
            "previousIncarnation": given.previous,
            "reason": why,
            "daemonId": given.daemon_id,
            "host": given.host,
        },
        now,
        daemon_id=given.daemon_id,
        task_id=chosen,
    )
    record_event(
        session,
        contract.id,
        EventType.SUPERVISOR_RESTART_REQUESTED,
        {
            "taskId": str(chosen),
            "previousIncarnation": given.previous,
            "newIncarnation": given.new,
            "commandId": command.id,
            "reason": why,
            "requestedBy": caller.role.value,
        },
        now,
    )
    return RestartRequested(
        requested=True,
        task_id=chosen,
        command_id=command.id,
        incarnation=given.new,
        previous_incarnation=given.previous if given.previous is not None else current,
        notice=restart_notice(given.new),
    )


__all__ = ["MAX_REASON", "RESTARTING_ROLES", "RESTART_COMMAND", "RestartRequested", "restart"]
