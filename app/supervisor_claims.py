"""A restoring supervisor's claim: who may be claimed, its new incarnation, its questions' answers.

When a *supervisor* restores (`app.restoration`), the restoration claims the supervisor:

- only a task the contract knows as its supervisor may be claimed
  (`refuse_unknown_supervisor`), else every random task id would become a supervisor, a
  daemon, and the dead sweep's work;
- a new incarnation is issued, alive in `initializing` (`app.incarnations.reincarnate`), so
  from then on the older incarnations' heartbeats and saves are fenced;
- when the daemon names itself, the answers to the supervisor's open questions (and to the
  contract's open questions that name no task) are sent to it from now on
  (`redirect_questions`);
- `supervisor_restored` is recorded, and the daemon is told what to do from now on
  (`app.domain.restoration.claim_notices`).

The caller holds the contract's row lock and the supervisor's state row lock; the
`supervisors` row is locked after them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Table, or_, select, update
from sqlalchemy.orm import Session

from app.domain.errors import SupervisorNotFound
from app.domain.questions import QuestionStatus
from app.domain.records import EventType
from app.domain.restoration import NextStep, RestorationDecision, claim_notices
from app.events import record_event
from app.incarnations import reincarnate
from app.models import Contract, ContractTask, Supervisor, SupervisorQuestion, SupervisorStateRow

# How many of the contract's supervisor task ids a refused claim names.
MAX_NAMED_SUPERVISORS: Final = 20


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim issued: the incarnation replaced and the new one, how many open questions
    now have their answers sent to the claiming daemon, and what it must do from now on."""

    previous: int | None
    incarnation: int
    redirected: int
    notices: list[str]


def supervisor_task_ids(session: Session, contract_id: uuid.UUID) -> list[uuid.UUID]:
    """The tasks the contract knows as its supervisors: started as one, heard from, or saved."""
    known: dict[uuid.UUID, None] = {}
    for query in (
        select(ContractTask.id)
        .where(ContractTask.contract_id == contract_id, ContractTask.is_supervisor.is_(True))
        .order_by(ContractTask.created_at.desc())
        .limit(MAX_NAMED_SUPERVISORS),
        select(Supervisor.task_id).where(Supervisor.contract_id == contract_id).limit(MAX_NAMED_SUPERVISORS),
        select(SupervisorStateRow.task_id)
        .where(SupervisorStateRow.contract_id == contract_id)
        .limit(MAX_NAMED_SUPERVISORS),
    ):
        known.update(dict.fromkeys(session.scalars(query)))
    return list(known)[:MAX_NAMED_SUPERVISORS]


def refuse_unknown_supervisor(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Only a task the contract knows as a supervisor may be claimed (else every random task id
    would become a supervisor, a daemon, and the dead sweep's work): a started supervisor task
    (`contract_tasks.is_supervisor`), or one heard from or saved for this contract."""
    started = session.scalar(
        select(ContractTask.id).where(
            ContractTask.contract_id == contract_id,
            ContractTask.id == task_id,
            ContractTask.is_supervisor.is_(True),
        )
    )
    heard = session.scalar(
        select(Supervisor.task_id).where(Supervisor.contract_id == contract_id, Supervisor.task_id == task_id)
    )
    if started is not None or heard is not None:
        return
    known = supervisor_task_ids(session, contract_id)
    error = SupervisorNotFound(
        contract_id,
        f"Task {task_id} is not a supervisor of contract {contract_id}: only a task started as its "
        "supervisor (isSupervisor), heard from or saved for it may be restored. "
        + (
            f"Its supervisor task ids: {', '.join(str(t) for t in known)}."
            if known
            else "It has none: report the supervisor task started (isSupervisor: true) first."
        ),
    )
    error.details.update({"taskId": str(task_id), "supervisorTaskIds": [str(t) for t in known]})
    raise error


def redirect_questions(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID, daemon_id: str) -> int:
    """Send the answers to the claimed supervisor's open questions (and to the contract's open
    questions that name no task) to the daemon that now runs it; how many were re-pointed."""
    table: Table = SupervisorQuestion.__table__  # type: ignore[assignment]
    moved = session.execute(
        update(table)
        .where(
            table.c.contract_id == contract_id,
            table.c.status == QuestionStatus.OPEN.value,
            or_(table.c.task_id == task_id, table.c.task_id.is_(None)),
            or_(table.c.daemon_id.is_(None), table.c.daemon_id != daemon_id),
        )
        .values(daemon_id=daemon_id)
    )
    return int(getattr(moved, "rowcount", 0) or 0)


def claim_supervisor(
    session: Session,
    contract: Contract,
    task_id: uuid.UUID,
    state_row: SupervisorStateRow | None,
    now: datetime,
    *,
    decision: RestorationDecision,
    step: NextStep,
    questions_pending: bool,
    daemon_id: str | None = None,
    host: str | None = None,
) -> Claim:
    """Claim the supervisor for the restoring daemon (see the module docstring); `decision` and
    `step` are what the restoration told it, recorded with `supervisor_restored`."""
    given = reincarnate(
        session, contract, task_id, state_row, now, alive=True, daemon_id=daemon_id, host=host
    )
    redirected = redirect_questions(session, contract.id, task_id, daemon_id) if daemon_id is not None else 0
    record_event(
        session,
        contract.id,
        EventType.SUPERVISOR_RESTORED,
        {
            "taskId": str(task_id),
            "branch": decision.branch.value,
            "next": step.value,
            "oldIncarnation": given.previous,
            "newIncarnation": given.new,
            "daemonId": given.daemon_id,
            "host": given.host,
            "inconsistencies": [i.kind.value for i in decision.inconsistencies],
        },
        now,
    )
    return Claim(
        previous=given.previous,
        incarnation=given.new,
        redirected=redirected,
        notices=claim_notices(given.new, daemon_id, redirected, questions_pending),
    )


__all__ = [
    "MAX_NAMED_SUPERVISORS",
    "Claim",
    "claim_supervisor",
    "redirect_questions",
    "refuse_unknown_supervisor",
    "supervisor_task_ids",
]
