"""The dashboard summary (seed 4.4, `GET /api/v1/contracts/dashboard`): a handful of aggregates.

Owner-scoped like every read (an admin sees every owner's). Each part is one query over the
whole set of the caller's contracts, never one per contract:

- `statusCounts`: `GROUP BY status`; `phaseCounts`: `GROUP BY phase` of the `active` ones.
- `staleContracts`: the one stale rule (`app.sweeps.stale_criteria`, the list's `stale`
  filter and the sweep's), oldest silence first, at most `limit`; `staleCount` is the total.
- `waitingForInput`: contracts in `waiting_for_input`, longest wait first, with what each
  waits for (`waitingFor`: question, phase_confirmation, completion_confirmation), the oldest
  open question's text (`question`, seed 4.4) and its open questions (`openQuestions`, with
  their type and options, so a person can answer from the dashboard): one more query, for the
  listed contracts only, and only when one waits.
- `recentEvents`: the newest `recent` events of the caller's contracts.
- `resourceUsage`: live supervisors (alive and heard within the heartbeat timeout, the
  liveness rule of `app.supervisors`), the task ids they report pending, running tasks
  (`contract_tasks`, not supervisors), daemons heard within the timeout, worktrees open.
- `worktrees`: every worktree by state (open, released: its daemon was asked to remove it,
  removed), in the same one query.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from sqlalchemy import Select, distinct, func, select
from sqlalchemy.orm import Session

from app import schemas
from app.auth import Caller
from app.config import Settings
from app.domain.lifecycle import Status
from app.domain.questions import QuestionStatus
from app.domain.records import TaskStatus
from app.events import event_view
from app.models import Contract, ContractEvent, ContractTask, ContractWorktree, Supervisor, SupervisorQuestion
from app.sweeps import stale_criteria, stale_threshold
from app.worktrees import state_counts

LIST_LIMIT: Final = 50
RECENT_EVENTS: Final = 20
QUESTIONS_PER_CONTRACT: Final = 20


_Q = TypeVar("_Q", bound=Select[*tuple[Any, ...]])


def _scoped(query: _Q, caller: Caller) -> _Q:
    return query if caller.is_admin else query.where(Contract.owner_id == caller.owner_id)


def _joined(query: _Q, table: Any, caller: Caller) -> _Q:
    """Scope rows of a table hanging off a contract: an admin's need no join (every row counts)."""
    if caller.is_admin:
        return query
    return query.join(Contract, Contract.id == table.contract_id).where(Contract.owner_id == caller.owner_id)


def _json_length(session: Session) -> Any:
    """`jsonb_array_length` on PostgreSQL, `json_array_length` on SQLite."""
    name = "jsonb_array_length" if session.get_bind().dialect.name == "postgresql" else "json_array_length"
    return getattr(func, name)(Supervisor.pending_task_ids)


def _open_questions(
    session: Session, contract_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[schemas.OpenQuestion]]:
    """The open questions of these contracts, oldest first, at most QUESTIONS_PER_CONTRACT each."""
    if not contract_ids:
        return {}
    q = SupervisorQuestion
    rank = func.row_number().over(partition_by=q.contract_id, order_by=(q.asked_at, q.id)).label("rank")
    ranked = (
        select(q.contract_id, q.id, q.question, q.question_type, q.options, q.context, q.asked_at, rank)
        .where(q.contract_id.in_(contract_ids), q.status == QuestionStatus.OPEN.value)
        .subquery()
    )
    out: dict[uuid.UUID, list[schemas.OpenQuestion]] = {}
    for cid, qid, text, kind, options, context, asked_at, _ in session.execute(
        select(ranked)
        .where(ranked.c.rank <= QUESTIONS_PER_CONTRACT)
        .order_by(ranked.c.contract_id, ranked.c.rank)
    ):
        out.setdefault(cid, []).append(
            schemas.OpenQuestion(
                id=qid,
                question=text,
                type=kind,
                options=list(options or []),
                context=context,
                asked_at=asked_at,
            )
        )
    return out


def build_dashboard(
    session: Session,
    caller: Caller,
    now: datetime,
    settings: Settings,
    *,
    limit: int = LIST_LIMIT,
    recent: int = RECENT_EVENTS,
) -> schemas.Dashboard:
    status_counts = {s.value: 0 for s in Status}
    for status, count in session.execute(
        _scoped(select(Contract.status, func.count()).group_by(Contract.status), caller)
    ):
        status_counts[str(status)] = int(count)

    phase_counts = {
        str(phase): int(count)
        for phase, count in session.execute(
            _scoped(
                select(Contract.phase, func.count())
                .where(Contract.status == Status.ACTIVE.value)
                .group_by(Contract.phase)
                .order_by(Contract.phase),
                caller,
            )
        )
    }

    threshold = stale_threshold(settings)
    stale_where = stale_criteria(now, threshold)
    stale_count = int(
        session.scalar(_scoped(select(func.count()).select_from(Contract).where(stale_where), caller)) or 0
    )
    stale = [
        schemas.StaleContractInfo(
            id=cid,
            name=name,
            phase=phase,
            status=Status(status),
            last_activity=last,
            stale_duration_secs=int((now - last).total_seconds()),
        )
        for cid, name, phase, status, last in session.execute(
            _scoped(
                select(Contract.id, Contract.name, Contract.phase, Contract.status, Contract.last_activity_at)
                .where(stale_where)
                .order_by(Contract.last_activity_at, Contract.id)
                .limit(limit),
                caller,
            )
        )
    ]

    waiting_where = Contract.status == Status.WAITING_FOR_INPUT.value
    waiting_count = status_counts[Status.WAITING_FOR_INPUT.value]
    waiting_rows = session.execute(
        _scoped(
            select(
                Contract.id,
                Contract.name,
                Contract.phase,
                Contract.waiting_for,
                Contract.status_changed_at,
            )
            .where(waiting_where)
            .order_by(Contract.status_changed_at, Contract.id)
            .limit(limit),
            caller,
        )
    ).all()
    open_questions = _open_questions(session, [row[0] for row in waiting_rows])
    waiting = [
        schemas.WaitingContractInfo(
            id=cid,
            name=name,
            phase=phase,
            waiting_for=waiting_for or "input",
            waiting_since=since,
            question=open_questions[cid][0].question if open_questions.get(cid) else None,
            open_questions=open_questions.get(cid, []),
        )
        for cid, name, phase, waiting_for, since in waiting_rows
    ]

    events = [
        event_view(e)
        for e in session.scalars(
            _scoped(
                select(ContractEvent)
                .join(Contract, Contract.id == ContractEvent.contract_id)
                .order_by(ContractEvent.id.desc())
                .limit(recent),
                caller,
            )
        )
    ]

    live_since = now - timedelta(seconds=settings.contracts.heartbeat_timeout_seconds)
    # Heard within the timeout: a live supervisor if also not declared dead; its daemon is live.
    alive = Supervisor.alive.is_(True)
    supervisors, pending, daemons = session.execute(
        _joined(
            select(
                func.count().filter(alive),
                func.coalesce(func.sum(_json_length(session)).filter(alive), 0),
                func.count(distinct(Supervisor.daemon_id)),
            )
            .select_from(Supervisor)
            .where(Supervisor.last_received_at >= live_since),
            Supervisor,
            caller,
        )
    ).one()
    running = session.scalar(
        _joined(
            select(func.count())
            .select_from(ContractTask)
            .where(ContractTask.status == TaskStatus.RUNNING.value, ContractTask.is_supervisor.is_(False)),
            ContractTask,
            caller,
        )
    )
    # Every worktree by state in one query; resourceUsage.worktrees is the open ones.
    opened, released, removed = session.execute(
        _joined(select(*state_counts()).select_from(ContractWorktree), ContractWorktree, caller)
    ).one()

    return schemas.Dashboard(
        status_counts=status_counts,
        phase_counts=phase_counts,
        stale_contracts=stale,
        stale_count=stale_count,
        waiting_for_input=waiting,
        waiting_count=waiting_count,
        recent_events=events,
        resource_usage=schemas.ResourceUsage(
            active_supervisors=int(supervisors or 0),
            running_tasks=int(running or 0),
            pending_tasks=int(pending or 0),
            active_daemons=int(daemons or 0),
            worktrees=int(opened or 0),
        ),
        worktrees=schemas.WorktreeCounts(
            open=int(opened or 0), released=int(released or 0), removed=int(removed or 0)
        ),
        generated_at=now,
    )


__all__ = ["LIST_LIMIT", "RECENT_EVENTS", "build_dashboard"]
