"""Commands for agent daemons: one way to decide one, so each lands in its daemon's queue.

A command is a `daemon_commands` row written in the transaction that decided it (an outbox:
published to the broker after commit by `contracts.publish_daemon_commands`, and readable by
its daemon over HTTP), so a broker outage delays a command but never loses it. A command
names the daemon it is for when we know it: the one given, else the daemon whose heartbeats
last spoke for the contract's supervisor.

- `queue_command` / `queue_commands`: write rows (one, or many with one lookup and one
  INSERT) and have them published once this transaction commits, once per contract however
  many commands it decided.
- `publish_pending`: hand unpublished rows to the broker, each to its daemon's queue, which is
  its contract owner's (`app.broker.daemon_queue`: `daemon.commands.<owner token>.<daemonId>`,
  or the owner's own `daemon.commands.<owner token>` for a command that names no daemon):
  daemon ids are chosen by clients, so one owner naming another's daemon id reaches only a
  queue of its own.
- `read_feed`: a daemon's commands over HTTP, for daemons that cannot read the broker. Command
  ids come from a sequence taken before COMMIT, so `id > after` alone could skip a command
  whose transaction took a lower id and committed later; on PostgreSQL the feed reads below the
  commit horizon in `(xid, id)` order (migration 0011), as the live event stream does. A page
  is bounded by size as well as by count (`FEED_PAGE_BYTES`): answers carry whole questions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import Field
from sqlalchemy import Boolean, Select, literal_column, select, text
from sqlalchemy.orm import Session

from app.auth import Caller
from app.broker import DAEMON_EXCHANGE, daemon_queue
from app.broker import publish_daemon_commands as publish_to_daemons
from app.byte_budget import json_size, take_within_budget
from app.db import UnitOfWork, unit_of_work
from app.domain.daemon_ids import MAX_DAEMON_ID, daemon_id_refusal
from app.domain.errors import ValidationFailed
from app.live_events import Horizon
from app.models import Contract, DaemonCommand, Supervisor, utcnow
from app.queues import TaskName
from app.schemas import Schema, Timestamp

MAX_FEED: Final = 1000
# A page of the feed is bounded by size as well as by count, like a page of questions
# (`app.question_reads.QUESTION_PAGE_BYTES`) and the supervisor history: an `answer_question`
# command carries the question and its answer (in 4-byte characters about 56 KB), so 1000 of
# them would be a 56 MB answer. Commands are added while the page's JSON stays within this;
# `nextAfter` says where to read on.
FEED_PAGE_BYTES: Final = 4 * 1024 * 1024
# Room kept beyond the page's own envelope (`{"daemonId":…,"commands":[`, `],"nextAfter":…,
# "truncated":true}`, measured for each page) for the few bytes in which the HTTP answer's JSON
# may write a value differently (a float's exponent).
_FEED_SLACK_BYTES: Final = 1024
# Rows read from the database at a time, each read one plain query: a page of the default
# `limit` is one read, as before the size bound, and a page that stops at the bound reads at
# most one read past it, not 1000 rows of up to 56 KB. (A server-side cursor streams rows too,
# but costs every poll of the feed two more round trips: a read was 19-27% slower.)
_FEED_ROWS_PER_READ: Final = 100
_DISPATCHED: Final = "makima.daemon_commands_dispatched"


def check_daemon_id(value: str, field: str = "daemonId") -> str:
    """A daemon id by the one rule heartbeats take it by too (`app.domain.daemon_ids`), else
    `ValidationFailed` naming the field and what is allowed. What becomes a queue name of it
    is `app.broker`'s concern."""
    refusal = daemon_id_refusal(value, field)
    if refusal is not None:
        raise ValidationFailed(refusal, details={"field": field, "limit": MAX_DAEMON_ID})
    return value


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A command to queue: for a contract, about a task (its supervisor's daemon), or a daemon."""

    contract_id: uuid.UUID
    command: str
    payload: dict[str, Any]
    daemon_id: str | None = None
    task_id: uuid.UUID | None = None


def daemon_of(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID | None = None) -> str | None:
    """The daemon last heard running the contract's supervisor (`task_id`'s, if given)."""
    query = select(Supervisor.daemon_id).where(
        Supervisor.contract_id == contract_id, Supervisor.daemon_id.is_not(None)
    )
    if task_id is not None:
        query = query.where(Supervisor.task_id == task_id)
    return session.scalars(query.order_by(Supervisor.last_received_at.desc()).limit(1)).first()


def daemons_of(
    session: Session, contract_ids: Iterable[uuid.UUID]
) -> dict[tuple[uuid.UUID, uuid.UUID | None], str]:
    """`daemon_of` for many contracts in one query: keyed (contract, task) and (contract, None),
    the latter the daemon heard last for the contract."""
    ids = sorted(set(contract_ids))
    found: dict[tuple[uuid.UUID, uuid.UUID | None], str] = {}
    if not ids:
        return found
    rows = session.execute(
        select(Supervisor.contract_id, Supervisor.task_id, Supervisor.daemon_id)
        .where(Supervisor.contract_id.in_(ids), Supervisor.daemon_id.is_not(None))
        .order_by(Supervisor.last_received_at.desc())
    )
    for contract_id, task_id, daemon_id in rows:
        if daemon_id is None:
            continue
        found.setdefault((contract_id, task_id), daemon_id)
        found.setdefault((contract_id, None), daemon_id)
    return found


def _publish_after_commit(uow: UnitOfWork, contract_ids: Iterable[uuid.UUID]) -> None:
    """One publish follow-up per contract per transaction, however many commands it decided."""
    done: set[uuid.UUID] = uow.session.info.setdefault(_DISPATCHED, set())
    for contract_id in dict.fromkeys(contract_ids):
        if contract_id not in done:
            done.add(contract_id)
            uow.dispatch_after_commit(TaskName.PUBLISH_DAEMON_COMMANDS, {"contractId": str(contract_id)})


def queue_commands(uow: UnitOfWork, commands: Sequence[NewCommand], now: datetime) -> list[DaemonCommand]:
    """Write many command rows at once: the daemons not given looked up in one query, the rows
    flushed in one INSERT (so their ids are known), published once this transaction commits.

    A command with a `task_id` goes to the daemon of that task's supervisor; without one, to
    the daemon heard last for the contract; when neither is known, to the shared queue.
    """
    if not commands:
        return []
    unnamed = [c.contract_id for c in commands if c.daemon_id is None]
    known = daemons_of(uow.session, unnamed) if unnamed else {}
    rows = [
        DaemonCommand(
            contract_id=c.contract_id,
            command=c.command,
            payload=c.payload,
            created_at=now,
            daemon_id=c.daemon_id if c.daemon_id is not None else known.get((c.contract_id, c.task_id)),
        )
        for c in commands
    ]
    uow.session.add_all(rows)
    uow.session.flush()
    _publish_after_commit(uow, (c.contract_id for c in commands))
    return rows


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
    _publish_after_commit(uow, [contract_id])
    return row


# --- publishing -----------------------------------------------------------------------------


def command_body(cmd: DaemonCommand) -> dict[str, Any]:
    """What a daemon receives, on its queue and in its feed alike (camelCase)."""
    return {
        "commandId": cmd.id,
        "contractId": str(cmd.contract_id),
        "command": cmd.command,
        "payload": cmd.payload,
        "daemonId": cmd.daemon_id,
        "createdAt": cmd.created_at.isoformat(),
    }


def publish_pending(contract_id: uuid.UUID | None = None) -> int:
    """Publish unpublished commands from the outbox, each to its daemon's queue (the queue of
    that daemon id under the contract's owner).

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
        owners: dict[uuid.UUID, str] = {
            cid: owner
            for cid, owner in uow.session.execute(
                select(Contract.id, Contract.owner_id).where(
                    Contract.id.in_({cmd.contract_id for cmd in commands})
                )
            )
        }
        publish_to_daemons([(owners[cmd.contract_id], command_body(cmd)) for cmd in commands])
        now = utcnow()
        for cmd in commands:
            cmd.published_at = now
    return len(commands)


# --- where a daemon reads its commands ------------------------------------------------------


class DaemonQueue(Schema):
    """The broker queues a daemon of this owner reads (declare them durable, bind them to the
    `exchange` with their routing keys, consume JSON)."""

    daemon_id: str
    owner_id: str
    exchange: str = Field(description="The direct exchange daemon commands are published to")
    queue: str = Field(description="This daemon's own queue: daemon.commands.<owner token>.<daemon key>")
    routing_key: str
    owner_queue: str = Field(
        description="The owner's queue for commands that name no daemon: daemon.commands.<owner token>"
    )
    owner_routing_key: str


def queue_of(caller: Caller, daemon_id: str) -> DaemonQueue:
    """Where the caller's owner's daemon `daemon_id` reads its commands on the broker."""
    mine, shared = daemon_queue(caller.owner_id, daemon_id), daemon_queue(caller.owner_id, None)
    return DaemonQueue(
        daemon_id=daemon_id,
        owner_id=caller.owner_id,
        exchange=DAEMON_EXCHANGE.name,
        queue=mine.name,
        routing_key=str(mine.routing_key),
        owner_queue=shared.name,
        owner_routing_key=str(shared.routing_key),
    )


# --- a daemon's feed over HTTP --------------------------------------------------------------


class DaemonCommandView(Schema):
    """One command, as its daemon's queue carries it."""

    command_id: int = Field(description="Increasing; carry it out once (a command may arrive twice)")
    contract_id: uuid.UUID
    command: str = Field(
        description="stop_supervisor, remove_worktree, supervisor_fenced, heartbeat_refused, "
        "restart_supervisor, sync_supervisor_state or answer_question"
    )
    payload: dict[str, Any]
    created_at: Timestamp


class DaemonCommandFeed(Schema):
    """A daemon's commands after `after`, oldest first; pass `nextAfter` back to read on."""

    daemon_id: str
    commands: list[DaemonCommandView]
    next_after: int = Field(description="The last command id returned (`after` itself when none was)")
    truncated: bool = Field(
        False,
        description="True when the page stopped early at the size bound (4 MiB of JSON) before "
        "`limit` commands: read on from `nextAfter` at once",
    )


def _command_view(row: DaemonCommand) -> DaemonCommandView:
    return DaemonCommandView(
        command_id=row.id,
        contract_id=row.contract_id,
        command=row.command,
        payload=row.payload,
        created_at=row.created_at,
    )


def _page_reserve(daemon_id: str) -> int:
    """The bytes a page keeps for its envelope, counted at its largest, and the slack."""
    envelope = DaemonCommandFeed(daemon_id=daemon_id, commands=[], next_after=2**63 - 1, truncated=True)
    return json_size(envelope) + _FEED_SLACK_BYTES


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _position(session: Session, daemon_id: str, after: int) -> tuple[int, int]:
    """The feed position just after command `after`: `(xid, id)` on PostgreSQL.

    An id no longer held (its contract was deleted) resumes from the oldest of the daemon's
    commands with a larger id, or else just below the commit horizon (nothing in flight is
    missed).
    """
    if after <= 0:
        return (0, 0)
    found = session.execute(
        text("SELECT xid::text::bigint FROM daemon_commands WHERE id = :id"), {"id": after}
    ).scalar()
    if found is None:
        found = session.execute(
            text("SELECT min(xid)::text::bigint FROM daemon_commands WHERE daemon_id = :d AND id > :id"),
            {"d": daemon_id, "id": after},
        ).scalar()
    if found is None:
        horizon = session.execute(text(f"SELECT ({Horizon.DATABASE.value})::text::bigint")).scalar()
        return (int(horizon or 1) - 1, 2**62)
    return (int(found), after)


def _settled(session: Session, query: Select[Any], horizon: Horizon) -> tuple[list[DaemonCommand], bool]:
    """The rows of `query` below `horizon`, in stream order, and whether one past it was held back.

    Each row says in the same statement (the same snapshot) whether its transaction is below
    the horizon; rows are in `(xid, id)` order, so the settled ones are a prefix.
    """
    settled = literal_column(f"daemon_commands.xid < ({horizon.value})", Boolean()).label("settled")
    rows: list[DaemonCommand] = []
    for row, below in session.execute(query.add_columns(settled)):
        if not below:
            return rows, True
        rows.append(row)
    return rows, False


def _postgres_rows(
    session: Session, query: Select[Any], daemon_id: str, after: int, limit: int
) -> Iterator[DaemonCommand]:
    """Up to `limit` settled commands after command `after`, in `(xid, id)` order, read
    `_FEED_ROWS_PER_READ` at a time: each read is the one a page starting after the previous
    read's last command would make, so reading on in reads misses and repeats nothing."""
    left = limit
    while left > 0:
        size = min(left, _FEED_ROWS_PER_READ)
        axid, aid = _position(session, daemon_id, after)
        read = (
            query.where(
                text(
                    "(daemon_commands.xid, daemon_commands.id) > (CAST(CAST(:axid AS text) AS xid8), :aid)"
                ).bindparams(axid=axid, aid=aid)
            )
            .order_by(text("daemon_commands.xid"), DaemonCommand.id)
            .limit(size)
        )
        rows, held = _settled(session, read, Horizon.CLUSTER)
        if held:
            rows, held = _settled(session, read, Horizon.DATABASE)
        yield from rows
        if held or len(rows) < size:
            return
        left -= size
        after = rows[-1].id


def _sqlite_rows(session: Session, query: Select[Any], after: int, limit: int) -> Iterator[DaemonCommand]:
    """Up to `limit` commands after command `after`, in id order (SQLite's writers are serial),
    read `_FEED_ROWS_PER_READ` at a time."""
    left = limit
    while left > 0:
        size = min(left, _FEED_ROWS_PER_READ)
        rows = list(
            session.scalars(query.where(DaemonCommand.id > after).order_by(DaemonCommand.id).limit(size))
        )
        yield from rows
        if len(rows) < size:
            return
        left -= size
        after = rows[-1].id


def read_feed(
    session: Session,
    caller: Caller,
    daemon_id: str,
    after: int,
    limit: int,
    budget: int = FEED_PAGE_BYTES,
) -> DaemonCommandFeed:
    """The daemon's commands after command `after`, for contracts the caller may see.

    Only commands that name this daemon (`daemon_id`), in the order they became final: on
    PostgreSQL the writing transaction's id, then the command id, and only transactions older
    than every one still running, so a command committed late is delivered after, never
    skipped; on SQLite (serial writers) the command id. The horizon is the cluster's oldest
    running transaction (one cheap function); when that holds a command back, the read is made
    again below this database's own horizon (`app.live_events.Horizon`), so a long transaction
    of another database on the same server does not stall the feed.

    A page holds at most `limit` commands and at most `budget` bytes of JSON: it stops before
    the command that would pass the bound (one command is always taken), `truncated` set.
    `next_after` is then the last command returned, so the next read starts right after it in
    the same order: none is lost or repeated. Rows are read `_FEED_ROWS_PER_READ` at a time,
    so a page the bound ends reads little past it, and a short page is one plain query.
    """
    query = (
        select(DaemonCommand)
        .join(Contract, Contract.id == DaemonCommand.contract_id)
        .where(DaemonCommand.daemon_id == daemon_id)
    )
    if not caller.is_admin:
        query = query.where(Contract.owner_id == caller.owner_id)
    rows = (
        _postgres_rows(session, query, daemon_id, after, limit)
        if _is_postgres(session)
        else _sqlite_rows(session, query, after, limit)
    )
    page = take_within_budget(rows, _command_view, json_size, budget, _page_reserve(daemon_id))
    return DaemonCommandFeed(
        daemon_id=daemon_id,
        commands=page.items,
        next_after=page.items[-1].command_id if page.items else after,
        truncated=page.truncated,
    )


__all__ = [
    "FEED_PAGE_BYTES",
    "MAX_FEED",
    "DaemonCommandFeed",
    "DaemonCommandView",
    "DaemonQueue",
    "NewCommand",
    "check_daemon_id",
    "command_body",
    "daemon_of",
    "daemons_of",
    "publish_pending",
    "queue_command",
    "queue_commands",
    "queue_of",
    "read_feed",
]
