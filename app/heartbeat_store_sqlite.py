"""The SQLite heartbeat store: the embedded default's, a list written with `executemany`.

Its own module because nothing in it is PostgreSQL's: one writer at a time (`BEGIN IMMEDIATE`),
so the supervisors read before the write are exact, and a statement is a function call, not a
round trip, so a list goes in `executemany` statements built with SQLAlchemy Core, each
supervisor's write guarded by its row's write counter (`version`). Its reads are here too: the
contracts' owners with the task ids' contracts, then the supervisors' stored states, one
statement each. The rules that decide what
to write are `app.domain.heartbeat_plan.plan_batch`'s, applied by `app.heartbeats_sqlite`; the
interface and the shared helpers are `app.heartbeat_store`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Uuid, insert, null, select, union_all, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from app.domain.heartbeat_plan import BatchPlan
from app.domain.heartbeats import Heartbeat
from app.domain.supervisors import SupervisorRecord
from app.heartbeat_store import (
    COUNTERS,
    HISTORY,
    STATE_CHANGED,
    SUPERVISOR_COLUMNS,
    BatchCounts,
    HeartbeatStore,
    as_uuid,
    counter_shard,
    event_payload,
    supervisor_record,
)
from app.models import Contract, ContractEvent, ContractTask, Supervisor, SupervisorStateRow

_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]
_EVENTS: Table = ContractEvent.__table__  # type: ignore[assignment]
_CONTRACTS: Table = Contract.__table__  # type: ignore[assignment]


def _sup_values(after: SupervisorRecord, now: datetime) -> dict[str, Any]:
    return {
        "task_id": after.task_id,
        "contract_id": after.contract_id,
        "incarnation": after.incarnation,
        "version": after.version + 1,
        "state": after.state.value,
        "phase": after.phase,
        "current_activity": after.current_activity,
        "progress": after.progress,
        "pending_task_ids": list(after.pending_task_ids),
        "heartbeat_id": after.heartbeat_id,
        "sent_at": after.sent_at,
        "last_received_at": after.last_received_at,
        "alive": after.alive,
        "dead_at": after.dead_at,
        "daemon_id": after.daemon_id,
        "host": after.host,
        "created_at": now,
        "updated_at": now,
    }


def _hist_values(hb: Heartbeat, fenced: bool, received_at: datetime) -> dict[str, Any]:
    return {
        "contract_id": hb.contract_id,
        "id": hb.id,
        "received_day": received_at.date(),
        "received_at": received_at,
        "task_id": hb.task_id,
        "incarnation": hb.incarnation,
        "state": hb.state.value,
        "phase": hb.phase,
        "current_activity": hb.current_activity,
        "progress": hb.progress,
        "pending_task_ids": list(hb.pending_task_ids),
        "sent_at": hb.timestamp,
        "fenced": fenced,
        "daemon_id": hb.daemon_id,
        "host": hb.host,
    }


class SqliteStore(HeartbeatStore):
    """The embedded default: one writer at a time (BEGIN IMMEDIATE), so read-then-write is exact."""

    def owners_and_tasks(
        self, session: Session, contract_ids: set[uuid.UUID], task_ids: set[uuid.UUID]
    ) -> tuple[dict[uuid.UUID, tuple[str, str]], dict[uuid.UUID, uuid.UUID]]:
        """(owner, status) of each of the contracts that exist, and the contract of each of
        `task_ids` that is an ordinary task (`contract_tasks`) or a supervisor known by its saved
        state (`supervisor_states`): a task id belongs to one contract, so a heartbeat naming one
        on another is refused. One statement for all three."""
        if not contract_ids:
            return {}, {}
        rows = session.execute(
            union_all(
                select(Contract.id, Contract.owner_id, Contract.status, null().cast(Uuid)).where(
                    Contract.id.in_(sorted(contract_ids))
                ),
                select(ContractTask.contract_id, null(), null(), ContractTask.id).where(
                    ContractTask.id.in_(sorted(task_ids))
                ),
                select(SupervisorStateRow.contract_id, null(), null(), SupervisorStateRow.task_id).where(
                    SupervisorStateRow.task_id.in_(sorted(task_ids))
                ),
            )
        )
        owners: dict[uuid.UUID, tuple[str, str]] = {}
        tasks: dict[uuid.UUID, uuid.UUID] = {}
        for cid, owner, status, task_id in rows:
            if task_id is None:
                owners[as_uuid(cid)] = (owner, status)
            else:
                tasks.setdefault(as_uuid(task_id), as_uuid(cid))
        return owners, tasks

    def supervisors(
        self, session: Session, task_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, SupervisorRecord]:
        """The stored state of each of these supervisors that has a row."""
        ids = sorted(set(task_ids))
        if not ids:
            return {}
        query = select(*SUPERVISOR_COLUMNS).where(Supervisor.task_id.in_(ids)).order_by(Supervisor.task_id)
        return {row[0]: supervisor_record(row) for row in session.execute(query)}

    def upsert_supervisors(
        self,
        session: Session,
        writes: list[tuple[SupervisorRecord | None, SupervisorRecord]],
        now: datetime,
    ) -> None:
        """Write the plan's supervisors, each guarded by the write counter it was read with.

        The guard never refuses here: the transaction began IMMEDIATE, so no other writer
        moved a row between `supervisors` and this write.
        """
        if not writes:
            return
        table = _SUPERVISORS
        stmt = sqlite.insert(table)
        columns = [c.name for c in table.c if c.name not in ("task_id", "created_at")]
        stmt = stmt.on_conflict_do_update(
            index_elements=["task_id"],
            set_={c: stmt.excluded[c] for c in columns},
            where=table.c.version == stmt.excluded.version - 1,
        )
        rows = [_sup_values(after, now) for _, after in sorted(writes, key=lambda w: w[1].task_id)]
        session.execute(stmt, rows)

    def write_rest(
        self,
        session: Session,
        rows: list[tuple[Heartbeat, bool]],
        plan: BatchPlan,
        live: list[uuid.UUID],
        received_at: datetime,
        bump_before: datetime,
        counts: BatchCounts,
    ) -> tuple[int, int]:
        hist = HISTORY
        stored = 0
        if rows:
            ids = {hb.id for hb, _ in rows}
            existing = {
                (contract_id, hb_id)
                for contract_id, hb_id in session.execute(
                    select(hist.c.contract_id, hist.c.id).where(hist.c.id.in_(ids))
                )
            }
            fresh = [
                _hist_values(hb, f, received_at) for hb, f in rows if (hb.contract_id, hb.id) not in existing
            ]
            if fresh:
                session.execute(sqlite.insert(hist).on_conflict_do_nothing(), fresh)
            stored = len(fresh)
        if plan.changes:
            session.execute(
                insert(_EVENTS),
                [
                    {
                        "contract_id": c.contract_id,
                        "type": STATE_CHANGED,
                        "payload": event_payload(c),
                        "created_at": received_at,
                    }
                    for c in plan.changes
                ],
            )
        touched = 0
        if live:
            result = session.execute(
                update(_CONTRACTS)
                .where(Contract.id.in_(live), Contract.last_activity_at < bump_before)
                .values(last_activity_at=received_at)
            )
            touched = int(getattr(result, "rowcount", 0) or 0)
        counter = COUNTERS
        up = sqlite.insert(counter).values(
            shard=counter_shard(),
            received=counts.received,
            stored=stored,
            duplicates=counts.in_batch_duplicates + len(rows) - stored,
            fenced=counts.fenced,
            refused=counts.refused,
            updated_at=received_at,
        )
        session.execute(
            up.on_conflict_do_update(
                index_elements=["shard"],
                set_={
                    name: counter.c[name] + up.excluded[name]
                    for name in ("received", "stored", "duplicates", "fenced", "refused")
                }
                | {"updated_at": up.excluded.updated_at},
            )
        )
        return stored, touched


__all__ = ["SqliteStore"]
