"""Git worktrees daemons create per contract, and the commands we send daemons about them.

A daemon reports each worktree it creates; when a contract completes, its open worktrees are
released and the daemon is told (through the daemon-command outbox) to remove them and to
stop the contract's supervisors. Commands are rows committed with the decision and published
to the daemons' queue afterwards, so a broker outage delays a command but never loses it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update

from app.auth import Caller
from app.broker import publish_daemon_commands as publish_to_daemons
from app.contract_rows import lock_contract, refuse_if_closed, touch
from app.db import UnitOfWork, unit_of_work
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.models import Contract, ContractTask, ContractWorktree, DaemonCommand, utcnow


def record_worktree(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, *, path: str, now: datetime
) -> ContractWorktree:
    """Remember a worktree so completion can release it; the same path twice is one worktree.

    A closed contract's cleanup has run already, so a worktree recorded now would never be
    released: it is refused (the sender sees why).
    """
    contract = lock_contract(uow.session, caller, contract_id)
    refuse_if_closed(contract, "worktrees")
    existing = uow.session.scalars(
        select(ContractWorktree).where(
            ContractWorktree.contract_id == contract.id, ContractWorktree.path == path
        )
    ).first()
    if existing is not None:
        return existing
    wt = ContractWorktree(contract_id=contract.id, path=path, created_at=now)
    uow.session.add(wt)
    touch(contract, now)
    uow.session.flush()
    record_event(
        uow.session, contract.id, EventType.WORKTREE_CREATED, {"worktreeId": str(wt.id), "path": path}, now
    )
    return wt


def release_for_completion(uow: UnitOfWork, contract: Contract, now: datetime) -> tuple[int, int]:
    """Release open worktrees and stop running supervisors; returns (worktrees, supervisors).

    Each release and stop becomes a daemon command row in this transaction.
    """
    worktrees = list(
        uow.session.scalars(
            select(ContractWorktree).where(
                ContractWorktree.contract_id == contract.id, ContractWorktree.released_at.is_(None)
            )
        )
    )
    for wt in worktrees:
        wt.released_at = now
        uow.session.add(
            DaemonCommand(
                contract_id=contract.id,
                command="remove_worktree",
                payload={"worktreeId": str(wt.id), "path": wt.path},
                created_at=now,
            )
        )
    running_supervisors = (
        ContractTask.contract_id == contract.id,
        ContractTask.is_supervisor.is_(True),
        ContractTask.status == TaskStatus.RUNNING,
    )
    supervisors = uow.session.scalars(select(ContractTask.id).where(*running_supervisors)).all()
    for sup_id in supervisors:
        uow.session.add(
            DaemonCommand(
                contract_id=contract.id,
                command="stop_supervisor",
                payload={"taskId": str(sup_id)},
                created_at=now,
            )
        )
    uow.session.execute(
        update(ContractTask)
        .where(*running_supervisors)
        .values(status=TaskStatus.DONE.value, updated_at=now, completed_at=now)
    )
    return len(worktrees), len(supervisors)


def publish_daemon_commands(contract_id: uuid.UUID | None = None) -> int:
    """Publish unpublished commands from the outbox to the daemon command queue.

    At least once: a crash between publish and commit republishes, and every command
    carries its outbox id so a daemon can ignore one it already carried out. Rows are
    claimed with SKIP LOCKED, so overlapping publishers never send one twice.
    """
    with unit_of_work() as uow:
        query = (
            select(DaemonCommand)
            .where(DaemonCommand.published_at.is_(None))
            .order_by(DaemonCommand.id)
            .with_for_update(skip_locked=True)
        )
        if contract_id is not None:
            query = query.where(DaemonCommand.contract_id == contract_id)
        commands = list(uow.session.scalars(query))
        if not commands:
            return 0
        publish_to_daemons(
            [
                {
                    "commandId": cmd.id,
                    "contractId": str(cmd.contract_id),
                    "command": cmd.command,
                    "payload": cmd.payload,
                }
                for cmd in commands
            ]
        )
        now = utcnow()
        for cmd in commands:
            cmd.published_at = now
    return len(commands)


__all__ = ["publish_daemon_commands", "record_worktree", "release_for_completion"]
