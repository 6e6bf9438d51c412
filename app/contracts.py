"""Guarded commands on contracts: each one short transaction on the locked row.

Every command here locks the contract row (`app.contract_rows`), checks the caller may see
it, asks the pure domain what to do, applies it and writes the event in the same
transaction. The HTTP front, the API module and the Celery workers all call these, so a rule
holds the same way whoever asks.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from app.agent_reports import first_delivery
from app.auth import PERSON_ROLES, Caller
from app.completion_flow import begin_completion, complete
from app.contract_rows import (
    apply_phase,
    lock_contract,
    lock_contract_with_facts,
    refuse_if_closed,
    set_status,
    touch,
)
from app.db import UnitOfWork
from app.domain.completion import check_phase_readiness, registered_validators
from app.domain.errors import Forbidden, ValidationFailed
from app.domain.lifecycle import Status, WaitingFor, check_transition, decision_for_a_person
from app.domain.phase_change import (
    ContractSnapshot,
    PhaseChangeRequest,
    person_must_confirm,
    plan_phase_change,
)
from app.domain.phases import parse_phase_config, resolve_phase_config, validate_deliverable
from app.domain.records import EventType
from app.events import record_event
from app.gate import load_gate_facts, phase_config_of
from app.models import CompletedDeliverable, Contract
from app.queues import TaskName

MAX_NAME = 500  # contracts.name
MAX_ID = 100  # contracts.contract_type and contracts.phase


def create_contract(
    uow: UnitOfWork,
    caller: Caller,
    *,
    name: str,
    contract_type: str,
    phase_guard: bool = False,
    auto_complete_enabled: bool | None = None,
    phase_config: dict[str, Any] | None = None,
    now: datetime,
) -> Contract:
    if not name.strip():
        raise ValidationFailed("A contract needs a non-empty name.", missing=["name"])
    if len(name) > MAX_NAME or len(contract_type) > MAX_ID:
        raise ValidationFailed(
            f"A contract's name may have at most {MAX_NAME} characters and its type {MAX_ID}.",
            details={"field": "name" if len(name) > MAX_NAME else "contractType"},
        )
    own = parse_phase_config(phase_config, registered_validators()) if phase_config is not None else None
    config = resolve_phase_config(contract_type, own)
    contract = Contract(
        id=uuid.uuid4(),
        owner_id=caller.owner_id,
        name=name,
        contract_type=contract_type,
        phase_config=phase_config,
        phase=config.initial_phase,
        status=Status.CREATED.value,
        version=1,
        phase_guard=phase_guard,
        auto_complete_enabled=(
            uow.settings.contracts.auto_complete_enabled
            if auto_complete_enabled is None
            else auto_complete_enabled
        ),
        status_changed_at=now,
        last_activity_at=now,
        created_at=now,
        updated_at=now,
    )
    uow.session.add(contract)
    uow.session.flush()
    record_event(
        uow.session,
        contract.id,
        EventType.CONTRACT_CREATED,
        {"name": name, "contractType": contract_type, "phase": contract.phase, "status": contract.status},
        now,
    )
    return contract


def change_status(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    target: Status,
    *,
    reason: str | None = None,
    blocker: str | None = None,
    waiting_for: WaitingFor | None = None,
    now: datetime,
) -> tuple[Status, Contract]:
    """Move a contract along the status table on a person's or supervisor's request.

    Two moves carry extra guards: `completing` only from the terminal phase with its gate
    met, which then runs the same completion flow as auto-detection; `completed` only from
    `completing`, and it runs the cleanup at once (the person confirmed early).
    """
    contract = lock_contract(uow.session, caller, contract_id)
    if target is Status.WAITING_FOR_INPUT and waiting_for is None:
        waiting_for = WaitingFor.QUESTION
    decision = decision_for_a_person(Status(contract.status), target)
    declining = (
        target is Status.ACTIVE
        and contract.status == Status.WAITING_FOR_INPUT.value
        and contract.waiting_for == WaitingFor.PHASE_CONFIRMATION.value
    )
    if decision is not None and not caller.is_person:
        if declining:
            # Declining answers the confirmation wait, and that answer is a person's to give.
            config = phase_config_of(contract)
            raise person_must_confirm(
                contract.phase,
                config.next_phase(contract.phase) or contract.phase,
                [d.to_json() for d in config.get(contract.phase).deliverables],
            )
        raise Forbidden(decision, caller.role.value, sorted(PERSON_ROLES))
    if target is Status.COMPLETING:
        check_transition(Status(contract.status), target)
        config = phase_config_of(contract)
        if contract.phase != config.terminal_phase:
            missing = [
                f"Phase: the contract is in '{contract.phase}', "
                f"not the terminal phase '{config.terminal_phase}'"
            ]
        else:
            missing = list(check_phase_readiness(config, load_gate_facts(uow.session, contract)).missing)
        if missing:
            raise ValidationFailed(
                "Only a contract in its terminal phase with that phase's gate met can begin "
                f"completing: {'; '.join(missing)}.",
                missing=missing,
                details={"phase": contract.phase, "terminalPhase": config.terminal_phase},
            )
        previous = Status(contract.status)
        begin_completion(uow, contract, now, reason=reason or "completion requested")
        return previous, contract
    if target is Status.COMPLETED:
        check_transition(Status(contract.status), target)
        previous = Status(contract.status)
        complete(uow, contract, now, reason=reason or "completion confirmed")
        return previous, contract
    previous = set_status(
        uow.session,
        contract,
        target,
        now,
        reason=reason,
        blocker=blocker,
        waiting_for=waiting_for.value if waiting_for else None,
    )
    if declining:
        # A person said "not yet" to the next phase: stay here, and automation does not ask
        # again until new progress arrives in this phase.
        record_event(
            uow.session,
            contract.id,
            EventType.PHASE_CONFIRMATION_DECLINED,
            {"phase": contract.phase, "reason": reason},
            now,
        )
    elif target is Status.ACTIVE and previous is Status.COMPLETING:
        # A person rejected the completion: it is not begun again until new progress arrives.
        record_event(uow.session, contract.id, EventType.COMPLETION_REJECTED, {"reason": reason}, now)
    elif target is Status.ACTIVE:
        # Work resumes: the gate may have been met while nobody was allowed to act on it.
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return previous, contract


def change_phase(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    request: PhaseChangeRequest,
    *,
    now: datetime,
) -> Contract:
    """The guarded phase change: version check, gate, phase guard, all under the row lock.

    Whether a person asks is taken from the authenticated caller, whatever the request says:
    only a `user` or `admin` may lift a phase guard (DESIGN "Who may do what").
    """
    request = replace(request, caller_is_person=caller.is_person)
    contract, facts = lock_contract_with_facts(uow.session, caller, contract_id)
    config = phase_config_of(contract)
    snapshot = ContractSnapshot(
        contract.phase, Status(contract.status), contract.version, contract.phase_guard, contract.waiting_for
    )
    plan = plan_phase_change(config, snapshot, facts, request)
    # Apply the plan as the domain decided it: its version, and its status (a confirmed move
    # out of waiting_for_input returns the contract to active).
    apply_phase(
        uow.session,
        contract,
        plan.new_phase,
        plan.new_version,
        now,
        forced=plan.forced,
        confirmed=plan.confirmed,
    )
    if plan.new_status is not Status(contract.status):
        set_status(uow.session, contract, plan.new_status, now, reason="phase confirmed")
    ids = config.phase_ids()
    if ids.index(plan.new_phase) > ids.index(plan.old_phase):
        # Judge the new phase; a person's forced move backwards is not undone by automation.
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return contract


def mark_deliverable(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    deliverable_id: str,
    *,
    phase: str | None = None,
    message_id: str | None = None,
    now: datetime,
) -> tuple[Contract, bool]:
    """Mark a deliverable of the current (or a named) phase; marking twice is one effect."""
    contract = lock_contract(uow.session, caller, contract_id)
    if not first_delivery(uow, contract.id, message_id, "mark_deliverable", now):
        return contract, False
    refuse_if_closed(contract, "deliverables")
    phase = phase or contract.phase
    validate_deliverable(phase_config_of(contract), phase, deliverable_id)
    exists = uow.session.get(CompletedDeliverable, (contract.id, phase, deliverable_id))
    if exists is not None:
        return contract, False
    uow.session.add(
        CompletedDeliverable(
            contract_id=contract.id,
            phase=phase,
            deliverable_id=deliverable_id,
            completed_at=now,
            completed_by=caller.principal_id,
        )
    )
    touch(contract, now)
    record_event(
        uow.session,
        contract.id,
        EventType.DELIVERABLE_COMPLETED,
        {"phase": phase, "deliverableId": deliverable_id},
        now,
    )
    uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return contract, True


def set_auto_complete(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, enabled: bool, *, now: datetime
) -> Contract:
    contract = lock_contract(uow.session, caller, contract_id)
    refuse_if_closed(contract, "settings")
    if contract.auto_complete_enabled != enabled:
        contract.auto_complete_enabled = enabled
        touch(contract, now)
        record_event(uow.session, contract.id, EventType.AUTO_COMPLETE_CHANGED, {"enabled": enabled}, now)
        if enabled:
            uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return contract


__all__ = [
    "change_phase",
    "change_status",
    "create_contract",
    "mark_deliverable",
    "set_auto_complete",
]
