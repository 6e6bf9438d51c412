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
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app.domain.errors import ValidationFailed
from app.models import Contract


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
    another contract (state saves and heartbeats)."""
    return (
        f"Task {task_id} is the supervisor of another contract; a supervisor's task id belongs to "
        "one contract."
    )


def foreign_ordinary_task(task_id: object) -> str:
    """The explanation for the owner of both contracts when another contract's ordinary task
    (one reported started there) is named as a supervisor's (state saves and heartbeats)."""
    return f"Task {task_id} belongs to another contract; a task id belongs to one contract."


__all__ = ["foreign_ordinary_task", "foreign_supervisor", "foreign_task", "foreign_task_refusal"]
