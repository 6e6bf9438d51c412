"""Commands for agent daemons: one way to decide one, so each lands in its daemon's queue.

A command is a `daemon_commands` row written in the transaction that decided it (an outbox:
published to the broker after commit by `contracts.publish_daemon_commands`, and readable by
its daemon over HTTP), so a broker outage delays a command but never loses it. A command
names the daemon it is for when we know it: the one given, else the daemon whose heartbeats
last spoke for the contract's supervisor.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import UnitOfWork
from app.models import DaemonCommand, Supervisor
from app.queues import TaskName


def daemon_of(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID | None = None) -> str | None:
    """The daemon last heard running the contract's supervisor (`task_id`'s, if given)."""
    query = select(Supervisor.daemon_id).where(
        Supervisor.contract_id == contract_id, Supervisor.daemon_id.is_not(None)
    )
    if task_id is not None:
        query = query.where(Supervisor.task_id == task_id)
    return session.scalars(query.order_by(Supervisor.last_received_at.desc()).limit(1)).first()


def queue_command(
    uow: UnitOfWork,
    contract_id: uuid.UUID,
    command: str,
    payload: dict[str, Any],
    now: datetime,
    *,
    daemon_id: str | None = None,
    task_id: uuid.UUID | None = None,
) -> DaemonCommand:
    """Write a command row and have it published once this transaction commits.

    Flushed, so the caller can answer with its id (the daemon deduplicates by it).
    """
    if daemon_id is None:
        daemon_id = daemon_of(uow.session, contract_id, task_id)
    row = DaemonCommand(
        contract_id=contract_id, command=command, payload=payload, created_at=now, daemon_id=daemon_id
    )
    uow.session.add(row)
    uow.session.flush()
    uow.dispatch_after_commit(TaskName.PUBLISH_DAEMON_COMMANDS, {"contractId": str(contract_id)})
    return row


__all__ = ["daemon_of", "queue_command"]
