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
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, literal, select, union_all
from sqlalchemy.orm import Session

from app.domain.errors import ValidationFailed
from app.models import Contract, ContractTask, Supervisor, SupervisorStateRow


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


def refuse_held_task(session: Session | Connection, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Refuse `task_id` on `contract_id` when another contract holds it (`task_holder`): the one
    check of task reports (at the fronts and in the workers), state saves and restorations."""
    holder = task_holder(session, task_id, contract_id)
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
    "foreign_ordinary_task",
    "foreign_supervisor",
    "foreign_task",
    "foreign_task_refusal",
    "held_elsewhere_sql",
    "held_task",
    "refuse_held_task",
    "task_holder",
]
