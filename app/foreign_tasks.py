"""A task id that another contract holds, named on this one: refused without telling a stranger
that the task exists.

Task ids are UUIDs chosen by the daemons and each belongs to one contract, so a report, a
question or a state save naming another contract's task id is refused. Saying "Task X belongs
to another contract" helps the owner who mixed up two of their own contracts, but to anyone
else it confirms that a task with that id exists somewhere (and is a supervisor, ...): an
existence oracle across owners. So the explanation is given only when the other contract has
the same owner as this one (the caller may see both); otherwise the answer says only that the
id cannot be used here. The refusal itself cannot be avoided (the id is taken), but it names
nothing about the other contract.

Who holds a task id (`task_holder`, and `held_elsewhere_sql` for the statements that check in
one round trip) is one rule for every path that takes one: a contract holds it as its
supervisor (its heartbeats' `supervisors` row or its saved state) or as an ordinary task (one
reported started or completed there). Task reports once looked only at the ordinary tasks, so
a report on one contract took another contract's supervisor task id, and that supervisor's
heartbeats and saves were refused from then on; reports, heartbeats, state saves and
restorations now ask the same question.

Asking is not enough when the id is new: a task report on one contract and a supervisor's
first heartbeat on another, naming the same new id at the same moment, each found the other's
table empty and both wrote (they lock different contracts), leaving two holders. On PostgreSQL
whoever may take a new id therefore asks under that id's lock: transaction-scoped advisory
locks, taken in statements of their own just before the statement that looks, so that one's
snapshot (READ COMMITTED: one per statement) is taken once they are held. The second of two
transactions naming the id waits for the first to commit, then sees its row and is refused.
They are taken (`task_lock_sql`) by `refuse_held_task`, so by the workers' task reports, state
saves and restorations (a restoration's claim may give a supervisor its row), by the
task-completed report's Core path (the same statements), and by the heartbeat fold before it
gives new supervisors their rows (`SUP_FIRST_GATE` and `SUP_FIRST_LOCKS` in `app.heartbeat_sql`).
Only taking a new id pays: a report or save naming an id its own contract already holds takes
no lock (nobody else can take that id: the row is committed), nor does a heartbeat of a
supervisor that has its row. On SQLite a writing transaction begins IMMEDIATE (one writer at
a time), so nothing is needed there.

The locks, both in the two-key form (a space apart from the one-key form other software may use):

- a task id's own lock (`TASK_LOCK_SPACE`, the id's first 32 bits): exclusive. Two ids share a
  key about once in four billion pairs; those then wait for each other, nothing worse.
- the new-ids gate (`NEW_TASKS_GATE`), taken first: shared by everyone above, except a heartbeat
  list giving more than `MOST_TASK_LOCKS` new supervisors their rows, which takes the gate alone,
  exclusive, instead of an id lock each. A list may hold 5000 heartbeats, and advisory locks
  live in the server's shared lock table (sized for about 64 per transaction): a few such lists
  at once would exhaust it. So no transaction holds more than `MOST_TASK_LOCKS` + 1 of them;
  the price is that such a list (a fleet starting) waits for, and holds up, every other
  taker of a new id for its fold's few milliseconds.

Order, so that no two of them wait for each other in a circle: the gate before any id lock, id
locks in key order (a report or save takes one), all of them after the contract row lock a
report or save holds and before any `supervisors` row lock; the fold takes them before
anything else it could wait on. (Should PostgreSQL ever find a circle all the same, it fails
one of the transactions, and a worker retries that as a transient error.)

Why locks rather than a claim table (`task_id_claims(task_id PK, contract_id)` that both paths
insert into, the unique key serializing them): a claim table would add a written, WAL-logged
row and index entry to every new task and every first heartbeat, need a backfill of every id
held today and upkeep on every removal (a contract's deletion, the cleanups of migrations 0014
and 0015), and be a fourth record of who holds an id that could disagree with the three it
shadows. The locks store nothing, ride in the round trip of the check they guard, and make
wait only transactions taking the same new id (or a fleet's start, above).
"""

from __future__ import annotations

import uuid
from typing import Final

from sqlalchemy import Connection, literal, select, union_all
from sqlalchemy.orm import Session

from app.config import get_settings
from app.domain.errors import ValidationFailed
from app.models import Contract, ContractTask, Supervisor, SupervisorStateRow
from app.prepared import driver_rows

# The advisory locks on task ids (see the module docstring), in the two-key form: a task id's
# own lock is (TASK_LOCK_SPACE, 32 bits of the id), the new-ids gate is NEW_TASKS_GATE.
# "mkt1" and "mkt0" in ASCII.
TASK_LOCK_SPACE: Final = 0x6D6B7431
NEW_TASKS_SPACE: Final = 0x6D6B7430
NEW_TASKS_GATE: Final = f"{NEW_TASKS_SPACE}, 0"  # the gate's two keys, as SQL arguments
# More new supervisors than this in one heartbeat list: the fold takes the gate exclusive
# instead of an id lock each (the server's lock table is sized for 64 locks a transaction).
MOST_TASK_LOCKS: Final = 64


def task_lock_key_sql(task: str) -> str:
    """The second key of a task id's own lock: its first 32 bits as an int4, from `task` (an SQL
    expression of type uuid)."""
    return f"('x' || left(replace(({task})::text, '-', ''), 8))::bit(32)::int"


def held_here_sql(task: str, contract: str) -> str:
    """Whether contract `contract` holds task id `task` itself (SQL expressions of type uuid):
    then nobody else can take it, and its lock is not needed. Primary-key look-ups."""
    return (
        f"EXISTS (SELECT 1 FROM contract_tasks WHERE id = {task} AND contract_id = {contract}) "
        f"OR EXISTS (SELECT 1 FROM supervisors WHERE task_id = {task} AND contract_id = {contract}) "
        f"OR EXISTS (SELECT 1 FROM supervisor_states WHERE task_id = {task} AND contract_id = {contract})"
    )


def task_lock_sql(task: str, contract: str) -> list[str]:
    """The statements that take, until the transaction ends, the locks a transaction needs
    before it asks who holds task id `task` and, if nobody else does, writes it on contract
    `contract` (SQL expressions of type uuid): the new-ids gate (shared), then the id's own
    lock; neither when `contract` holds the id already. Statements of their own, to run just
    before the one that asks (in the same round trip), whose snapshot is then taken once the
    locks are held."""
    new = f"WHERE NOT ({held_here_sql(task, contract)})"
    return [
        f"SELECT pg_advisory_xact_lock_shared({NEW_TASKS_GATE}) {new}",
        f"SELECT pg_advisory_xact_lock({TASK_LOCK_SPACE}, {task_lock_key_sql(task)}) {new}",
    ]


_LOCK_TASK: Final = task_lock_sql("%(task)s::uuid", "%(contract)s::uuid")


def held_elsewhere_sql(task: str, contract: str) -> str:
    """`task_holder` as SQL text, for the statements that check a report in one round trip on
    the driver's cursor: rows (holding contract, whether as its supervisor) for the task id
    `task` held by a contract other than `contract` (both SQL expressions of type uuid, such as
    a cast parameter or a column). Each branch is a primary-key look-up."""
    return (
        "SELECT contract_id, true AS supervisor FROM supervisors "
        f"WHERE task_id = {task} AND contract_id <> {contract} "
        "UNION ALL SELECT contract_id, true FROM supervisor_states "
        f"WHERE task_id = {task} AND contract_id <> {contract} "
        "UNION ALL SELECT contract_id, false FROM contract_tasks "
        f"WHERE id = {task} AND contract_id <> {contract}"
    )


_HELD_ELSEWHERE: Final = held_elsewhere_sql("%(task)s::uuid", "%(contract)s::uuid") + " LIMIT 1"


def task_holder(
    session: Session | Connection, task_id: uuid.UUID, contract_id: uuid.UUID
) -> tuple[uuid.UUID, bool] | None:
    """The contract other than `contract_id` that holds `task_id`, and whether it holds it as
    its supervisor (its `supervisors` row or its saved state) rather than as an ordinary task;
    None when no other contract holds it. One statement for the three holders."""
    row = session.execute(
        union_all(
            select(Supervisor.contract_id, literal(True)).where(
                Supervisor.task_id == task_id, Supervisor.contract_id != contract_id
            ),
            select(SupervisorStateRow.contract_id, literal(True)).where(
                SupervisorStateRow.task_id == task_id, SupervisorStateRow.contract_id != contract_id
            ),
            select(ContractTask.contract_id, literal(False)).where(
                ContractTask.id == task_id, ContractTask.contract_id != contract_id
            ),
        ).limit(1)
    ).first()
    return None if row is None else (row[0], bool(row[1]))


def held_task(
    session: Session | Connection,
    task_id: uuid.UUID,
    contract_id: uuid.UUID,
    other_contract_id: uuid.UUID,
    supervisor: bool,
) -> ValidationFailed:
    """The refusal of `task_id` on `contract_id` when `other_contract_id` holds it (as its
    supervisor or not), explained only to the owner of both."""
    explained = foreign_supervisor(task_id) if supervisor else foreign_ordinary_task(task_id)
    return foreign_task(session, task_id, contract_id, other_contract_id, explained)


def locked_task_holder(
    session: Session | Connection, task_id: uuid.UUID, contract_id: uuid.UUID
) -> tuple[uuid.UUID, bool] | None:
    """`task_holder`, asked under the task id's locks on PostgreSQL (`task_lock_sql`, held until
    the transaction ends), for a transaction that goes on to write the id if nobody else holds
    it: the locks and the question are statements of one round trip (`driver_rows`), the
    question's snapshot taken once the locks are held. SQLite's writers are serial (BEGIN
    IMMEDIATE): the plain question there."""
    connection = session.connection() if isinstance(session, Session) else session
    if connection.dialect.name != "postgresql":
        return task_holder(session, task_id, contract_id)
    if isinstance(session, Session):
        session.flush()  # what the ORM question would have flushed first (autoflush)
        prepare = bool(session.info.get("prepared_statements", True))
    else:
        prepare = get_settings().database_prepared_statements
    rows = driver_rows(
        connection,
        [*_LOCK_TASK, _HELD_ELSEWHERE],
        {"task": str(task_id), "contract": str(contract_id)},
        prepare=prepare,
    )
    if not rows:
        return None
    holder, supervisor = rows[0]
    return uuid.UUID(str(holder)), bool(supervisor)


def refuse_held_task(session: Session | Connection, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Refuse `task_id` on `contract_id` when another contract holds it (`task_holder`): the one
    check of task reports (at the fronts and in the workers), state saves and restorations.

    Asked under the task id's locks (`locked_task_holder`), so a transaction that passes holds
    the id against a concurrent first heartbeat, report, save or restoration naming it on
    another contract until it commits what it writes under it."""
    holder = locked_task_holder(session, task_id, contract_id)
    if holder is not None:
        raise held_task(session, task_id, contract_id, *holder)


def foreign_task(
    session: Session | Connection,
    task_id: uuid.UUID,
    contract_id: uuid.UUID,
    other_contract_id: uuid.UUID,
    explained: str,
    *,
    field: str = "taskId",
) -> ValidationFailed:
    """The refusal of `task_id` (held by `other_contract_id`) on `contract_id`.

    `explained` is the message for a caller who may see both contracts (the same owner);
    anyone else reads only that the id cannot be used on this contract. The details are the
    same either way (the field and the id the caller sent).
    """
    owners: dict[uuid.UUID, str] = {
        cid: owner
        for cid, owner in session.execute(
            select(Contract.id, Contract.owner_id).where(Contract.id.in_([contract_id, other_contract_id]))
        )
    }
    mine = owners.get(contract_id)
    same_owner = mine is not None and mine == owners.get(other_contract_id)
    return foreign_task_refusal(task_id, explained, same_owner, field=field)


def foreign_task_refusal(
    task_id: object, explained: str, same_owner: bool, *, field: str = "taskId"
) -> ValidationFailed:
    """`foreign_task` once the owners are known: the heartbeats' fronts read them with the rest
    of a group's facts, in the one query they make, and cannot afford another."""
    message = (
        explained
        if same_owner
        else f"Task {task_id} cannot be used on this contract; {field} must name a task of this contract "
        "(a new task takes a new id)."
    )
    return ValidationFailed(message, details={"field": field, "taskId": str(task_id)})


def foreign_supervisor(task_id: object) -> str:
    """The explanation for the owner of both contracts when a supervisor's task id is named on
    another contract (task reports, state saves and heartbeats)."""
    return (
        f"Task {task_id} is the supervisor of another contract; a supervisor's task id belongs to "
        "one contract."
    )


def foreign_ordinary_task(task_id: object) -> str:
    """The explanation for the owner of both contracts when another contract's ordinary task
    (one reported started there) is named here (task reports, state saves and heartbeats)."""
    return f"Task {task_id} belongs to another contract; a task id belongs to one contract."


__all__ = [
    "MOST_TASK_LOCKS",
    "NEW_TASKS_GATE",
    "NEW_TASKS_SPACE",
    "TASK_LOCK_SPACE",
    "foreign_ordinary_task",
    "foreign_supervisor",
    "foreign_task",
    "foreign_task_refusal",
    "held_elsewhere_sql",
    "held_here_sql",
    "held_task",
    "locked_task_holder",
    "refuse_held_task",
    "task_holder",
    "task_lock_key_sql",
    "task_lock_sql",
]
