"""A transaction's own writes, held until commit and sent to the database in one statement.

Round trips, not PostgreSQL, dominate the guarded paths: the ORM would flush the contract's
UPDATE, each event INSERT and each outbox INSERT as statements of their own. Instead, event
rows and outbox rows are collected here (per session), and at commit the changed contract
rows, the events and the outbox rows go in one statement on PostgreSQL (data-modifying CTEs,
returning the new ids), or as plain statements on SQLite, where a statement is a function
call, not a round trip. Rules that read recent events in the same transaction consult
`pending_events` first, so a held event counts exactly as a written one would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import JSON, Connection, Table, Uuid, insert, inspect, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.models import Contract, ContractEvent, MessageOutcome, OutboxMessage
from app.prepared import driver_rows

_KEY = "makima.pending_writes"
_EVENTS: Table = ContractEvent.__table__  # type: ignore[assignment]
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
_CONTRACTS: Table = Contract.__table__  # type: ignore[assignment]


@dataclass
class PendingWrites:
    """What this transaction will write at commit, and the ids the write returned."""

    events: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    contracts: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    locked: set[uuid.UUID] = field(default_factory=set)
    # Senders' receipts: message outcomes to mark applied, with this transaction's event ids.
    applied: list[dict[str, Any]] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)


def pending(session: Session) -> PendingWrites:
    writes: PendingWrites | None = session.info.get(_KEY)
    if writes is None:
        writes = session.info[_KEY] = PendingWrites()
    return writes


def hold_event(
    session: Session, contract_id: uuid.UUID, type_: str, payload: dict[str, Any], now: datetime
) -> None:
    pending(session).events.append(event_row(contract_id, type_, payload, now))


def hold_outbox_row(
    session: Session, task: str, payload: dict[str, Any], not_before: datetime | None, now: datetime
) -> None:
    pending(session).outbox.append(outbox_row(task, payload, not_before, now))


def outbox_row(
    task: str, payload: dict[str, Any], not_before: datetime | None, now: datetime
) -> dict[str, Any]:
    """A `task_outbox` row as `write_held` takes it."""
    return {"task": task, "payload": payload, "not_before": not_before, "created_at": now}


def event_row(contract_id: uuid.UUID, type_: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A `contract_events` row as `write_held` takes it (the payload as it is stored)."""
    return {"contract_id": contract_id, "type": type_, "payload": payload, "created_at": now}


def hold_applied(
    session: Session, principal_id: uuid.UUID, message_id: str, contract_id: uuid.UUID, task: str
) -> None:
    """Mark a sender's message applied, with the events this transaction writes, at commit."""
    pending(session).applied.append(
        {"principal_id": principal_id, "message_id": message_id, "contract_id": contract_id, "task": task}
    )


def pending_events(session: Session, contract_id: uuid.UUID) -> Iterator[dict[str, Any]]:
    """This transaction's held events of one contract, newest first."""
    for row in reversed(pending(session).events):
        if row["contract_id"] == contract_id:
            yield row


def hold_contract_changes(session: Session, flush_context: Any = None, instances: Any = None) -> None:
    """`before_flush`: take changed contract columns out of the ORM's flush and hold them.

    Registered on every unit of work's session, so no flush (explicit or autoflush before
    a query) writes a contract row on its own; the held values go out with the commit's
    one statement. The in-memory object keeps its new values, and the row stays locked by
    this transaction, so nobody can read the difference.
    """
    writes = pending(session)
    for obj in list(session.dirty):
        if not isinstance(obj, Contract):
            continue
        state = inspect(obj)
        values = {
            attr.key: attr.history.added[0]
            for attr in state.attrs
            if attr.history.added and attr.key in _CONTRACTS.c
        }
        if not values:
            continue
        writes.contracts.setdefault(obj.id, {}).update(values)
        for key, value in values.items():
            set_committed_value(obj, key, value)


def write_pending(session: Session) -> PendingWrites:
    """Write the held rows and the changed contracts; called just before COMMIT.

    Whatever else is new (tasks, deliverables, a new contract) is flushed by the ORM first,
    since held rows may refer to it. Written contracts are then detached from the session:
    their in-memory values are what was written, and the ORM's commit-time flush has
    nothing left to look at.
    """
    hold_contract_changes(session)
    if session.new or session.deleted or any(not isinstance(o, Contract) for o in session.dirty):
        session.flush()
    writes = pending(session)
    changes = list(writes.contracts.items())
    if not (changes or writes.events or writes.outbox or writes.applied):
        return writes
    prepare = bool(session.info.get("prepared_statements", True))
    write_held(session.connection(), writes, changes, prepare=prepare)
    for contract_id, _ in changes:
        written = session.identity_map.get(session.identity_key(Contract, contract_id))
        if written is not None:
            session.expunge(written)
    writes.contracts.clear()
    writes.applied.clear()
    return writes


def write_held(
    connection: Connection,
    writes: PendingWrites,
    changes: list[tuple[uuid.UUID, dict[str, Any]]],
    *,
    prepare: bool = True,
    commit: bool = False,
) -> None:
    """Write `changes` (contract id, columns) and the held rows on `connection`, ids into `writes`.

    The one helper both dialects go through: one statement on PostgreSQL, plain statements on
    SQLite. The unit of work calls it at commit; the guarded phase change's Core path
    (`app.contracts.change_phase_now`) calls it with the rows it built itself. The events'
    `created_at` is stamped here, as late as it can be (`stamp_events`).

    `commit` (PostgreSQL, a transaction the caller opened with its own `BEGIN`): the
    statement and the `COMMIT` go in one round trip. The driver returns only the last
    statement's result, so every held row must carry its `id` already (reserved with
    `nextval` under the lock); those are the ids reported.
    """
    stamp_events(writes.events)
    if connection.dialect.name != "postgresql":
        if commit:
            raise ValueError("write_held(commit=True) is for a PostgreSQL transaction opened by its caller")
        _write_one_by_one(connection, writes, changes)
        return
    if commit and not all("id" in row for row in (*writes.events, *writes.outbox)):
        raise ValueError("write_held(commit=True) needs every held row's id reserved beforehand")
    _write_as_one_statement(connection, writes, changes, prepare, commit)


def stamp_events(events: list[dict[str, Any]]) -> None:
    """Give the held events the time of their write, just before the statement that precedes COMMIT.

    An event's `createdAt` says when it became part of the record; the monitor's latency is
    read from it. The transaction's own clock (`now`, taken when the change began) would put it
    before the lock waits and the judgement, and make a slow writer look like a slow stream.
    Taken in Python, not with `clock_timestamp()`: the same clock as every other timestamp the
    service writes, on both dialects, and no change to the statement. What is left between this
    and COMMIT is the write statement itself (on PostgreSQL its COMMIT goes with it on the Core
    path, in the next round trip otherwise).
    """
    if events:
        now = datetime.now(UTC)
        for row in events:
            row["created_at"] = now


Shape = tuple[tuple[tuple[str, ...], ...], int, int, int, bool]

# A receipt: insert `applied`, or turn a pending/refused one applied; an applied one stays as
# it is (a repeat delivery keeps the first application's event ids).
_APPLIED_SQL = (
    "INSERT INTO message_outcomes (principal_id, message_id, contract_id, task, status, event_ids, "
    "accepted_at, updated_at) VALUES (%(a{i}_principal_id)s::uuid, %(a{i}_message_id)s, "
    "%(a{i}_contract_id)s::uuid, %(a{i}_task)s, 'applied', {event_ids}, %(a_now)s, %(a_now)s) "
    "ON CONFLICT (principal_id, message_id) DO UPDATE SET status = 'applied', "
    "event_ids = EXCLUDED.event_ids, error_code = NULL, error_message = NULL, "
    "updated_at = EXCLUDED.updated_at WHERE message_outcomes.status <> 'applied'"
)


def _placeholder(table: Table, column: str, name: str) -> str:
    kind = table.c[column].type
    if isinstance(kind, Uuid):
        return f"%({name})s::uuid"
    if isinstance(kind, JSON):
        return f"%({name})s::jsonb"
    return f"%({name})s"


@lru_cache(maxsize=256)
def _combined_sql(shape: Shape) -> str:
    """The SQL of one shape (which contract columns, how many events and outbox rows).

    Written out once per shape and cached: compiling a multi-CTE statement through the
    SQL expression layer on every commit cost more than the round trips it saved.
    """
    contract_columns, n_events, n_outbox, n_applied, ids_given = shape
    ctes = []
    for i, columns in enumerate(contract_columns):
        sets = ", ".join(f"{col} = {_placeholder(_CONTRACTS, col, f'c{i}_{col}')}" for col in columns)
        ctes.append(f"c{i} AS (UPDATE contracts SET {sets} WHERE id = %(c{i}_id)s::uuid)")
    returned = []
    for prefix, table, count in (("e", _EVENTS, n_events), ("o", _OUTBOX, n_outbox)):
        if not count:
            continue
        names = [c.name for c in table.c if ids_given or c.name != "id"]
        rows = ", ".join(
            "(" + ", ".join(_placeholder(table, col, f"{prefix}{i}_{col}") for col in names) + ")"
            for i in range(count)
        )
        ctes.append(
            f"{prefix}s AS (INSERT INTO {table.name} ({', '.join(names)}) VALUES {rows} RETURNING id)"
        )
        returned.append(f"SELECT '{prefix}' AS kind, id FROM {prefix}s")
    event_ids = (
        "(SELECT coalesce(jsonb_agg(id ORDER BY id), '[]'::jsonb) FROM es)" if n_events else "'[]'::jsonb"
    )
    for i in range(n_applied):
        ctes.append(f"a{i} AS ({_APPLIED_SQL.format(i=i, event_ids=event_ids)})")
    body = " UNION ALL ".join(returned) or "SELECT '-' AS kind, 0 AS id"
    return f"WITH {', '.join(ctes)} {body}" if ctes else body


def _put_params(
    params: dict[str, Any], table: Table, prefix: str, columns: tuple[str, ...], values: dict[str, Any]
) -> None:
    """`values` of `columns` into `params` as `{prefix}_{column}`, each as the driver takes it."""
    for name, column, convert in _param_plan(table, prefix, columns):
        value = values[column]
        params[name] = None if value is None else convert(value)


@lru_cache(maxsize=1024)
def _param_plan(
    table: Table, prefix: str, columns: tuple[str, ...]
) -> tuple[tuple[str, str, Callable[[Any], Any]], ...]:
    """Each column's parameter name and converter, worked out once per row shape: this runs for
    every row of every commit."""
    return tuple((f"{prefix}_{column}", column, _converter(table, column)) for column in columns)


@lru_cache(maxsize=256)
def _converter(table: Table, column: str) -> Callable[[Any], Any]:
    """How one column's value is handed to the driver, looked up once per column."""
    kind = table.c[column].type
    if isinstance(kind, Uuid):
        return str
    if isinstance(kind, JSON):
        return json.dumps
    return _as_utc_if_datetime


def _as_utc_if_datetime(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _write_as_one_statement(
    connection: Connection,
    writes: PendingWrites,
    changes: list[tuple[uuid.UUID, dict[str, Any]]],
    prepare: bool,
    commit: bool,
) -> None:
    params: dict[str, Any] = {}
    contract_columns = []
    for i, (contract_id, values) in enumerate(changes):
        columns = tuple(sorted(values))
        contract_columns.append(columns)
        params[f"c{i}_id"] = str(contract_id)
        _put_params(params, _CONTRACTS, f"c{i}", columns, values)
    for prefix, table, rows in (("e", _EVENTS, writes.events), ("o", _OUTBOX, writes.outbox)):
        for i, row in enumerate(rows):
            _put_params(params, table, f"{prefix}{i}", tuple(row), row)
    for i, receipt in enumerate(writes.applied):
        params.update(
            {f"a{i}_{col}": str(v) if isinstance(v, uuid.UUID) else v for col, v in receipt.items()}
        )
    params["a_now"] = datetime.now(UTC)
    shape = (tuple(contract_columns), len(writes.events), len(writes.outbox), len(writes.applied), commit)
    sql = _combined_sql(shape)
    if commit:
        driver_rows(connection, sql, params, prepare=prepare, then="COMMIT")
        writes.event_ids.extend(row["id"] for row in writes.events)
        writes.outbox_ids.extend(row["id"] for row in writes.outbox)
        return
    returned = cast(list[tuple[str, int]], driver_rows(connection, sql, params, prepare=prepare))
    for kind, row_id in returned:
        if kind == "e":
            writes.event_ids.append(row_id)
        elif kind == "o":
            writes.outbox_ids.append(row_id)


def _write_one_by_one(
    connection: Connection, writes: PendingWrites, changes: list[tuple[uuid.UUID, dict[str, Any]]]
) -> None:
    for contract_id, values in changes:
        connection.execute(update(_CONTRACTS).where(_CONTRACTS.c.id == contract_id).values(**values))
    for row in writes.events:
        writes.event_ids.append(
            connection.execute(insert(_EVENTS).values(row).returning(_EVENTS.c.id)).scalar_one()
        )
    for row in writes.outbox:
        writes.outbox_ids.append(
            connection.execute(insert(_OUTBOX).values(row).returning(_OUTBOX.c.id)).scalar_one()
        )
    now = datetime.now(UTC)
    for receipt in writes.applied:
        upsert = sqlite_insert(MessageOutcome).values(
            **receipt, status="applied", event_ids=list(writes.event_ids), accepted_at=now, updated_at=now
        )
        connection.execute(
            upsert.on_conflict_do_update(
                index_elements=["principal_id", "message_id"],
                set_={
                    "status": "applied",
                    "event_ids": upsert.excluded.event_ids,
                    "error_code": None,
                    "error_message": None,
                    "updated_at": now,
                },
                where=MessageOutcome.status != "applied",
            )
        )


__all__ = [
    "PendingWrites",
    "event_row",
    "hold_applied",
    "hold_contract_changes",
    "hold_event",
    "hold_outbox_row",
    "outbox_row",
    "pending",
    "pending_events",
    "stamp_events",
    "write_held",
    "write_pending",
]
