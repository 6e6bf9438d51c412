"""Guarded commands on contracts: each one short transaction on the locked row.

Every command here locks the contract row (`app.contract_rows`), checks the caller may see
it, asks the pure domain what to do, applies it and writes the event in the same
transaction. The HTTP front, the API module and the Celery workers all call these, so a rule
holds the same way whoever asks.
"""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

from app.agent_reports import first_delivery
from app.auth import PERSON_ROLES, Caller
from app.completion_flow import begin_completion, complete
from app.config import Settings, get_settings
from app.contract_rows import (
    ContractRow,
    apply_phase,
    lock_contract,
    lock_contract_with_facts,
    lock_row_with_facts,
    phase_columns,
    refuse_if_closed,
    set_status,
    touch,
)
from app.db import (
    Dispatch,
    UnitOfWork,
    after_commit,
    driver_autocommit,
    get_engine,
    roll_back,
    unit_of_work,
)
from app.domain.completion import GateFacts, check_phase_readiness, registered_validators
from app.domain.errors import Forbidden, ValidationFailed
from app.domain.lifecycle import Status, WaitingFor, check_transition, decision_for_a_person
from app.domain.phase_change import (
    ContractSnapshot,
    PhaseChangePlan,
    PhaseChangeRequest,
    person_must_confirm,
    plan_phase_change,
)
from app.domain.phases import PhaseConfig, parse_phase_config, resolve_phase_config, validate_deliverable
from app.domain.records import EventType
from app.domain.reported_text import CONTRACT_NAME_RULE, name_problem
from app.events import record_event
from app.gate import load_gate_facts, phase_config_of
from app.models import CompletedDeliverable, Contract
from app.pending_writes import PendingWrites, event_row, outbox_row, write_held
from app.queues import TaskName

if TYPE_CHECKING:
    from app.broker import Sender

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
    problem = name_problem(name, CONTRACT_NAME_RULE)
    if problem is not None:  # the HTTP front refuses the characters first; a blank name, and
        # every problem from the API module and the CLI, here
        raise ValidationFailed(f"name {problem}", details={"field": "name"})
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


def _plan(
    contract: ContractRow | Contract, facts: GateFacts, request: PhaseChangeRequest, caller: Caller
) -> tuple[PhaseConfig, PhaseChangePlan]:
    """The domain's judgement of a phase change on the locked row, whichever path read it.

    Whether a person asks is taken from the authenticated caller, whatever the request says:
    only a `user` or `admin` may lift a phase guard (DESIGN "Who may do what").
    """
    request = replace(request, caller_is_person=caller.is_person)
    config = phase_config_of(contract)
    snapshot = ContractSnapshot(
        contract.phase, Status(contract.status), contract.version, contract.phase_guard, contract.waiting_for
    )
    return config, plan_phase_change(config, snapshot, facts, request)


def _moves_forward(config: PhaseConfig, plan: PhaseChangePlan) -> bool:
    """Judge the new phase after commit; a person's forced move backwards is not undone by automation."""
    ids = config.phase_ids()
    return ids.index(plan.new_phase) > ids.index(plan.old_phase)


def change_phase(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    request: PhaseChangeRequest,
    *,
    now: datetime,
) -> Contract:
    """The guarded phase change inside a unit of work: version check, gate, phase guard, under the row lock.

    For a caller already in a transaction; a phase change on its own (the HTTP front, the API
    module) takes `change_phase_now`, the same rules on a Core connection.
    """
    contract, facts = lock_contract_with_facts(uow.session, caller, contract_id)
    config, plan = _plan(contract, facts, request, caller)
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
    if _moves_forward(config, plan):
        uow.dispatch_after_commit(TaskName.EVALUATE_PROGRESS, {"contractId": str(contract.id)})
    return contract


def change_phase_now(
    caller: Caller,
    contract_id: uuid.UUID,
    request: PhaseChangeRequest,
    *,
    now: datetime,
    sender: Sender | None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> ContractRow:
    """The guarded phase change as a transaction of its own, on a Core connection.

    The same rules as `change_phase` (the row lock, the caller's visibility, the version
    check, the gate, the phase guard, the event and the follow-up's outbox row in the same
    transaction, the follow-up sent only after COMMIT) without the ORM: the row is read as
    plain values, judged by the pure domain, and written back with its event and outbox row
    by the one statement `app.pending_writes.write_held` sends. On PostgreSQL the `BEGIN`
    travels with the lock and the `COMMIT` with the write: two round trips, where a plain
    `UPDATE` in a transaction of its own takes three through psycopg2 (BEGIN, UPDATE,
    COMMIT). A confirmed change out of waiting_for_input also moves the status: that one is
    rolled back and made again by `change_phase` in a unit of work, where `set_status` runs
    every rule a status move has.
    """
    settings = settings or get_settings()
    bind = engine or get_engine()
    prepare = settings.database_prepared_statements
    try:
        if bind.dialect.name == "postgresql":
            with driver_autocommit(bind) as connection:
                try:
                    contract, written, outbox = _change_phase_on(
                        connection, caller, contract_id, request, now, prepare
                    )
                except BaseException:
                    roll_back(connection)
                    raise
        else:
            with bind.begin() as connection:  # BEGIN IMMEDIATE: SQLite's write lock (app.db)
                contract, written, outbox = _change_phase_on(
                    connection, caller, contract_id, request, now, prepare
                )
    except _StatusMoves:
        with unit_of_work(sender, bind, settings) as uow:
            moved = change_phase(uow, caller, contract_id, request, now=now)
            return ContractRow(*(getattr(moved, f.name) for f in fields(ContractRow)))
    after_commit(bind, written, outbox, sender)
    return contract


class _StatusMoves(Exception):
    """The Core path hands a change that also moves the status to the session path."""


def _change_phase_on(
    connection: Connection,
    caller: Caller,
    contract_id: uuid.UUID,
    request: PhaseChangeRequest,
    now: datetime,
    prepare: bool,
) -> tuple[ContractRow, PendingWrites, list[Dispatch]]:
    contract, facts, reserved = lock_row_with_facts(connection, caller, contract_id, prepare=prepare)
    config, plan = _plan(contract, facts, request, caller)
    if plan.new_status is not Status(contract.status):
        # A confirmed change out of waiting_for_input also moves the status, and a status
        # move has side effects of its own (`set_status`): the session path makes it.
        raise _StatusMoves
    written = PendingWrites()
    columns, payload = phase_columns(
        plan.old_phase, plan.new_phase, plan.new_version, now, forced=plan.forced, confirmed=plan.confirmed
    )
    # Event payloads carry their contract's id, as `app.events.record_event` writes them.
    cid = str(contract.id)
    written.events.append(
        event_row(contract.id, EventType.PHASE_CHANGED.value, {"contractId": cid, **payload}, now)
    )
    contract.update(columns)
    outbox: list[Dispatch] = []
    if _moves_forward(config, plan):
        follow_up = Dispatch(TaskName.EVALUATE_PROGRESS, {"contractId": cid})
        written.outbox.append(outbox_row(follow_up.task, follow_up.payload, None, now))
        outbox.append(follow_up)
    changes = [(contract.id, columns)]
    if reserved is None:  # SQLite: the engine's transaction commits
        write_held(connection, written, changes, prepare=prepare)
    else:
        # The rows take the ids reserved under the lock, and the write carries the COMMIT.
        # (A reserved id left unused is a gap in a sequence, nothing more.)
        written.events[0]["id"] = reserved[0]
        if written.outbox:
            written.outbox[0]["id"] = reserved[1]
        write_held(connection, written, changes, prepare=prepare, commit=True)
    return contract, written, outbox


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
    if not first_delivery(uow, contract.id, caller.principal_id, message_id, "mark_deliverable", now):
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
    "change_phase_now",
    "change_status",
    "create_contract",
    "mark_deliverable",
    "set_auto_complete",
]
