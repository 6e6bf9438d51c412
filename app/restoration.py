"""Restoring a supervisor after its daemon restarted (seed 3.6, plan Task 3.4): what it is told.

**Restoration** (`restore`) is computed by the server, so every daemon restores the same way:
the stored state is loaded and checked against the contract and its own conversation (the pure
`app.domain.restoration.decide_restoration` names the branch and every inconsistency), then
the open questions, the answers received since the restored save, and each waited-on task's
current status are read, and the first of the protocol's steps 5-8 that applies is named
(`next`), with a compact context text a supervisor can be given. What it carries is bounded
by size as well as by count: the newest history within `HISTORY_BYTES`, the oldest open
questions within `PENDING_QUESTION_BYTES` (`pendingQuestionsNextAfter` says where the questions
endpoint reads on), the newest answers since the save within `ANSWERED_QUESTION_BYTES`, the
waited-on tasks within `WAITING_TASK_BYTES`.

When a *supervisor* asks, the restoration also **claims** the supervisor
(`app.supervisor_claims`): it issues a new incarnation (the `supervisors` row is bumped, or
created alive in `initializing`), re-points its open questions' answers to the daemon that
named itself, records `supervisor_restored`, and from then on the older incarnations'
heartbeats and saves are fenced. A `user` or `admin` gets the same answer as a read-only
preview (`claimed: false`). Restarting a supervisor, a person's decision, is
`app.supervisor_restart`; `restart` and `RestartRequested` are importable from here too, as
`app.api` calls them through this module.

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
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.byte_budget import json_size, take_within_budget
from app.contract_rows import CONTRACT_ID_FIELD, get_contract, lock_contract, refuse_if_closed
from app.daemon_commands import check_daemon_id
from app.db import UnitOfWork
from app.domain.errors import ContractError
from app.domain.questions import QuestionStatus
from app.domain.restoration import (
    Branch,
    ContextFacts,
    HistoryScan,
    HistoryScanner,
    OpenQuestion,
    ReceivedAnswer,
    RestorationDecision,
    WaitedTask,
    claimed_history_length,
    decide_restoration,
    next_step,
    restoration_context,
    waited_task_ids,
)
from app.domain.state_values import check_host
from app.gate import load_gate_facts, phase_config_of
from app.history_reads import HistoryMessage, newest_history
from app.incarnations import latest_supervisor_task
from app.models import Contract, ContractTask, ConversationMessage, Supervisor, SupervisorQuestion
from app.schemas import Schema, Timestamp
from app.state_reads import snapshot_fields
from app.state_rows import find_state, refuse_foreign_supervisor, state_snapshot
from app.supervisor_claims import claim_supervisor, refuse_unknown_supervisor
from app.supervisor_restart import RestartRequested, restart

MAX_HISTORY_LIMIT: Final = 1000
MAX_ANSWERS: Final = 50
# Open questions carried whole in a restoration: the 50 oldest, and only while their JSON stays
# within PENDING_QUESTION_BYTES. A question of the largest allowed size is about 88 KB in 4-byte
# characters, so 50 of them (4.4 MB) beside the history's 4 MiB (`HISTORY_BYTES`) made one answer
# of over 8 MB; the daemon reads the others from the questions endpoint, paged
# (`pendingQuestionsNextAfter`).
MAX_PENDING_QUESTIONS: Final = 50
PENDING_QUESTION_BYTES: Final = 1024 * 1024
# The answers received since the save are bounded the same way: a question and its answer of the
# largest allowed size are about 56 KB in 4-byte characters, 2.8 MB for 50.
ANSWERED_QUESTION_BYTES: Final = 1024 * 1024
# The waited-on tasks too, in the restored state's order: a save names at most 1,000 and a task's
# name is up to 500 characters, about 2 KB in 4-byte characters, so they alone could make 2 MB.
# With the history's 4 MiB and the questions', that is 7 MiB beside the fields bounded by count
# (the 8 KB context, the state's task ids).
WAITING_TASK_BYTES: Final = 1024 * 1024
# Open questions read from the database at a time: a list the size bound ends early reads little
# past it.
_QUESTION_ROWS_PER_FETCH: Final = 10


# --- what the restoring daemon is told ---------------------------------------------------------


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
        description="The contract's oldest open questions, oldest first: at most 50 and at most 1 MiB "
        "of JSON (at least one when any is open). Read the others with GET .../questions?open=true"
        "&after=`pendingQuestionsNextAfter`"
    )
    pending_question_count: int = Field(description="How many questions are open in all")
    pending_questions_truncated: bool = Field(
        False,
        description="True when the size bound (1 MiB) ended `pendingQuestions` before 50 questions",
    )
    pending_questions_next_after: uuid.UUID | None = Field(
        None,
        description="When more questions are open than `pendingQuestions` carries: its last question's "
        "id, to pass as `after` to GET .../questions?open=true to read the others; null when all are here",
    )
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
    answered_questions: list[AnsweredQuestionView] = Field(
        description="The newest questions answered since the restored save, oldest first: at most 50 "
        "and at most 1 MiB of JSON (at least one when any was answered)"
    )
    answered_questions_truncated: bool = Field(
        False,
        description="True when the size bound (1 MiB) left older answers out: read them with "
        "GET .../questions?open=false",
    )
    waiting_tasks: list[WaitingTaskView] = Field(
        description="The restored state's waited-on tasks, in its order, with what the contract knows "
        "of each now: at most 1 MiB of JSON (at least one when any is waited on)"
    )
    waiting_tasks_truncated: bool = Field(
        False,
        description="True when the size bound (1 MiB) ended `waitingTasks`: the others are the ids "
        "after its last one in `state.waitingOnTaskIds`; `next` and `context` judge them all",
    )
    context: str = Field(description="A compact plain-text summary to give the supervisor (≤ 8 KB)")
    contract: ContractSummary


# --- reading what the restoration carries ------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class PendingQuestions:
    """The open questions a restoration carries, and how many are open in all."""

    carried: list[PendingQuestionView]
    count: int
    truncated: bool

    @property
    def next_after(self) -> uuid.UUID | None:
        """Where the questions endpoint reads on: the last one carried, when not all are."""
        return self.carried[-1].id if self.count > len(self.carried) else None


def pending_questions(
    session: Session, contract_id: uuid.UUID, budget: int = PENDING_QUESTION_BYTES
) -> PendingQuestions:
    """The contract's oldest open questions, in the questions endpoint's order (asked, then id,
    so its `after` reads on from the last one), while they number at most
    `MAX_PENDING_QUESTIONS` and their JSON stays within `budget` bytes (the first is always
    taken); and how many are open in all (counted only when not all were taken)."""
    open_questions = (
        SupervisorQuestion.contract_id == contract_id,
        SupervisorQuestion.status == QuestionStatus.OPEN.value,
    )
    query = (
        select(SupervisorQuestion)
        .where(*open_questions)
        .order_by(SupervisorQuestion.asked_at, SupervisorQuestion.id)
        .limit(MAX_PENDING_QUESTIONS)
        .execution_options(yield_per=_QUESTION_ROWS_PER_FETCH)
    )
    taken = take_within_budget(
        session.execute(query).scalars(),
        _pending_view,
        json_size,
        budget,
        reserve=2,  # the list's brackets
    )
    carried, truncated = taken.items, taken.truncated
    count = (
        len(carried)
        if not truncated and len(carried) < MAX_PENDING_QUESTIONS
        else int(
            session.scalar(select(func.count()).select_from(SupervisorQuestion).where(*open_questions)) or 0
        )
    )
    return PendingQuestions(carried, count, truncated)


def _pending_view(q: SupervisorQuestion) -> PendingQuestionView:
    return PendingQuestionView(
        id=q.id,
        question=q.question,
        type=q.question_type,
        options=_options(q.options),
        context=q.context,
        asked_at=_aware(q.asked_at),
    )


def answered_since(
    session: Session, contract_id: uuid.UUID, saved_at: datetime | None, budget: int = ANSWERED_QUESTION_BYTES
) -> tuple[list[AnsweredQuestionView], bool]:
    """The newest questions answered after the restored save (all answered ones when it has
    no save time), at most `MAX_ANSWERS` and while their JSON stays within `budget` bytes (the
    newest is always taken), oldest first; and whether the size bound left older ones out."""
    query = select(SupervisorQuestion).where(
        SupervisorQuestion.contract_id == contract_id,
        SupervisorQuestion.status == QuestionStatus.ANSWERED.value,
    )
    if saved_at is not None:
        query = query.where(SupervisorQuestion.answered_at > saved_at)
    query = (
        query.order_by(SupervisorQuestion.answered_at.desc(), SupervisorQuestion.id.desc())
        .limit(MAX_ANSWERS)
        .execution_options(yield_per=_QUESTION_ROWS_PER_FETCH)
    )
    taken = take_within_budget(
        session.execute(query).scalars(),
        _answered_view,
        json_size,
        budget,
        reserve=2,  # the list's brackets
    )
    return list(reversed(taken.items)), taken.truncated


def _answered_view(q: SupervisorQuestion) -> AnsweredQuestionView:
    return AnsweredQuestionView(
        id=q.id,
        question=q.question,
        answer=q.answer,
        answered_at=_aware(q.answered_at) if q.answered_at is not None else None,
    )


def waiting_task_views(
    waiting: Sequence[WaitedTask], budget: int = WAITING_TASK_BYTES
) -> tuple[list[WaitingTaskView], bool]:
    """The waited-on tasks, in order, while their JSON stays within `budget` bytes (the first is
    always taken); and whether the size bound left later ones out. The count is the save's own
    bound (1,000 task ids); a thousand long names in 4-byte characters made 2 MB."""
    taken = take_within_budget(waiting, _waiting_view, json_size, budget, reserve=2)  # the brackets
    return taken.items, taken.truncated


def _waiting_view(t: WaitedTask) -> WaitingTaskView:
    return WaitingTaskView(task_id=t.task_id, name=t.name, status=t.status, exists=t.exists)


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
        host = check_host(host)
    claim = caller.role is Role.SUPERVISOR
    contract = (
        lock_contract(session, caller, contract_id) if claim else get_contract(session, caller, contract_id)
    )
    if claim:
        refuse_if_closed(contract, "supervisor restorations", CONTRACT_ID_FIELD)
    if task_id is not None:
        refuse_foreign_supervisor(session, contract.id, task_id)
    row = find_state(session, contract.id, task_id, lock=claim)
    if claim and task_id is not None and row is None:
        refuse_unknown_supervisor(session, contract.id, task_id)
    chosen = task_id or (row.task_id if row is not None else latest_supervisor_task(session, contract.id))
    state_raw = state_snapshot(row) if row is not None else None
    checkpoint_raw = row.checkpoint if row is not None else None
    longest = max(claimed_history_length(state_raw), claimed_history_length(checkpoint_raw))
    scan = scan_history(session, row.task_id, longest) if row is not None else HistoryScanner(0).done()
    known = _tasks(session, contract.id, [*waited_task_ids(state_raw), *waited_task_ids(checkpoint_raw)])
    decision = decide_restoration(state_raw, checkpoint_raw, contract.phase, frozenset(known), scan)
    snap = decision.snapshot

    waiting = [
        WaitedTask(t, known[t][0] if t in known else None, known[t][1] if t in known else None, t in known)
        for t in (snap.waiting_on_task_ids if snap is not None else ())
    ]
    pending = pending_questions(session, contract.id)
    answered, answers_truncated = answered_since(
        session, contract.id, snap.saved_at if snap is not None else None
    )
    step = next_step(decision, pending.count, waiting)
    waiting_views, waiting_truncated = waiting_task_views(waiting)

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
        given = claim_supervisor(
            session,
            contract,
            chosen,
            row,
            now,
            decision=decision,
            step=step,
            questions_pending=bool(pending.count),
            daemon_id=daemon_id,
            host=host,
        )
        previous, incarnation, claimed = given.previous, given.incarnation, True
        redirected, notices = given.redirected, given.notices
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
            questions=tuple(OpenQuestion(q.question, q.type, tuple(q.options)) for q in pending.carried),
            open_question_count=pending.count,
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
        pending_questions=pending.carried,
        pending_question_count=pending.count,
        pending_questions_truncated=pending.truncated,
        pending_questions_next_after=pending.next_after,
        questions_redirected=redirected,
        notices=notices,
        answered_questions=answered,
        answered_questions_truncated=answers_truncated,
        waiting_tasks=waiting_views,
        waiting_tasks_truncated=waiting_truncated,
        context=context,
        contract=ContractSummary(
            id=contract.id,
            name=contract.name,
            status=contract.status,
            phase=contract.phase,
            version=contract.version,
        ),
    )


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


__all__ = [
    "ANSWERED_QUESTION_BYTES",
    "MAX_HISTORY_LIMIT",
    "MAX_PENDING_QUESTIONS",
    "PENDING_QUESTION_BYTES",
    "WAITING_TASK_BYTES",
    "AnsweredQuestionView",
    "ContractSummary",
    "InconsistencyView",
    "PendingQuestionView",
    "PendingQuestions",
    "RestartRequested",
    "Restoration",
    "RestoredState",
    "WaitingTaskView",
    "answered_since",
    "pending_questions",
    "restart",
    "restore",
    "scan_history",
    "waiting_task_views",
]
