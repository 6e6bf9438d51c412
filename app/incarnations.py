"""A supervisor's incarnations: issuing the next one, which fences every older one.

Both ways a supervisor is given a new life go through `reincarnate`: a restoration claimed by
its daemon (`app.supervisor_claims`, the daemon is here: `initializing` and alive) and a
restart a person asks for (`app.supervisor_restart`, nobody runs the new incarnation yet:
`interrupted` and not alive until it reports). The `supervisors` row is bumped, or created,
and the new incarnation is above every incarnation stored, the save's own included, so the
new incarnation's first save wins whatever stateVersion it counts from while the older
incarnations' heartbeats and saves are fenced. It is never beyond `MAX_INCARNATION`
(`app.domain.incarnations.next_incarnation`): past it the claim or restart is refused
(INCARNATION_NOT_ISSUED, 409) before anything is written.

The caller holds the contract's row lock (every writer of a contract takes it first); the
`supervisors` row is locked here, after it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from app.db import upsert_ignoring
from app.domain.incarnations import next_incarnation
from app.domain.records import EventType
from app.domain.supervisors import StateChange, SupervisorRecord, SupervisorState
from app.events import record_event
from app.heartbeat_store import SUPERVISOR_COLUMNS, supervisor_record
from app.models import Contract, Supervisor, SupervisorStateRow

_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Reincarnation:
    task_id: uuid.UUID
    previous: int | None
    new: int
    daemon_id: str | None
    host: str | None


def lock_supervisor(session: Session, task_id: uuid.UUID) -> SupervisorRecord | None:
    """The supervisor's `supervisors` row, locked (None: it never reported and was never issued one)."""
    row = session.execute(
        select(*SUPERVISOR_COLUMNS).where(Supervisor.task_id == task_id).with_for_update()
    ).first()
    return supervisor_record(row) if row is not None else None


def latest_supervisor_task(session: Session, contract_id: uuid.UUID) -> uuid.UUID | None:
    """The contract's supervisor heard from last, when a caller names none."""
    return session.scalar(
        select(Supervisor.task_id)
        .where(Supervisor.contract_id == contract_id)
        .order_by(Supervisor.last_received_at.desc())
        .limit(1)
    )


def reincarnate(
    session: Session,
    contract: Contract,
    task_id: uuid.UUID,
    state_row: SupervisorStateRow | None,
    now: datetime,
    *,
    alive: bool,
    daemon_id: str | None = None,
    host: str | None = None,
) -> Reincarnation:
    """Issue the supervisor's next incarnation in its `supervisors` row (created if none).

    The new incarnation is above the row's and the stored save's, so older incarnations are
    fenced and the new one's first save wins. `alive` (a restoration: the daemon is here)
    marks it `initializing` and heard from now; otherwise (a restart: nobody runs the new
    incarnation yet) it is `interrupted` and not alive until the new incarnation reports.
    The row is written under its lock and its write counter moves, so neither a heartbeat list
    (judged on the row as it is once locked; on SQLite, one writer at a time) nor the dead sweep
    (which writes only a row whose counter did not move) writes over the new incarnation.
    INCARNATION_NOT_ISSUED when the next incarnation would be beyond `MAX_INCARNATION`.
    """
    state = SupervisorState.INITIALIZING if alive else SupervisorState.INTERRUPTED
    saved = state_row.incarnation if state_row is not None else 0
    record = lock_supervisor(session, task_id)
    if record is None:
        previous = state_row.incarnation if state_row is not None else None
        new = next_incarnation(contract.id, task_id, saved)
        heard = now if alive or state_row is None else _aware(state_row.updated_at)
        inserted = session.execute(
            upsert_ignoring(session, Supervisor, ["task_id"]).values(
                task_id=task_id,
                contract_id=contract.id,
                incarnation=new,
                version=1,
                state=state.value,
                phase=contract.phase,
                current_activity="",
                progress=0,
                pending_task_ids=[],
                heartbeat_id=None,
                sent_at=None,
                last_received_at=heard,
                alive=alive,
                dead_at=None,
                daemon_id=daemon_id
                if daemon_id is not None
                else (state_row.daemon_id if state_row else None),
                host=host if host is not None else (state_row.host if state_row else None),
                created_at=now,
                updated_at=now,
            )
        )
        if getattr(inserted, "rowcount", 0):
            _state_changed(session, StateChange(contract.id, task_id, None, state, new), now)
            return Reincarnation(task_id, previous, new, daemon_id, host)
        record = lock_supervisor(session, task_id)  # a first heartbeat landed meanwhile
        assert record is not None
    new = next_incarnation(contract.id, task_id, max(record.incarnation, saved))
    keep_daemon = daemon_id if daemon_id is not None else record.daemon_id
    keep_host = host if host is not None else record.host
    session.execute(
        update(_SUPERVISORS)
        .where(_SUPERVISORS.c.task_id == task_id)
        .values(
            incarnation=new,
            version=record.version + 1,
            state=state.value,
            alive=alive,
            dead_at=None if alive else record.dead_at,
            sent_at=None,
            last_received_at=now if alive else record.last_received_at,
            daemon_id=keep_daemon,
            host=keep_host,
            updated_at=now,
        )
    )
    if record.state is not state or (alive and not record.alive):
        change = StateChange(
            contract.id, task_id, record.state, state, new, revived=alive and not record.alive
        )
        _state_changed(session, change, now)
    return Reincarnation(task_id, record.incarnation, new, keep_daemon, keep_host)


def _state_changed(session: Session, change: StateChange, now: datetime) -> None:
    record_event(session, change.contract_id, EventType.SUPERVISOR_STATE_CHANGED, change.payload(), now)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


__all__ = ["Reincarnation", "latest_supervisor_task", "lock_supervisor", "reincarnate"]
