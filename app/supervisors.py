"""Supervisors as callers see them, and the sweep that declares the silent ones dead.

- `supervisor_status`, `heartbeat_history`: owner-scoped reads (a contract the caller cannot
  see answers CONTRACT_NOT_FOUND, exactly like a missing one). The daemons these supervisors
  run are listed by `app.daemons`.
- `require_live_supervisor`: what a command that needs a live supervisor calls first:
  SUPERVISOR_NOT_FOUND when none ever sent a heartbeat, SUPERVISOR_DEAD (with when it was
  last heard) when it was declared dead or has been silent longer than the timeout.
- `no_supervisor`: the SUPERVISOR_NOT_FOUND of the status read and of the commands above.
  When the only heartbeats received were fenced (a first one naming an incarnation never
  issued), it says so: how many, when, which task, incarnation and daemon, and what to do.
- `detect_dead_supervisors`: the beat sweep. A supervisor is dead when nothing was *received*
  from it for `heartbeat_timeout_seconds` (our clock, never the daemon's). Declaring it dead
  records `supervisor_state_changed` (to `interrupted`) and `supervisor_dead`, bumps its
  incarnation (so its late heartbeats are fenced) and tells its daemon. Rows are claimed with
  `FOR UPDATE SKIP LOCKED` and re-checked under the lock, so the sweep is safe to run twice
  and to overlap: a supervisor is declared dead once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from pydantic import Field
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.orm import Session

from app.auth import Caller
from app.contract_rows import CONTRACT_ID_FIELD, get_contract, lock_contract, refuse_if_closed
from app.daemon_commands import NewCommand, queue_command, queue_commands
from app.db import UnitOfWork
from app.domain.errors import SupervisorDead, SupervisorNotFound
from app.domain.incarnations import incarnation_after_death
from app.domain.liveness import declare_dead, is_dead
from app.domain.records import EventType
from app.domain.supervisors import SupervisorRecord
from app.events import record_event
from app.heartbeat_fencing import FENCED_COMMAND, fenced_payload
from app.heartbeat_retention import RETENTION
from app.heartbeat_store import STATE_CHANGED, SUPERVISOR_COLUMNS, supervisor_record
from app.models import DaemonCommand, Supervisor, SupervisorHeartbeat
from app.pending_writes import hold_event
from app.schemas import Schema, Timestamp
from app.state_reads import StoredStateSummary, stored_summary
from app.state_rows import find_state

SYNC_COMMAND: Final = "sync_supervisor_state"
RESTART_COMMAND: Final = "restart_supervisor"  # as app.supervisor_restart queues it
DEAD_SWEEP_BATCH: Final = 500
# A contract's heartbeat history (`GET .../supervisor/heartbeats`, `ContractsAPI.supervisor_heartbeats`).
HEARTBEATS_PAGE: Final = 50
MAX_HEARTBEATS_PAGE: Final = 1000
MAX_FENCED_SOURCES: Final = 10  # the (task, incarnation, daemon) a SUPERVISOR_NOT_FOUND lists
# The event type the dead sweep writes, snake_case like `app.domain.records.EventType`.
SUPERVISOR_DEAD: Final = EventType.SUPERVISOR_DEAD.value

_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]


# --- answers --------------------------------------------------------------------------------


class SupervisorStatus(Schema):
    """A contract's supervisor: its newest state, and whether it is alive."""

    task_id: uuid.UUID
    contract_id: uuid.UUID
    state: str = Field(
        description="initializing, idle, working, waiting_for_user, waiting_for_tasks, "
        "blocked, completed, failed or interrupted"
    )
    phase: str
    current_activity: str
    progress: int = Field(description="0 to 100")
    pending_task_ids: list[str]
    last_heartbeat: Timestamp | None = Field(
        description="The daemon's own timestamp of the heartbeat whose state this is; null whenever "
        "the server issued a new incarnation (declared dead, restarted, claimed by a restoration) "
        "until that incarnation's first heartbeat arrives (lastReceivedAt still says when one was "
        "last received)"
    )
    last_received_at: Timestamp = Field(description="When the server last received a heartbeat of it")
    incarnation: int = Field(description="Its current incarnation; heartbeats of older ones are fenced")
    alive: bool = Field(description="A heartbeat was received within the heartbeat timeout")
    dead_at: Timestamp | None = Field(description="When it was declared dead, if it was")
    daemon_id: str | None
    host: str | None


class HeartbeatRecord(Schema):
    """One heartbeat as received and kept (the last 24 hours)."""

    id: uuid.UUID
    task_id: uuid.UUID
    state: str
    phase: str
    current_activity: str
    progress: int
    pending_task_ids: list[str]
    timestamp: Timestamp = Field(description="The daemon's timestamp")
    received_at: Timestamp = Field(description="When the server received it")
    incarnation: int | None = Field(description="As sent (null: the current one)")
    fenced: bool = Field(description="Sent by an incarnation that had been replaced: changed nothing")
    daemon_id: str | None
    host: str | None


class HeartbeatList(Schema):
    heartbeats: list[HeartbeatRecord] = Field(description="Newest first")


class HeartbeatItemResult(Schema):
    index: int = Field(description="Position in the list sent")
    id: uuid.UUID | None = Field(description="The heartbeat's id (derived when it was sent without one)")
    status: Literal["accepted", "refused"]
    code: str | None = Field(default=None, description="Why it was refused (VALIDATION_FAILED, ...)")
    field: str | None = Field(default=None, description="The field to fix")
    message: str | None = None


class HeartbeatsAccepted(Schema):
    """Heartbeats queued (202): the accepted ones are in the broker; refused ones say why."""

    accepted: int
    refused: int
    results: list[HeartbeatItemResult]


class SyncRequested(Schema):
    """The supervisor's daemon was asked to send its full state now."""

    requested: bool
    task_id: uuid.UUID
    state: str
    incarnation: int
    last_received_at: Timestamp
    command_id: int = Field(description="The `sync_supervisor_state` daemon command (its outbox id)")
    stored_state: StoredStateSummary | None = Field(
        description="The persistent state stored so far (null: none saved yet); the daemon's answer "
        "arrives as a newer save"
    )


# --- reads ----------------------------------------------------------------------------------


def _latest(session: Session, contract_id: uuid.UUID) -> SupervisorRecord | None:
    """The contract's supervisor: the one heard from most recently."""
    row = session.execute(
        select(*SUPERVISOR_COLUMNS)
        .where(Supervisor.contract_id == contract_id)
        .order_by(Supervisor.last_received_at.desc())
        .limit(1)
    ).first()
    return supervisor_record(row) if row is not None else None


def _alive(record: SupervisorRecord, now: datetime, timeout: timedelta) -> bool:
    """Alive as stored and not silent past the timeout (even before the sweep has run)."""
    return record.alive and not is_dead(record, now, timeout)


def status_view(record: SupervisorRecord, now: datetime, timeout: timedelta) -> SupervisorStatus:
    return SupervisorStatus(
        task_id=record.task_id,
        contract_id=record.contract_id,
        state=record.state.value,
        phase=record.phase,
        current_activity=record.current_activity,
        progress=record.progress,
        pending_task_ids=list(record.pending_task_ids),
        last_heartbeat=record.sent_at,
        last_received_at=record.last_received_at,
        incarnation=record.incarnation,
        alive=_alive(record, now, timeout),
        dead_at=record.dead_at,
        daemon_id=record.daemon_id,
        host=record.host,
    )


def no_supervisor(session: Session, contract_id: uuid.UUID, now: datetime) -> SupervisorNotFound:
    """SUPERVISOR_NOT_FOUND for a contract no supervisor is recorded for, saying what was heard.

    A supervisor is recorded by its first heartbeat that counts. Heartbeats that were all
    fenced (a first one naming an incarnation the server never issued) are kept in the history
    and start nothing, and "none has sent a heartbeat" sent the operator looking for a daemon
    that was in fact sending. So the history `GET .../supervisor/heartbeats` shows (the last 24
    hours) is read, only on the way to this 404: how many were fenced, when, and which task,
    incarnation and daemon they named (`MAX_FENCED_SOURCES` of them, the newest first).
    """
    h = SupervisorHeartbeat
    fenced = (h.contract_id == contract_id, h.fenced.is_(True), h.received_at >= now - RETENTION)
    count, first, last = session.execute(
        select(func.count(), func.min(h.received_at), func.max(h.received_at)).where(*fenced)
    ).one()
    if not count:
        return SupervisorNotFound(contract_id)
    newest = func.max(h.received_at)
    sources = session.execute(
        select(h.task_id, h.incarnation, h.daemon_id, func.count(), func.min(h.received_at), newest)
        .where(*fenced)
        .group_by(h.task_id, h.incarnation, h.daemon_id)
        .order_by(newest.desc())
        .limit(MAX_FENCED_SOURCES)
    ).all()
    heard = (
        f"the heartbeat received for it at {_utc(first).isoformat()} was fenced, so it started none"
        if count == 1
        else f"the {count} heartbeats received for it since {_utc(first).isoformat()} were all fenced, "
        "so none started one"
    )
    named = "; ".join(_source(task, inc, daemon, n, at) for task, inc, daemon, n, _, at in sources[:3])
    if len(sources) > 3:
        named += "; the others are listed in details.fenced"
    error = SupervisorNotFound(
        contract_id,
        f"Contract {contract_id} has no supervisor: {heard}. {named[0].upper()}{named[1:]}. A "
        "supervisor's first heartbeat names no incarnation or incarnation 1; only a restoration or a "
        "restart issues a later one. Start the supervisor with no incarnation or incarnation 1, then "
        "retry (GET .../supervisor/heartbeats lists what was received).",
    )
    error.details.update(
        {
            "fencedHeartbeats": count,
            "firstReceivedAt": _utc(first).isoformat(),
            "lastReceivedAt": _utc(last).isoformat(),
            "fenced": [
                {
                    "taskId": str(task),
                    "incarnation": inc,
                    "daemonId": daemon,
                    "heartbeats": n,
                    "firstReceivedAt": _utc(since).isoformat(),
                    "lastReceivedAt": _utc(at).isoformat(),
                }
                for task, inc, daemon, n, since, at in sources
            ],
        }
    )
    return error


def _source(task: uuid.UUID, incarnation: int | None, daemon: str | None, count: int, last: datetime) -> str:
    """One (task, incarnation, daemon) whose heartbeats were fenced, in words."""
    named = f"incarnation {incarnation}" if incarnation is not None else "no incarnation"
    sender = f"daemon {daemon}" if daemon is not None else "a daemon that gave no id"
    times = "1 heartbeat" if count == 1 else f"{count} heartbeats"
    return f"task {task} named {named} from {sender} ({times}, the last received at {_utc(last).isoformat()})"


def _utc(at: datetime) -> datetime:
    """A time read back by an aggregate (SQLite gives it without its zone) in UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def supervisor_status(
    session: Session, caller: Caller, contract_id: uuid.UUID, now: datetime, timeout: timedelta
) -> SupervisorStatus:
    contract = get_contract(session, caller, contract_id)
    record = _latest(session, contract.id)
    if record is None:
        raise no_supervisor(session, contract.id, now)
    return status_view(record, now, timeout)


def require_live_supervisor(
    session: Session, contract_id: uuid.UUID, now: datetime, timeout: timedelta
) -> SupervisorRecord:
    """The contract's live supervisor, or SUPERVISOR_NOT_FOUND (`no_supervisor`: what was heard,
    if anything) / SUPERVISOR_DEAD (with when it was last heard). For commands that need a
    supervisor to act on them."""
    record = _latest(session, contract_id)
    if record is None:
        raise no_supervisor(session, contract_id, now)
    if not _alive(record, now, timeout):
        # Not alive as stored: the incarnation in force was issued already (a restart or the
        # sweep); alive but silent: the sweep has not bumped it yet.
        incarnation = record.incarnation if not record.alive else incarnation_after_death(record.incarnation)
        restarted = None if record.alive else _restart_requested_at(session, record)
        raise SupervisorDead(
            contract_id, record.task_id, record.last_received_at, record.dead_at, incarnation, restarted
        )
    return record


def _restart_requested_at(session: Session, record: SupervisorRecord) -> datetime | None:
    """When the restart that issued the incarnation in force was requested, if one did."""
    recent = session.execute(
        select(DaemonCommand.payload, DaemonCommand.created_at)
        .where(DaemonCommand.contract_id == record.contract_id, DaemonCommand.command == RESTART_COMMAND)
        .order_by(DaemonCommand.id.desc())
        .limit(20)
    )
    for payload, created_at in recent:
        if (
            isinstance(payload, dict)
            and payload.get("taskId") == str(record.task_id)
            and payload.get("newIncarnation") == record.incarnation
        ):
            at: datetime = created_at
            return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return None


def heartbeat_history(
    session: Session, caller: Caller, contract_id: uuid.UUID, limit: int, now: datetime
) -> HeartbeatList:
    """The contract's heartbeats of the last 24 hours, newest (by receive time) first."""
    contract = get_contract(session, caller, contract_id)
    h = SupervisorHeartbeat
    rows = session.scalars(
        select(h)
        .where(h.contract_id == contract.id, h.received_at >= now - RETENTION)
        .order_by(h.received_at.desc(), h.sent_at.desc())
        .limit(limit)
    )
    return HeartbeatList(
        heartbeats=[
            HeartbeatRecord(
                id=r.id,
                task_id=r.task_id,
                state=r.state,
                phase=r.phase,
                current_activity=r.current_activity,
                progress=r.progress,
                pending_task_ids=list(r.pending_task_ids or []),
                timestamp=r.sent_at,
                received_at=r.received_at,
                incarnation=r.incarnation,
                fenced=r.fenced,
                daemon_id=r.daemon_id,
                host=r.host,
            )
            for r in rows
        ]
    )


def request_sync(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, now: datetime, timeout: timedelta
) -> SyncRequested:
    """Ask the supervisor's daemon to send its full state now (seed 3.7): a
    `sync_supervisor_state` command to its daemon's queue and a `supervisor_sync_requested`
    event; answers with the command's id and the state stored so far.

    Needs a live supervisor: SUPERVISOR_NOT_FOUND or SUPERVISOR_DEAD otherwise; a closed
    contract's supervisors were told to stop, so it is refused there.
    """
    contract = lock_contract(uow.session, caller, contract_id)
    refuse_if_closed(contract, "supervisor syncs", CONTRACT_ID_FIELD)
    record = require_live_supervisor(uow.session, contract.id, now, timeout)
    command = queue_command(
        uow,
        contract.id,
        SYNC_COMMAND,
        {
            "taskId": str(record.task_id),
            "incarnation": record.incarnation,
            "daemonId": record.daemon_id,
            "host": record.host,
        },
        now,
        daemon_id=record.daemon_id,
        task_id=record.task_id,
    )
    record_event(
        uow.session,
        contract.id,
        EventType.SUPERVISOR_SYNC_REQUESTED,
        {"taskId": str(record.task_id), "incarnation": record.incarnation, "commandId": command.id},
        now,
    )
    stored = find_state(uow.session, contract.id, record.task_id)
    return SyncRequested(
        requested=True,
        task_id=record.task_id,
        state=record.state.value,
        incarnation=record.incarnation,
        last_received_at=record.last_received_at,
        command_id=command.id,
        stored_state=stored_summary(stored) if stored is not None else None,
    )


# --- the dead sweep -------------------------------------------------------------------------


def detect_dead_supervisors(
    uow: UnitOfWork, now: datetime, timeout: timedelta, limit: int = DEAD_SWEEP_BATCH
) -> list[SupervisorRecord]:
    """Declare dead the supervisors nothing was received from for `timeout`; at most `limit`.

    Returns the records as they are after the declaration. Claimed with SKIP LOCKED (a row an
    ingesting worker holds is being proven alive right now) and written only if its write
    counter did not move, so an overlapping sweep or a heartbeat that just arrived wins.
    """
    cutoff = now - timeout
    rows = uow.session.execute(
        select(*SUPERVISOR_COLUMNS)
        .where(Supervisor.alive.is_(True), Supervisor.last_received_at < cutoff)
        .order_by(Supervisor.last_received_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    declared: list[SupervisorRecord] = []
    told: list[NewCommand] = []
    for row in rows:
        record = supervisor_record(row)
        if not is_dead(record, now, timeout):
            continue
        after, changes = declare_dead(record, now)
        written = uow.session.execute(
            update(_SUPERVISORS)
            .where(_SUPERVISORS.c.task_id == record.task_id, _SUPERVISORS.c.version == record.version)
            .values(
                incarnation=after.incarnation,
                version=bindparam("new_version"),
                state=after.state.value,
                alive=False,
                dead_at=now,
                sent_at=None,
                updated_at=now,
            ),
            {"new_version": after.version},
        )
        if not getattr(written, "rowcount", 0):
            continue
        for change in changes:
            hold_event(
                uow.session,
                change.contract_id,
                STATE_CHANGED,
                {"contractId": str(change.contract_id), **change.payload()},
                now,
            )
        hold_event(
            uow.session,
            record.contract_id,
            SUPERVISOR_DEAD,
            {
                "contractId": str(record.contract_id),
                "taskId": str(record.task_id),
                "lastReceivedAt": record.last_received_at.isoformat(),
                "lastState": record.state.value,
                "deadIncarnation": record.incarnation,
                "newIncarnation": after.incarnation,
                "timeoutSeconds": timeout.total_seconds(),
            },
            now,
        )
        if after.incarnation != record.incarnation:  # at MAX_INCARNATION nothing is fenced
            told.append(
                NewCommand(
                    record.contract_id,
                    FENCED_COMMAND,
                    fenced_payload(
                        record.task_id, record.incarnation, after.incarnation, record.daemon_id, record.host
                    ),
                    daemon_id=record.daemon_id,
                    task_id=record.task_id,
                )
            )
        declared.append(after)
    # Each to the daemon that ran the supervisor, in one statement, published after commit.
    queue_commands(uow, told, now)
    return declared


def supervisors_of(session: Session, contract_id: uuid.UUID) -> Sequence[SupervisorRecord]:
    rows = session.execute(select(*SUPERVISOR_COLUMNS).where(Supervisor.contract_id == contract_id))
    return [supervisor_record(r) for r in rows]


__all__ = [
    "HEARTBEATS_PAGE",
    "MAX_HEARTBEATS_PAGE",
    "SYNC_COMMAND",
    "HeartbeatItemResult",
    "HeartbeatList",
    "HeartbeatRecord",
    "HeartbeatsAccepted",
    "SupervisorStatus",
    "SyncRequested",
    "detect_dead_supervisors",
    "heartbeat_history",
    "no_supervisor",
    "request_sync",
    "require_live_supervisor",
    "status_view",
    "supervisor_status",
    "supervisors_of",
]
