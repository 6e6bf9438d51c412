"""Git worktrees daemons create per contract, and the commands we send daemons about them.

A daemon reports each worktree it creates and removes, naming itself (`daemonId`). A worktree
is therefore in one of three states:

- **open**: reported created, not yet asked about;
- **released**: the service asked its daemon to remove it (`remove_worktree` on that daemon's
  queue) and has not heard that it did; `released_at` is when it last asked;
- **removed**: the daemon reported it removed (`removed_at`); nothing more is asked.

Completion releases a contract's open worktrees (`release_for_completion`). A worktree that
stays on a disk after its contract closed (completed, failed or archived: the daemon was down,
the command lost with a dead daemon, a failed contract never released it) is an orphan: the
cleanup (`ask_orphans`, a beat sweep and an admin endpoint) asks its daemon again, at most once
per `[worktrees] cleanup_interval_seconds` per worktree (`released_at` is that "last asked";
no other column is needed), until the daemon reports it removed or the contract is deleted.

Commands are rows committed with the decision and published to each daemon's own queue
afterwards (`app.daemon_commands`), so a broker outage delays a command but never loses it.
Every writer of a worktree row holds its contract's row lock first (reports, completion, the
cleanup), so they never deadlock and never decide twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import Field
from sqlalchemy import ColumnElement, Engine, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.auth import Caller
from app.broker import Sender
from app.config import Settings, get_settings
from app.contract_rows import get_contract, lock_contract, refuse_if_closed, touch
from app.daemon_commands import NewCommand, queue_commands
from app.db import UnitOfWork, unit_of_work
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.domain.records import EventType, TaskStatus
from app.events import record_event
from app.models import Contract, ContractTask, ContractWorktree, utcnow
from app.schemas import Schema, Timestamp, WorktreeCounts
from app.worktree_paths import MAX_PATH, check_worktree_path

REMOVE_COMMAND: Final = "remove_worktree"
STOP_COMMAND: Final = "stop_supervisor"
CLOSED: Final = (Status.COMPLETED.value, Status.FAILED.value, Status.ARCHIVED.value)
MAX_LISTED: Final = 1000
MAX_CLEANUP: Final = 5000
CLEANUP_CHUNK: Final = 200


class WorktreeState(StrEnum):
    OPEN = "open"
    RELEASED = "released"
    REMOVED = "removed"


def state_of(wt: ContractWorktree) -> WorktreeState:
    if wt.removed_at is not None:
        return WorktreeState.REMOVED
    return WorktreeState.RELEASED if wt.released_at is not None else WorktreeState.OPEN


def state_counts(table: Any = ContractWorktree) -> tuple[Any, Any, Any]:
    """The three states as aggregate columns (open, released, removed), for one GROUP BY."""
    removed = table.removed_at.is_not(None)
    released = and_(table.removed_at.is_(None), table.released_at.is_not(None))
    opened = and_(table.removed_at.is_(None), table.released_at.is_(None))
    return (
        func.count().filter(opened),
        func.count().filter(released),
        func.count().filter(removed),
    )


# --- answers --------------------------------------------------------------------------------


class WorktreeView(Schema):
    id: uuid.UUID
    path: str
    daemon_id: str | None = Field(description="The daemon that reported it (null: not named)")
    created_at: Timestamp = Field(description="When the service first heard of it")
    released_at: Timestamp | None = Field(
        description="When its daemon was last asked to remove it (completion, then the cleanup)"
    )
    removed_at: Timestamp | None = Field(description="When its daemon reported it removed")
    state: WorktreeState = Field(description="open, released or removed")


class WorktreeList(Schema):
    worktrees: list[WorktreeView] = Field(description=f"Oldest first, at most {MAX_LISTED}")
    counts: WorktreeCounts = Field(description="Every worktree of the contract, by state")


class CleanupItem(Schema):
    worktree_id: uuid.UUID
    contract_id: uuid.UUID
    contract_status: str
    path: str
    daemon_id: str | None = Field(description="The daemon asked (null: none named, the owner's own queue)")
    command_id: int | None = Field(description="The remove_worktree command (null in a dry run)")


class CleanupDaemon(Schema):
    daemon_id: str | None
    worktrees: int


class WorktreeCleanup(Schema):
    """What one cleanup asked (a dry run: would ask) of which daemon."""

    dry_run: bool
    asked: int = Field(description="Worktrees whose daemon was (would be) asked to remove them")
    daemons: list[CleanupDaemon] = Field(description="The same, counted per daemon, most first")
    worktrees: list[CleanupItem]
    more: bool = Field(description="More orphans are due than this call's limit took; call again")
    interval_seconds: float = Field(description="A worktree is asked at most once per this interval")


# --- reports --------------------------------------------------------------------------------


def _first_delivery(
    uow: UnitOfWork,
    contract_id: uuid.UUID,
    principal_id: uuid.UUID,
    message_id: str | None,
    kind: str,
    now: datetime,
) -> bool:
    # Imported here: app.agent_reports imports the completion flow, which imports this module.
    from app.agent_reports import first_delivery

    return first_delivery(uow, contract_id, principal_id, message_id, kind, now)


def _same_daemon(daemon_id: str | None) -> ColumnElement[bool]:
    """Rows a report from `daemon_id` may mean: that daemon's, or ones reported without a daemon."""
    if daemon_id is None:
        return ContractWorktree.id.is_not(None)
    return or_(ContractWorktree.daemon_id == daemon_id, ContractWorktree.daemon_id.is_(None))


def _held(
    session: Session, contract_id: uuid.UUID, path: str, daemon_id: str | None
) -> list[ContractWorktree]:
    """The contract's worktrees at `path` not yet removed, that daemon's first."""
    rows = session.scalars(
        select(ContractWorktree)
        .where(
            ContractWorktree.contract_id == contract_id,
            ContractWorktree.path == path,
            ContractWorktree.removed_at.is_(None),
            _same_daemon(daemon_id),
        )
        .order_by(ContractWorktree.created_at, ContractWorktree.id)
    ).all()
    return sorted(rows, key=lambda wt: wt.daemon_id != daemon_id)


def record_worktree(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    path: str,
    now: datetime,
    daemon_id: str | None = None,
    message_id: str | None = None,
) -> ContractWorktree | None:
    """Remember a worktree so completion can release it; None for a repeated message.

    The same path from the same daemon (or one of them unnamed) is one worktree, and a report
    that names the daemon fills it in; two daemons may each hold the same path (two hosts).
    A closed contract's cleanup has run already, so a worktree recorded now would never be
    released: it is refused (the sender sees why).
    """
    contract = lock_contract(uow.session, caller, contract_id)
    if not _first_delivery(uow, contract.id, caller.principal_id, message_id, "worktree_created", now):
        return None
    refuse_if_closed(contract, "worktrees")
    held = _held(uow.session, contract.id, path, daemon_id)
    if held:
        existing = held[0]
        if existing.daemon_id is None and daemon_id is not None:
            existing.daemon_id = daemon_id
        return existing
    wt = ContractWorktree(contract_id=contract.id, path=path, created_at=now, daemon_id=daemon_id)
    uow.session.add(wt)
    touch(contract, now)
    uow.session.flush()
    record_event(
        uow.session,
        contract.id,
        EventType.WORKTREE_CREATED,
        {"worktreeId": str(wt.id), "path": path, "daemonId": daemon_id},
        now,
    )
    return wt


def record_worktree_removed(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    path: str,
    now: datetime,
    daemon_id: str | None = None,
    message_id: str | None = None,
) -> ContractWorktree | None:
    """A daemon removed a worktree: mark it removed, record `worktree_removed`; None for a
    repeated message.

    Allowed on closed contracts (a daemon removes worktrees after completion). A path reported
    removed again does nothing more. A path never reported created is recorded as removed all
    the same (`known: false` in the event): the daemon is the authority on its disk, and a lost
    `created` report must not make its removal a dead letter. Without a `daemonId`, a path two
    daemons hold is ambiguous and refused, naming them.
    """
    contract = lock_contract(uow.session, caller, contract_id)
    if not _first_delivery(uow, contract.id, caller.principal_id, message_id, "worktree_removed", now):
        return None
    held = _held(uow.session, contract.id, path, daemon_id)
    holders = sorted({wt.daemon_id or "(unnamed)" for wt in held})
    if daemon_id is None and len(holders) > 1:
        raise ValidationFailed(
            f"Daemons {', '.join(holders)} each hold a worktree at '{path}' on this contract: "
            "name the daemon that removed it (daemonId).",
            details={"path": path, "daemonIds": holders},
        )
    if held:
        wt, known = held[0], True
        if wt.daemon_id is None:
            wt.daemon_id = daemon_id
    else:
        gone = uow.session.scalars(
            select(ContractWorktree)
            .where(
                ContractWorktree.contract_id == contract.id,
                ContractWorktree.path == path,
                _same_daemon(daemon_id),
            )
            .limit(1)
        ).first()
        if gone is not None:
            return gone  # already removed: said twice, recorded once
        wt, known = (
            ContractWorktree(contract_id=contract.id, path=path, created_at=now, daemon_id=daemon_id),
            False,
        )
        uow.session.add(wt)
    wt.removed_at = now
    if Status(contract.status) not in Status.terminal():
        touch(contract, now)
    uow.session.flush()
    record_event(
        uow.session,
        contract.id,
        EventType.WORKTREE_REMOVED,
        {"worktreeId": str(wt.id), "path": path, "daemonId": wt.daemon_id, "known": known},
        now,
    )
    return wt


# --- completion -----------------------------------------------------------------------------


def _remove_command(wt: ContractWorktree, reason: str) -> NewCommand:
    return NewCommand(
        contract_id=wt.contract_id,
        command=REMOVE_COMMAND,
        payload={"worktreeId": str(wt.id), "path": wt.path, "reason": reason},
        daemon_id=wt.daemon_id,
    )


def release_for_completion(uow: UnitOfWork, contract: Contract, now: datetime) -> tuple[int, int]:
    """Release open worktrees and stop running supervisors; returns (worktrees, supervisors).

    Each release goes to the daemon that reported the worktree (the contract's supervisor's
    daemon when it named none), each stop to the daemon running that supervisor: command rows
    in this transaction, written in one statement.
    """
    worktrees = list(
        uow.session.scalars(
            select(ContractWorktree).where(
                ContractWorktree.contract_id == contract.id,
                ContractWorktree.released_at.is_(None),
                ContractWorktree.removed_at.is_(None),
            )
        )
    )
    commands = []
    for wt in worktrees:
        wt.released_at = now
        commands.append(_remove_command(wt, "completion"))
    running_supervisors = (
        ContractTask.contract_id == contract.id,
        ContractTask.is_supervisor.is_(True),
        ContractTask.status == TaskStatus.RUNNING,
    )
    supervisors = uow.session.scalars(select(ContractTask.id).where(*running_supervisors)).all()
    commands.extend(
        NewCommand(contract.id, STOP_COMMAND, {"taskId": str(sup_id)}, task_id=sup_id)
        for sup_id in supervisors
    )
    queue_commands(uow, commands, now)
    uow.session.execute(
        update(ContractTask)
        .where(*running_supervisors)
        .values(status=TaskStatus.DONE.value, updated_at=now, completed_at=now)
    )
    return len(worktrees), len(supervisors)


# --- the cleanup of orphans -----------------------------------------------------------------


def orphan_criteria(now: datetime, interval: timedelta) -> ColumnElement[bool]:
    """Not removed, and never asked or last asked at least `interval` ago (the contract's
    status is judged on the contract row)."""
    return and_(
        ContractWorktree.removed_at.is_(None),
        or_(ContractWorktree.released_at.is_(None), ContractWorktree.released_at <= now - interval),
    )


def _due(now: datetime, interval: timedelta) -> Select[ContractWorktree, str]:
    return (
        select(ContractWorktree, Contract.status)
        .join(Contract, Contract.id == ContractWorktree.contract_id)
        .where(Contract.status.in_(CLOSED), orphan_criteria(now, interval))
    )


@dataclass(frozen=True, slots=True)
class Asked:
    worktree: ContractWorktree
    contract_status: str
    command_id: int | None


def ask_orphans(
    uow: UnitOfWork, now: datetime, interval: timedelta, limit: int, *, dry_run: bool = False
) -> list[Asked]:
    """Ask each orphan's daemon to remove it (`remove_worktree`), at most `limit` worktrees.

    The contracts are claimed with `FOR UPDATE SKIP LOCKED` and their worktrees re-judged under
    that lock (a contract a report or another cleanup holds right now is left to the next run),
    and asking sets `released_at`, so two runs at once or one after the other ask once per
    interval. A dry run reads the same orphans without a lock and writes nothing.
    """
    due = _due(now, interval).order_by(
        ContractWorktree.contract_id, ContractWorktree.created_at, ContractWorktree.id
    )
    if dry_run:
        return [Asked(wt, status, None) for wt, status in uow.session.execute(due.limit(limit))]
    candidates = uow.session.scalars(
        select(ContractWorktree.contract_id)
        .join(Contract, Contract.id == ContractWorktree.contract_id)
        .where(Contract.status.in_(CLOSED), orphan_criteria(now, interval))
        .group_by(ContractWorktree.contract_id)
        .order_by(ContractWorktree.contract_id)
        .limit(limit)
    ).all()
    if not candidates:
        return []
    claimed = uow.session.scalars(
        select(Contract.id)
        .where(Contract.id.in_(candidates), Contract.status.in_(CLOSED))
        .with_for_update(skip_locked=True)
    ).all()
    if not claimed:
        return []
    found = uow.session.execute(due.where(ContractWorktree.contract_id.in_(claimed)).limit(limit)).all()
    for wt, _ in found:
        wt.released_at = now
    rows = queue_commands(uow, [_remove_command(wt, "cleanup") for wt, _ in found], now)
    return [Asked(wt, status, row.id) for (wt, status), row in zip(found, rows, strict=True)]


def any_orphans_due(session: Session, now: datetime, interval: timedelta) -> bool:
    return session.scalar(select(_due(now, interval).exists())) or False


def cleanup_interval(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.worktrees.cleanup_interval_seconds)


def cleanup_orphans(
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    settings: Settings | None = None,
    chunk: int = CLEANUP_CHUNK,
    max_seconds: float = 50.0,
) -> int:
    """The beat sweep: ask orphans' daemons in chunks, one short transaction each, until none
    is due or `max_seconds` passed (the next run goes on). Returns how many were asked."""
    settings = settings or get_settings()
    interval = cleanup_interval(settings)
    deadline = time.monotonic() + max_seconds
    asked = 0
    while True:
        with unit_of_work(sender, engine=engine, settings=settings) as uow:
            done = len(ask_orphans(uow, utcnow(), interval, chunk))
        asked += done
        if done < chunk or time.monotonic() >= deadline:
            return asked


def cleanup_report(
    asked: Iterable[Asked], *, dry_run: bool, more: bool, interval: timedelta
) -> WorktreeCleanup:
    items = [
        CleanupItem(
            worktree_id=a.worktree.id,
            contract_id=a.worktree.contract_id,
            contract_status=a.contract_status,
            path=a.worktree.path,
            daemon_id=a.worktree.daemon_id,
            command_id=a.command_id,
        )
        for a in asked
    ]
    per_daemon: dict[str | None, int] = {}
    for item in items:
        per_daemon[item.daemon_id] = per_daemon.get(item.daemon_id, 0) + 1
    return WorktreeCleanup(
        dry_run=dry_run,
        asked=len(items),
        daemons=[
            CleanupDaemon(daemon_id=d, worktrees=n)
            for d, n in sorted(per_daemon.items(), key=lambda kv: (-kv[1], kv[0] or ""))
        ],
        worktrees=items,
        more=more,
        interval_seconds=interval.total_seconds(),
    )


# --- reads ----------------------------------------------------------------------------------


def _view(wt: ContractWorktree) -> WorktreeView:
    return WorktreeView(
        id=wt.id,
        path=wt.path,
        daemon_id=wt.daemon_id,
        created_at=wt.created_at,
        released_at=wt.released_at,
        removed_at=wt.removed_at,
        state=state_of(wt),
    )


def contract_worktrees(session: Session, caller: Caller, contract_id: uuid.UUID) -> WorktreeList:
    """A contract's worktrees (oldest first) and their counts by state; owner-scoped."""
    contract = get_contract(session, caller, contract_id)
    rows = session.scalars(
        select(ContractWorktree)
        .where(ContractWorktree.contract_id == contract.id)
        .order_by(ContractWorktree.created_at, ContractWorktree.id)
        .limit(MAX_LISTED)
    ).all()
    opened, released, removed = session.execute(
        select(*state_counts()).where(ContractWorktree.contract_id == contract.id)
    ).one()
    return WorktreeList(
        worktrees=[_view(wt) for wt in rows],
        counts=WorktreeCounts(open=int(opened), released=int(released), removed=int(removed)),
    )


def counts_by_daemon(session: Session, caller: Caller) -> dict[str, WorktreeCounts]:
    """Worktrees that name a daemon, counted by state per daemon, of the caller's contracts."""
    query = (
        select(ContractWorktree.daemon_id, *state_counts())
        .where(ContractWorktree.daemon_id.is_not(None))
        .group_by(ContractWorktree.daemon_id)
    )
    if not caller.is_admin:
        query = query.join(Contract, Contract.id == ContractWorktree.contract_id).where(
            Contract.owner_id == caller.owner_id
        )
    return {
        str(daemon): WorktreeCounts(open=int(o), released=int(r), removed=int(x))
        for daemon, o, r, x in session.execute(query)
        if daemon is not None
    }


__all__ = [
    "CLOSED",
    "MAX_CLEANUP",
    "MAX_PATH",
    "REMOVE_COMMAND",
    "STOP_COMMAND",
    "Asked",
    "CleanupDaemon",
    "CleanupItem",
    "WorktreeCleanup",
    "WorktreeCounts",
    "WorktreeList",
    "WorktreeState",
    "WorktreeView",
    "any_orphans_due",
    "ask_orphans",
    "check_worktree_path",
    "cleanup_interval",
    "cleanup_orphans",
    "cleanup_report",
    "contract_worktrees",
    "counts_by_daemon",
    "orphan_criteria",
    "record_worktree",
    "record_worktree_removed",
    "release_for_completion",
    "state_of",
]
