"""Restoring a supervisor after its daemon restarted (seed 3.6, plan Task 3.4), and restarting one.

**Restoration** (`restore`) is computed by the server, so every daemon restores the same way:
the stored state is loaded and checked against the contract and its own conversation (the pure
`app.domain.supervisor_state.decide_restoration` names the branch and every inconsistency),
then the open questions, the answers received since the restored save, and each waited-on
task's current status are read, and the first of the protocol's steps 5-8 that applies is
named (`next`), with a compact context text a supervisor can be given.

When a *supervisor* asks, the restoration **claims** the supervisor: it issues a new
incarnation (the `supervisors` row is bumped, or created alive in `initializing`), records
`supervisor_restored`, and from then on the older incarnations' heartbeats and saves are
fenced. The new incarnation is above every incarnation stored, the save's own included, so
the new incarnation's first save wins whatever stateVersion it counts from. A `user` or
`admin` gets the same answer as a read-only preview (`claimed: false`).

**Restart** (`restart`, a person's or operator's decision) bumps the incarnation (fencing
the running one: it is no longer alive until the new incarnation reports), queues a
`restart_supervisor` command for its daemon, and records `supervisor_restart_requested`
(counted as `supervisor_restarts_total`). Sending the incarnation to replace makes a retry
safe: a restart of an incarnation already replaced by a restart answers that restart again.

The contract row is locked first, as every writer of a contract does, so saves, claims and
restarts of one contract's supervisors take turns; only then the supervisor's
`supervisor_states` and `supervisors` rows (the heartbeat ingestion and the dead sweep take no
contract lock and never lock a state row, so no two writers wait on each other in a circle).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import Field
from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.contract_rows import get_contract, lock_contract, refuse_if_closed
from app.daemon_commands import check_daemon_id, queue_command
from app.db import UnitOfWork, upsert_ignoring
from app.domain.errors import ContractError, Forbidden, SupervisorNotFound, ValidationFailed
from app.domain.questions import QuestionStatus
from app.domain.records import EventType
from app.domain.supervisor_state import (
    Branch,
    ContextFacts,
    HistoryScan,
    HistoryScanner,
    OpenQuestion,
    ReceivedAnswer,
    RestorationDecision,
    WaitedTask,
    check_label,
    decide_restoration,
    next_step,
    restoration_context,
)
from app.domain.supervisors import MAX_HOST, StateChange, SupervisorRecord, SupervisorState
from app.events import record_event
from app.gate import load_gate_facts, phase_config_of
from app.heartbeat_store import SUPERVISOR_COLUMNS, supervisor_record
from app.models import (
    Contract,
    ContractTask,
    ConversationMessage,
    DaemonCommand,
    Supervisor,
    SupervisorQuestion,
    SupervisorStateRow,
)
from app.schemas import Schema, Timestamp
from app.supervisor_state import (
    HistoryMessage,
    find_state,
    newest_history,
    refuse_foreign_supervisor,
    snapshot_fields,
    state_snapshot,
)

RESTART_COMMAND: Final = "restart_supervisor"
MAX_HISTORY_LIMIT: Final = 1000
MAX_ANSWERS: Final = 50
# Open questions carried whole in a restoration: the answer stays a few MiB at most.
MAX_PENDING_QUESTIONS: Final = 50
MAX_REASON: Final = 2000
# How many of the contract's supervisor task ids a refused claim names.
MAX_NAMED_SUPERVISORS: Final = 20
RESTARTING_ROLES: Final = (Role.USER, Role.ADMIN)
_SUPERVISORS: Table = Supervisor.__table__  # type: ignore[assignment]


# --- answers --------------------------------------------------------------------------------


class InconsistencyView(Schema):
    kind: Literal[
        "phase_mismatch", "unknown_waited_tasks", "history_truncated", "history_malformed", "state_malformed"
    ]
    detail: str


class PendingQuestionView(Schema):
    """An open question of the contract: re-deliver it to the user."""

    id: uuid.UUID
    question: str
    type: str
    options: list[str]
    context: str | None
    asked_at: Timestamp


class AnsweredQuestionView(Schema):
    """A question answered since the restored save: the answer is part of the context."""

    id: uuid.UUID
    question: str
    answer: Any
    answered_at: Timestamp | None


class WaitingTaskView(Schema):
    """A waited-on task, with what the contract knows of it now."""

    task_id: str
    name: str | None
    status: str | None = Field(description="running, done or failed; null when it is no task of the contract")
    exists: bool


class RestoredState(Schema):
    """The restored snapshot: the last save (`resume`) or the last checkpoint (`checkpoint`)."""

    incarnation: int = Field(description="The incarnation that saved it")
    state_version: int
    state: str
    phase: str
    current_activity: str
    progress: int
    error: str | None
    spawned_task_ids: list[str]
    waiting_on_task_ids: list[str]
    history_length: int
    saved_at: Timestamp | None
    checkpoint_id: str | None = Field(description="Set when restored from a checkpoint")


class ContractSummary(Schema):
    id: uuid.UUID
    name: str
    status: str
    phase: str
    version: int


class Restoration(Schema):
    """What a restarted daemon needs, and the branch of the protocol the server took."""

    task_id: uuid.UUID | None = Field(description="The supervisor restored (null: none known and none named)")
    branch: Literal["fresh", "checkpoint", "resume"]
    next: Literal["start_fresh", "redeliver_questions", "resume_waiting", "resume"] = Field(
        description="The first of the protocol's steps 5-8 that applies"
    )
    claimed: bool = Field(
        description="True when this call (a supervisor's) issued `incarnation`; false for a preview"
    )
    incarnation: int | None = Field(
        description="Claimed: the new incarnation to send with heartbeats and saves. Preview: the "
        "one in force"
    )
    previous_incarnation: int | None
    warnings: list[str]
    inconsistencies: list[InconsistencyView]
    state: RestoredState | None
    history: list[HistoryMessage] = Field(
        description="The newest `historyLimit` restored messages, in order, and no more than about "
        "4 MiB of them (`historyTruncated`)"
    )
    history_from: int = Field(description="The position of the first message in `history`")
    history_truncated: bool = Field(
        False,
        description="True when the size bound (4 MiB) left out older messages within `historyLimit`: "
        "read them from .../supervisor/history, up to `historyFrom`",
    )
    history_length: int = Field(
        description="How many messages the restored state has: send the next save with historyFrom "
        "at most this"
    )
    pending_questions: list[PendingQuestionView] = Field(
        description="The contract's open questions, oldest first, at most 50 (each up to ~26 KB): "
        "page through the rest with GET .../questions?open=true"
    )
    pending_question_count: int = Field(description="How many questions are open in all")
    questions_redirected: int = Field(
        0,
        description="Claimed for a new daemon: how many open questions of this supervisor (or naming "
        "no task) now have their answers sent to it",
    )
    notices: list[str] = Field(
        default_factory=list,
        description="What the daemon must do from now on: the incarnation to send with every "
        "heartbeat and save, where answers to pending questions go",
    )
    answered_questions: list[AnsweredQuestionView]
    waiting_tasks: list[WaitingTaskView]
    context: str = Field(description="A compact plain-text summary to give the supervisor (≤ 8 KB)")
    contract: ContractSummary


class RestartRequested(Schema):
    """A restart was asked of the supervisor's daemon (202)."""

    requested: bool
    task_id: uuid.UUID
    command_id: int = Field(description="The `restart_supervisor` daemon command")
    incarnation: int = Field(description="The new incarnation the restarted supervisor uses")
    previous_incarnation: int = Field(description="The incarnation replaced (now fenced)")
    notice: str = Field(
        description="What the restarted supervisor must do: send the new incarnation with every "
        "heartbeat and save (a save without it is fenced)"
    )


# --- incarnations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reincarnation:
    task_id: uuid.UUID
    previous: int | None
    new: int
    daemon_id: str | None
    host: str | None


def _lock_supervisor(session: Session, task_id: uuid.UUID) -> SupervisorRecord | None:
    row = session.execute(
        select(*SUPERVISOR_COLUMNS).where(Supervisor.task_id == task_id).with_for_update()
    ).first()
    return supervisor_record(row) if row is not None else None


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
    The write counter moves, so a heartbeat batch that read the row before is judged again.
    """
    state = SupervisorState.INITIALIZING if alive else SupervisorState.INTERRUPTED
    saved = state_row.incarnation if state_row is not None else 0
    record = _lock_supervisor(session, task_id)
    if record is None:
        previous = state_row.incarnation if state_row is not None else None
        new = saved + 1
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
        record = _lock_supervisor(session, task_id)  # a first heartbeat landed meanwhile
        assert record is not None
    new = max(record.incarnation, saved) + 1
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


def _latest_supervisor_task(session: Session, contract_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(
        select(Supervisor.task_id)
        .where(Supervisor.contract_id == contract_id)
        .order_by(Supervisor.last_received_at.desc())
        .limit(1)
    )


# --- restoration ----------------------------------------------------------------------------


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


def scan_history(session: Session, task_id: uuid.UUID, length: int) -> HistoryScan:
    """One streamed pass over the stored messages below `length`: gaps and malformed rows."""
    scanner = HistoryScanner(length)
    if length > 0:
        rows = session.execute(
            select(ConversationMessage.seq, ConversationMessage.message)
            .where(ConversationMessage.task_id == task_id, ConversationMessage.seq < length)
            .order_by(ConversationMessage.seq)
            .execution_options(yield_per=200)
        )
        for seq, raw in rows:
            scanner.see(int(seq), raw)
    return scanner.done()


def _claimed_length(raw: Any) -> int:
    value = raw.get("historyLength") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _waited_ids(raw: Any) -> list[str]:
    ids = raw.get("waitingOnTaskIds") if isinstance(raw, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _tasks(session: Session, contract_id: uuid.UUID, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """The contract's tasks among `ids`: id → (name, status)."""
    wanted: list[uuid.UUID] = []
    for raw in ids:
        try:
            wanted.append(uuid.UUID(raw))
        except ValueError:
            continue
    if not wanted:
        return {}
    rows = session.execute(
        select(ContractTask.id, ContractTask.name, ContractTask.status).where(
            ContractTask.contract_id == contract_id, ContractTask.id.in_(wanted)
        )
    )
    return {str(tid): (name, status) for tid, name, status in rows}


def _options(raw: Any) -> list[str]:
    return [str(o) for o in raw] if isinstance(raw, list) else []


def _answer_text(answer: Any) -> str:
    return answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False, default=str)


def _deliverables(session: Session, contract: Contract) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The current phase's deliverables done, and the required ones still missing."""
    try:
        phases = phase_config_of(contract).phases
    except ContractError:
        return (), ()
    phase = next((p for p in phases if p.id == contract.phase), None)
    if phase is None:
        return (), ()
    done = load_gate_facts(session, contract).completed_deliverables
    return (
        tuple(d.id for d in phase.deliverables if d.id in done),
        tuple(d.id for d in phase.deliverables if d.required and d.id not in done),
    )


def _restored_state(decision: RestorationDecision) -> RestoredState | None:
    snap = decision.snapshot
    if snap is None:
        return None
    return RestoredState(
        **snapshot_fields(snap),
        error=snap.error,
        checkpoint_id=snap.checkpoint_id if decision.branch is Branch.CHECKPOINT else None,
    )


def restore(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    now: datetime,
    *,
    task_id: uuid.UUID | None = None,
    daemon_id: str | None = None,
    host: str | None = None,
    history_limit: int = 200,
) -> Restoration:
    """The restoration of the contract's supervisor (`task_id`'s, or the most recently saved);
    a supervisor's call claims it (see the module docstring)."""
    session = uow.session
    if daemon_id is not None:  # it names the daemon's command queue from now on: as heartbeats take it
        daemon_id = check_daemon_id(daemon_id)
    if host is not None:
        host = check_label(host, "host", MAX_HOST)
    claim = caller.role is Role.SUPERVISOR
    contract = (
        lock_contract(session, caller, contract_id) if claim else get_contract(session, caller, contract_id)
    )
    if claim:
        refuse_if_closed(contract, "supervisor restorations")
    if task_id is not None:
        refuse_foreign_supervisor(session, contract.id, task_id)
    row = find_state(session, contract.id, task_id, lock=claim)
    if claim and task_id is not None and row is None:
        refuse_unknown_supervisor(session, contract.id, task_id)
    chosen = task_id or (row.task_id if row is not None else _latest_supervisor_task(session, contract.id))
    state_raw = state_snapshot(row) if row is not None else None
    checkpoint_raw = row.checkpoint if row is not None else None
    longest = max(_claimed_length(state_raw), _claimed_length(checkpoint_raw))
    scan = scan_history(session, row.task_id, longest) if row is not None else HistoryScanner(0).done()
    known = _tasks(session, contract.id, [*_waited_ids(state_raw), *_waited_ids(checkpoint_raw)])
    decision = decide_restoration(state_raw, checkpoint_raw, contract.phase, frozenset(known), scan)
    snap = decision.snapshot

    waiting = [
        WaitedTask(t, known[t][0] if t in known else None, known[t][1] if t in known else None, t in known)
        for t in (snap.waiting_on_task_ids if snap is not None else ())
    ]
    open_questions = (
        SupervisorQuestion.contract_id == contract.id,
        SupervisorQuestion.status == QuestionStatus.OPEN.value,
    )
    questions = list(
        session.scalars(
            select(SupervisorQuestion)
            .where(*open_questions)
            .order_by(SupervisorQuestion.asked_at)
            .limit(MAX_PENDING_QUESTIONS)
        )
    )
    open_count = (
        len(questions)
        if len(questions) < MAX_PENDING_QUESTIONS
        else int(
            session.scalar(select(func.count()).select_from(SupervisorQuestion).where(*open_questions)) or 0
        )
    )
    answered_query = select(SupervisorQuestion).where(
        SupervisorQuestion.contract_id == contract.id,
        SupervisorQuestion.status == QuestionStatus.ANSWERED.value,
    )
    if snap is not None and snap.saved_at is not None:
        answered_query = answered_query.where(SupervisorQuestion.answered_at > snap.saved_at)
    answered = list(
        reversed(
            session.scalars(
                answered_query.order_by(SupervisorQuestion.answered_at.desc()).limit(MAX_ANSWERS)
            ).all()
        )
    )
    step = next_step(decision, open_count, waiting)

    messages: list[HistoryMessage] = []
    history_from = 0
    truncated = False
    if snap is not None and row is not None:
        lowest = max(0, snap.history_length - history_limit)
        messages, history_from, truncated = newest_history(session, row.task_id, lowest, snap.history_length)

    warnings = list(decision.warnings)
    notices: list[str] = []
    previous = incarnation = None
    claimed = False
    redirected = 0
    if claim and chosen is not None:
        given = reincarnate(session, contract, chosen, row, now, alive=True, daemon_id=daemon_id, host=host)
        previous, incarnation, claimed = given.previous, given.new, True
        notices.append(
            f"Send incarnation {given.new} with every heartbeat and state save: saves without it, or "
            "with an older one, are fenced (SUPERVISOR_FENCED)."
        )
        if daemon_id is not None:
            redirected = redirect_questions(session, contract.id, chosen, daemon_id)
            if redirected:
                notices.append(
                    f"The answers to {redirected} pending question(s) will come to daemon {daemon_id}."
                )
        elif questions:
            notices.append(
                "Name your daemon (daemonId) when restoring, so answers to pending questions come to you."
            )
        record_event(
            session,
            contract.id,
            EventType.SUPERVISOR_RESTORED,
            {
                "taskId": str(chosen),
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
    else:
        if claim:
            warnings.append("Name the supervisor (taskId) to be issued an incarnation.")
        if chosen is not None:
            held = session.scalar(select(Supervisor.incarnation).where(Supervisor.task_id == chosen))
            incarnation = held if held is not None else (row.incarnation if row is not None else None)

    done, missing = _deliverables(session, contract)
    context = restoration_context(
        ContextFacts(
            contract_name=contract.name,
            contract_type=contract.contract_type,
            status=contract.status,
            phase=contract.phase,
            version=contract.version,
            deliverables_done=done,
            deliverables_missing=missing,
            decision=decision,
            next=step,
            waiting=tuple(waiting),
            questions=tuple(
                OpenQuestion(q.question, q.question_type, tuple(_options(q.options))) for q in questions
            ),
            answers=tuple(ReceivedAnswer(q.question, _answer_text(q.answer)) for q in answered),
            history_kept=len(messages),
        )
    )
    return Restoration(
        task_id=chosen,
        branch=decision.branch.value,
        next=step.value,
        claimed=claimed,
        incarnation=incarnation,
        previous_incarnation=previous,
        warnings=warnings,
        inconsistencies=[
            InconsistencyView(kind=i.kind.value, detail=i.detail) for i in decision.inconsistencies
        ],
        state=_restored_state(decision),
        history=messages,
        history_from=history_from,
        history_truncated=truncated,
        history_length=decision.history_length,
        pending_questions=[
            PendingQuestionView(
                id=q.id,
                question=q.question,
                type=q.question_type,
                options=_options(q.options),
                context=q.context,
                asked_at=_aware(q.asked_at),
            )
            for q in questions
        ],
        pending_question_count=open_count,
        questions_redirected=redirected,
        notices=notices,
        answered_questions=[
            AnsweredQuestionView(
                id=q.id,
                question=q.question,
                answer=q.answer,
                answered_at=_aware(q.answered_at) if q.answered_at is not None else None,
            )
            for q in answered
        ],
        waiting_tasks=[
            WaitingTaskView(task_id=t.task_id, name=t.name, status=t.status, exists=t.exists) for t in waiting
        ],
        context=context,
        contract=ContractSummary(
            id=contract.id,
            name=contract.name,
            status=contract.status,
            phase=contract.phase,
            version=contract.version,
        ),
    )


# --- restart --------------------------------------------------------------------------------


def _earlier_restart(
    session: Session, contract_id: uuid.UUID, task_id: uuid.UUID, replaced: int
) -> DaemonCommand | None:
    """The restart command that replaced incarnation `replaced` of the supervisor, if one did."""
    recent = session.scalars(
        select(DaemonCommand)
        .where(DaemonCommand.contract_id == contract_id, DaemonCommand.command == RESTART_COMMAND)
        .order_by(DaemonCommand.id.desc())
        .limit(100)
    )
    for command in recent:
        payload = command.payload if isinstance(command.payload, dict) else {}
        if payload.get("taskId") == str(task_id) and payload.get("previousIncarnation") == replaced:
            return command
    return None


def restart(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    now: datetime,
    *,
    task_id: uuid.UUID | None = None,
    reason: str | None = None,
    incarnation: int | None = None,
) -> RestartRequested:
    """Restart the contract's supervisor (`task_id`'s, or the one heard from last); see the
    module docstring. SUPERVISOR_NOT_FOUND when it has neither reported nor saved state."""
    session = uow.session
    contract = lock_contract(session, caller, contract_id)
    if caller.role not in RESTARTING_ROLES:
        raise Forbidden("restart a supervisor", caller.role.value, [r.value for r in RESTARTING_ROLES])
    refuse_if_closed(contract, "supervisor restarts")
    if reason is not None and (len(reason) > MAX_REASON or "\x00" in reason):
        raise ValidationFailed(
            f"reason is at most {MAX_REASON} characters, without NUL.",
            details={"field": "reason", "limit": MAX_REASON},
        )
    if task_id is not None:
        refuse_foreign_supervisor(session, contract.id, task_id)
    chosen = task_id or _latest_supervisor_task(session, contract.id)
    row = find_state(session, contract.id, chosen, lock=True)
    chosen = chosen or (row.task_id if row is not None else None)
    record = _lock_supervisor(session, chosen) if chosen is not None else None
    if chosen is None or (record is None and row is None):
        raise SupervisorNotFound(
            contract.id,
            f"Contract {contract.id} has no supervisor to restart: none has sent a heartbeat or "
            "saved its state" + (f" as task {task_id}." if task_id is not None else "."),
        )
    current = record.incarnation if record is not None else (row.incarnation if row is not None else 1)
    if incarnation is not None and incarnation != current:
        earlier = _earlier_restart(session, contract.id, chosen, incarnation)
        if earlier is not None:
            return RestartRequested(
                requested=True,
                task_id=chosen,
                command_id=earlier.id,
                incarnation=int(earlier.payload["newIncarnation"]),
                previous_incarnation=incarnation,
                notice=_restart_notice(int(earlier.payload["newIncarnation"])),
            )
        raise ValidationFailed(
            f"Incarnation {incarnation} of supervisor {chosen} is not the one in force ({current}) and "
            f"no restart replaced it. Restart incarnation {current} if a restart is still wanted.",
            details={"field": "incarnation", "incarnation": incarnation, "currentIncarnation": current},
        )
    given = reincarnate(session, contract, chosen, row, now, alive=False)
    why = reason or f"restart requested by a {caller.role.value}"
    command = queue_command(
        uow,
        contract.id,
        RESTART_COMMAND,
        {
            "taskId": str(chosen),
            "newIncarnation": given.new,
            "previousIncarnation": given.previous,
            "reason": why,
            "daemonId": given.daemon_id,
            "host": given.host,
        },
        now,
        daemon_id=given.daemon_id,
        task_id=chosen,
    )
    record_event(
        session,
        contract.id,
        EventType.SUPERVISOR_RESTART_REQUESTED,
        {
            "taskId": str(chosen),
            "previousIncarnation": given.previous,
            "newIncarnation": given.new,
            "commandId": command.id,
            "reason": why,
            "requestedBy": caller.role.value,
        },
        now,
    )
    return RestartRequested(
        requested=True,
        task_id=chosen,
        command_id=command.id,
        incarnation=given.new,
        previous_incarnation=given.previous if given.previous is not None else current,
        notice=_restart_notice(given.new),
    )


def _restart_notice(new: int) -> str:
    return (
        f"The restarted supervisor sends incarnation {new} with every heartbeat and state save; "
        "saves without it, or with an older one, are fenced (SUPERVISOR_FENCED)."
    )


__all__ = [
    "MAX_HISTORY_LIMIT",
    "RESTART_COMMAND",
    "AnsweredQuestionView",
    "ContractSummary",
    "InconsistencyView",
    "PendingQuestionView",
    "Reincarnation",
    "RestartRequested",
    "Restoration",
    "RestoredState",
    "WaitingTaskView",
    "reincarnate",
    "restart",
    "restore",
    "scan_history",
]
