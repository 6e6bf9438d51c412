"""The completion flow (seed 2.3): advance, ask, begin completion, finalise after the grace.

Automation acts only on a locked row and only on what the pure domain decides
(`decide_after_progress`): advance through satisfied phases, ask a person where a phase guard
stands, begin completion when the terminal phase's gate is met, and finalise once the grace
period has passed unless a person rejected it meanwhile. Every step here is safe to run any
number of times, which is what makes redelivered and duplicated follow-ups harmless.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Caller, Role
from app.contract_rows import apply_phase, lock_contract, lock_contract_with_facts, set_status
from app.db import UnitOfWork
from app.domain.completion import (
    CompletionAction,
    Decision,
    ReadinessResult,
    Step,
    check_phase_readiness,
    completion_due,
    decide_after_progress,
    would_complete,
)
from app.domain.lifecycle import Status, WaitingFor
from app.domain.records import EventType
from app.events import record_event
from app.gate import load_gate_facts, phase_config_of, switches_for
from app.models import Contract, ContractEvent
from app.pending_writes import pending_events
from app.queues import TaskName
from app.worktrees import release_for_completion

PROGRESS_EVENTS: Final = (EventType.TASK_COMPLETED, EventType.DELIVERABLE_COMPLETED, EventType.PHASE_CHANGED)


def advance_if_ready(uow: UnitOfWork, contract: Contract, now: datetime) -> Decision:
    """The auto-advance flow on a locked row: advance, ask, or begin completion, repeatedly.

    A phase whose gate is already met on entry is judged at once, so a chain of satisfied
    phases is walked in one transaction; it stops where a person or more work is needed.
    """
    config = phase_config_of(contract)
    decision = Decision(Step.WAIT)
    for _ in range(len(config.phases) + 1):
        decision = decide_after_progress(
            config,
            Status(contract.status),
            contract.phase_guard,
            load_gate_facts(uow.session, contract),
            switches_for(contract, uow.settings),
        )
        if decision.step is Step.ADVANCE and decision.next_phase:
            apply_phase(
                uow.session,
                contract,
                decision.next_phase,
                contract.version + 1,
                now,
                forced=False,
                confirmed=False,
            )
            continue
        if decision.step is Step.ASK_CONFIRMATION:
            if _declined_since_progress(uow.session, contract):
                decision = Decision(Step.WAIT)
                break
            set_status(
                uow.session,
                contract,
                Status.WAITING_FOR_INPUT,
                now,
                waiting_for=WaitingFor.PHASE_CONFIRMATION.value,
            )
        elif decision.step is Step.BEGIN_COMPLETION:
            if _completion_rejected_since_progress(uow.session, contract):
                decision = Decision(Step.WAIT)
            else:
                begin_completion(uow, contract, now, reason="terminal phase gate met")
        elif decision.step is Step.NOTIFY and not _phase_ready_told(uow.session, contract):
            record_event(
                uow.session,
                contract.id,
                EventType.PHASE_READY,
                {"phase": contract.phase, "version": contract.version, "autoAdvance": False},
                now,
            )
        break
    return decision


def _refused_since_progress(session: Session, contract: Contract, refusal: EventType) -> bool:
    """Was `refusal` (a person's "no") the last word, with no progress recorded since?"""
    relevant = (refusal, *PROGRESS_EVENTS)
    for held in pending_events(session, contract.id):
        if held["type"] in relevant:
            return bool(held["type"] == refusal)
    last = session.scalars(
        select(ContractEvent.type)
        .where(ContractEvent.contract_id == contract.id, ContractEvent.type.in_(relevant))
        .order_by(ContractEvent.id.desc())
        .limit(1)
    ).first()
    return last == refusal


def _completion_rejected_since_progress(session: Session, contract: Contract) -> bool:
    """A person rejected the completion and nothing has happened since: do not ask again."""
    return _refused_since_progress(session, contract, EventType.COMPLETION_REJECTED)


def _declined_since_progress(session: Session, contract: Contract) -> bool:
    """A person declined the next phase and nothing has happened since: do not ask again."""
    return _refused_since_progress(session, contract, EventType.PHASE_CONFIRMATION_DECLINED)


def _phase_ready_told(session: Session, contract: Contract) -> bool:
    """Was this phase, at this version, already announced as ready? Tell people once."""
    held = [e["payload"] for e in pending_events(session, contract.id) if e["type"] == EventType.PHASE_READY]
    last = (
        held[0]
        if held
        else session.scalars(
            select(ContractEvent.payload)
            .where(ContractEvent.contract_id == contract.id, ContractEvent.type == EventType.PHASE_READY)
            .order_by(ContractEvent.id.desc())
            .limit(1)
        ).first()
    )
    if not last:
        return False
    return bool(last.get("phase") == contract.phase and last.get("version") == contract.version)


def evaluate_progress(
    uow: UnitOfWork, contract_id: uuid.UUID, *, now: datetime, caller: Caller | None = None
) -> Decision:
    """Re-judge a contract's gate; safe to run any number of times.

    `caller=None` is the service acting on its own follow-up; a daemon's request names its
    principal, who must be able to see the contract.
    """
    contract = lock_contract(uow.session, caller, contract_id)
    return advance_if_ready(uow, contract, now)


@dataclass(frozen=True, slots=True)
class CompletionCheckOutcome:
    """The gate as judged now, and what the check did about it."""

    readiness: ReadinessResult
    would_complete: bool
    action: CompletionAction
    status: Status
    note: str


def check_completion(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, *, now: datetime
) -> CompletionCheckOutcome:
    """Judge the gate now and act on it under the row lock.

    In the terminal phase with the gate met, an active contract begins completing at once.
    A person's request does so even after a rejected completion (asking again is the
    person changing their mind); a supervisor's does not override a person's rejection, nor
    a contract's auto-completion switched off. Before the terminal phase, a met gate queues
    the evaluation that advances (or asks for confirmation).
    """
    contract, facts = lock_contract_with_facts(uow.session, caller, contract_id)
    config = phase_config_of(contract)
    result = check_phase_readiness(config, facts)
    would = would_complete(config, facts)
    status = Status(contract.status)

    def outcome(action: CompletionAction, note: str) -> CompletionCheckOutcome:
        return CompletionCheckOutcome(result, would, action, Status(contract.status), note)

    if not result.ready:
        return outcome(
            CompletionAction.NONE, f"The gate of '{facts.phase}' is not met: {'; '.join(result.missing)}."
        )
    if status is not Status.ACTIVE:
        return outcome(
            CompletionAction.NONE, f"The contract is '{status.value}'; only an active contract moves on."
        )
    if not would:
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
        return outcome(
            CompletionAction.EVALUATION_QUEUED,
            f"The gate of '{facts.phase}' is met; a worker will advance the phase (or ask for "
            "confirmation where the phase guard is on).",
        )
    by_person = caller.role is not Role.SUPERVISOR
    if not by_person and _completion_rejected_since_progress(uow.session, contract):
        return outcome(
            CompletionAction.NONE,
            "A person rejected the completion; it starts again on new progress or when a person asks.",
        )
    if not by_person and not switches_for(contract, uow.settings).on:
        return outcome(CompletionAction.NONE, "Auto-completion is off for this contract; a person must ask.")
    begin_completion(
        uow, contract, now, reason="completion requested by a person" if by_person else "completion check"
    )
    grace = uow.settings.contracts.completion_grace_seconds
    return outcome(
        CompletionAction.COMPLETION_STARTED,
        f"The contract is now completing; it completes in {grace:g} s unless a person rejects it.",
    )


def begin_completion(uow: UnitOfWork, contract: Contract, now: datetime, *, reason: str) -> None:
    """Status `completing`, and the finalisation scheduled for the end of the grace period."""
    set_status(uow.session, contract, Status.COMPLETING, now, reason=reason)
    record_event(uow.session, contract.id, EventType.COMPLETION_DETECTED, {"phase": contract.phase}, now)
    uow.dispatch_after_commit(
        TaskName.FINALIZE_COMPLETION,
        {"contractId": str(contract.id)},
        countdown=uow.settings.contracts.completion_grace_seconds,
    )


def complete(uow: UnitOfWork, contract: Contract, now: datetime, *, reason: str) -> None:
    """The cleanup step: release worktrees, queue daemon commands, mark completed."""
    worktrees, supervisors = release_for_completion(uow, contract, now)
    record_event(
        uow.session,
        contract.id,
        EventType.COMPLETION_CLEANUP,
        {"worktreesReleased": worktrees, "supervisorsStopped": supervisors},
        now,
    )
    set_status(uow.session, contract, Status.COMPLETED, now, reason=reason)
    uow.dispatch_after_commit(TaskName.PUBLISH_DAEMON_COMMANDS, {"contractId": str(contract.id)})


def finalize_completion(uow: UnitOfWork, contract_id: uuid.UUID, *, now: datetime) -> bool:
    """After the grace period: release worktrees, tell the daemon to stop, mark completed.

    Returns False (and does nothing) if the completion was rejected meanwhile, is not due
    yet, or already happened, which is what makes a second delivery harmless.
    """
    contract = lock_contract(uow.session, None, contract_id)
    if contract.status != Status.COMPLETING.value or contract.completion_detected_at is None:
        return False
    grace = uow.settings.contracts.completion_grace_seconds
    if not completion_due(contract.completion_detected_at.timestamp(), now.timestamp(), grace):
        due = contract.completion_detected_at + timedelta(seconds=grace)
        uow.dispatch_after_commit(
            TaskName.FINALIZE_COMPLETION,
            {"contractId": str(contract.id)},
            countdown=(due - now).total_seconds(),
        )
        return False
    # Nobody confirmed this completion: the grace period ran out without a rejection.
    complete(uow, contract, now, reason=f"grace period of {grace:g} s over; nobody rejected the completion")
    return True


def due_completions(uow: UnitOfWork, now: datetime) -> Sequence[uuid.UUID]:
    """Contracts whose grace period is over: the beat sweep's catch-all for lost countdowns."""
    cutoff = now - timedelta(seconds=uow.settings.contracts.completion_grace_seconds)
    return uow.session.scalars(
        select(Contract.id).where(
            Contract.status == Status.COMPLETING.value, Contract.completion_detected_at <= cutoff
        )
    ).all()


__all__ = [
    "CompletionCheckOutcome",
    "advance_if_ready",
    "begin_completion",
    "check_completion",
    "complete",
    "due_completions",
    "evaluate_progress",
    "finalize_completion",
]
