"""Telling a daemon that the worker refused its heartbeats because their task id is taken.

The fronts refuse a heartbeat naming another contract's task id with the field named, so the
sender reads why. One case gets past them: two first heartbeats naming one brand-new task id
on two contracts, judged by two HTTP groups or two API-module processes before either is
stored. Both are answered 202; the worker stores the first and refuses the other, whose only
record would be a dead letter nobody reads while the daemon goes on running a supervisor that
is heard nowhere. So, as a fenced daemon is told (`supervisor_fenced`), the worker queues a
`heartbeat_refused` daemon command in the list's own transaction: one per (daemon, task id,
contract), naming the heartbeats and what to do (start this supervisor with a new task id).
The dead letter is kept as well: it is the inspectable record.

- **Which daemon.** The heartbeat's `daemonId`; without one, the daemon heard last for the
  contract (`daemons_of`, as a fence notice without a daemon is resolved), else the owner's own
  queue.
- **Once.** A (daemon, task id, contract) already told is not told again, so a redelivered
  list (whose first run committed) queues nothing more. A list runs again only after the
  first run ended; two lists refused for the same key at the same instant are serialized
  by SQLite's single writer, and on PostgreSQL by the fold's lock on the holder's
  `supervisors` row (an ordinary-task holder has none: two such lists at once, both past
  the fronts, could each tell).
- **What it says.** Like every refusal of a foreign task id (`app.foreign_tasks`), the
  contract that holds the id is named (`heldBy`) only when it has the same owner as the one
  the heartbeat named; anyone else reads that the id cannot be used on this contract.
- **What a person sees.** A command on a queue is read by a daemon, and the dead letter says
  only "another contract's supervisor or task" until its raw body is opened, so every refusal
  is also logged (`app.heartbeats`, WARNING) with the contract, task id, heartbeats, holder,
  the queue told (or that it was told before) and the reason: an operator watching the
  worker sees the race without a daemon's queue to read, whichever daemon, if any, was named.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import literal, select, union_all

from app.daemon_commands import NewCommand, daemons_of, queue_commands
from app.db import UnitOfWork
from app.models import Contract, ContractTask, DaemonCommand, Supervisor

# What a daemon whose heartbeats were refused for another contract's task id is told.
REFUSED_COMMAND: Final = "heartbeat_refused"

# The ingestion's one logger (`app.heartbeats_pg`, `app.heartbeats_sqlite`).
log = logging.getLogger("app.heartbeats")


@dataclass(frozen=True, slots=True)
class ForeignClaim:
    """A heartbeat the worker refused because another contract holds its task id."""

    contract_id: uuid.UUID
    task_id: uuid.UUID
    heartbeat_id: str
    daemon_id: str | None


# The holder of a task id: (its contract, that contract's owner, whether as its supervisor).
_Holder = tuple[uuid.UUID, str | None, bool]


def tell_refused(uow: UnitOfWork, claims: Sequence[ForeignClaim], now: datetime) -> int:
    """Queue a `heartbeat_refused` command per (daemon, task id, contract) not told before; see
    the module docstring. Returns how many were queued. Runs after the list's writes, in its
    transaction, so a holder the same list made (its first claim on the id) is found."""
    if not claims:
        return 0
    session = uow.session
    contracts = {c.contract_id for c in claims}
    tasks = {c.task_id for c in claims}
    owners, holders = _owners_and_holders(uow, contracts, tasks)
    unnamed = {c.contract_id for c in claims if c.daemon_id is None}
    known = daemons_of(session, unnamed) if unnamed else {}
    grouped: dict[tuple[uuid.UUID, uuid.UUID, str | None], dict[str, None]] = {}  # ids, in order
    held_by: dict[tuple[uuid.UUID, uuid.UUID], _Holder] = {}
    for claim in claims:
        holder = next((h for h in holders.get(claim.task_id, ()) if h[0] != claim.contract_id), None)
        if holder is None:  # no other contract holds it (a row removed meanwhile): nothing to say
            log.warning(
                "heartbeat %s on contract %s refused: task id %s may start a supervisor whose row was "
                "removed meanwhile, and no other contract holds it; nothing queued",
                claim.heartbeat_id,
                claim.contract_id,
                claim.task_id,
            )
            continue
        held_by[(claim.contract_id, claim.task_id)] = holder
        daemon = claim.daemon_id if claim.daemon_id is not None else known.get((claim.contract_id, None))
        grouped.setdefault((claim.contract_id, claim.task_id, daemon), {})[claim.heartbeat_id] = None
    told = _already_told(uow, {contract for contract, _, _ in grouped})
    commands: list[NewCommand] = []
    for (contract_id, task_id, daemon_id), ids in grouped.items():
        holder = held_by[(contract_id, task_id)]
        payload = refused_payload(contract_id, task_id, daemon_id, list(ids), holder, owners.get(contract_id))
        again = (contract_id, task_id, daemon_id) in told
        if not again:
            commands.append(NewCommand(contract_id, REFUSED_COMMAND, payload, daemon_id=daemon_id))
        _log_refusal(payload, holder[0], again)
    queue_commands(uow, commands, now)
    return len(commands)


def _log_refusal(payload: dict[str, Any], holder: uuid.UUID, again: bool) -> None:
    """The refusal for a person: the holder named whatever the owners (operators read this),
    and where the sender was told."""
    daemon_id = payload["daemonId"]
    queue = (
        "the owner's own command queue" if daemon_id is None else f"the command queue of daemon {daemon_id!r}"
    )
    log.warning(
        "heartbeat(s) %s on contract %s refused: task id %s is held by contract %s; %s %s: %s",
        ", ".join(payload["heartbeatIds"]),
        payload["contractId"],
        payload["taskId"],
        holder,
        "already told on" if again else f"{REFUSED_COMMAND} queued for",
        queue,
        payload["reason"],
    )


def refused_payload(
    contract_id: uuid.UUID,
    task_id: uuid.UUID,
    daemon_id: str | None,
    heartbeat_ids: list[str],
    holder: _Holder,
    owner: str | None,
) -> dict[str, Any]:
    """What the daemon reads: the task id and heartbeats refused on this contract, and why, the
    holder named only to the owner of both contracts (`app.foreign_tasks`)."""
    other, other_owner, supervisor = holder
    if owner is not None and owner == other_owner:
        held_by: str | None = str(other)
        how = "as its supervisor" if supervisor else "as a task reported started there"
        reason = (
            f"Task id {task_id} already belongs to contract {other} ({how}); start this supervisor with "
            f"a new task id: heartbeats naming {task_id} on contract {contract_id} are refused."
        )
    else:
        held_by = None
        reason = (
            f"Task id {task_id} cannot be used on contract {contract_id}; start this supervisor with a "
            f"new task id: heartbeats naming {task_id} on this contract are refused."
        )
    return {
        "contractId": str(contract_id),
        "taskId": str(task_id),
        "heartbeatIds": heartbeat_ids,
        "daemonId": daemon_id,
        "heldBy": held_by,
        "reason": reason,
    }


def _owners_and_holders(
    uow: UnitOfWork, contracts: set[uuid.UUID], tasks: set[uuid.UUID]
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, list[_Holder]]]:
    """The owners of the refused heartbeats' contracts, and every holder of their task ids
    (supervisors rows, then ordinary tasks), in one statement."""
    task_ids = sorted(tasks)
    rows = uow.session.execute(
        union_all(
            select(literal("contract"), Contract.id, Contract.id, Contract.owner_id).where(
                Contract.id.in_(sorted(contracts))
            ),
            select(literal("supervisor"), Supervisor.task_id, Supervisor.contract_id, Contract.owner_id)
            .outerjoin(Contract, Contract.id == Supervisor.contract_id)
            .where(Supervisor.task_id.in_(task_ids)),
            select(literal("task"), ContractTask.id, ContractTask.contract_id, Contract.owner_id)
            .outerjoin(Contract, Contract.id == ContractTask.contract_id)
            .where(ContractTask.id.in_(task_ids)),
        )
    )
    owners: dict[uuid.UUID, str] = {}
    holders: dict[uuid.UUID, list[_Holder]] = {}
    for kind, key, contract_id, owner in rows:
        if kind == "contract":
            owners[_uuid(contract_id)] = owner
        else:
            holders.setdefault(_uuid(key), []).append((_uuid(contract_id), owner, kind == "supervisor"))
    for found in holders.values():
        found.sort(key=lambda h: not h[2])  # a supervisors row first: the holder heartbeats meet
    return owners, holders


def _already_told(uow: UnitOfWork, contracts: set[uuid.UUID]) -> set[tuple[uuid.UUID, uuid.UUID, str | None]]:
    """The (contract, task id, daemon) keys these contracts' daemons were already told."""
    if not contracts:
        return set()
    rows = uow.session.execute(
        select(DaemonCommand.contract_id, DaemonCommand.daemon_id, DaemonCommand.payload).where(
            DaemonCommand.command == REFUSED_COMMAND, DaemonCommand.contract_id.in_(sorted(contracts))
        )
    )
    return {
        (_uuid(contract_id), uuid.UUID(str(payload["taskId"])), daemon_id)
        for contract_id, daemon_id, payload in rows
        if isinstance(payload, dict) and payload.get("taskId")
    }


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


__all__ = ["REFUSED_COMMAND", "ForeignClaim", "refused_payload", "tell_refused"]
