"""Guarded commands on contracts: each one short transaction on a locked row.

Every command here follows one shape: lock the contract row (`SELECT ... FOR UPDATE` on
PostgreSQL, `BEGIN IMMEDIATE` on SQLite), check the caller may see it, ask the pure domain
what to do, apply it, write the event row in the same transaction and bump
`last_activity_at`. The HTTP front, the API module and the Celery workers all call these, so a
rule holds the same way whoever asks.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.auth import Caller
from app.config import Settings, get_settings
from app.db import UnitOfWork
from app.domain.completion import (
    AutomationSwitches,
    Decision,
    GateFacts,
    ReadinessResult,
    Step,
    TaskSummary,
    check_phase_readiness,
    completion_due,
    decide_after_progress,
    registered_validators,
    would_complete,
)
from app.domain.errors import ContractNotFound, ValidationFailed
from app.domain.lifecycle import Status, WaitingFor, check_transition
from app.domain.phase_change import (
    ContractSnapshot,
    PhaseChangeRequest,
    plan_phase_change,
)
from app.domain.phases import (
    PhaseConfig,
    parse_phase_config,
    resolve_phase_config,
    validate_deliverable,
)
from app.events import record_event
from app.models import (
    CompletedDeliverable,
    Contract,
    ContractEvent,
    ContractTask,
    ContractWorktree,
    DaemonCommand,
    ProcessedMessage,
)

EVALUATE_TASK = "contracts.evaluate_progress"
MAX_NAME = 500  # contracts.name
MAX_ID = 100  # contracts.contract_type and contracts.phase
FINALIZE_TASK = "contracts.finalize_completion"
PUBLISH_COMMANDS_TASK = "contracts.publish_daemon_commands"


# --- reading ----------------------------------------------------------------------------


def phase_config_of(contract: Contract) -> PhaseConfig:
    own = (
        parse_phase_config(contract.phase_config, registered_validators())
        if contract.phase_config is not None
        else None
    )
    return resolve_phase_config(contract.contract_type, own)


def _visible(contract: Contract | None, caller: Caller, contract_id: uuid.UUID) -> Contract:
    if contract is None or not caller.may_access(contract.owner_id):
        raise ContractNotFound(contract_id)
    return contract


def get_contract(session: Session, caller: Caller, contract_id: uuid.UUID) -> Contract:
    return _visible(session.get(Contract, contract_id), caller, contract_id)


def lock_contract(session: Session, caller: Caller | None, contract_id: uuid.UUID) -> Contract:
    """Load the row under a write lock; `caller=None` is the service itself (sweeps)."""
    contract = session.scalars(
        select(Contract)
        .where(Contract.id == contract_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if caller is None:
        if contract is None:
            raise ContractNotFound(contract_id)
        return contract
    return _visible(contract, caller, contract_id)


def load_gate_facts(session: Session, contract: Contract, phase: str | None = None) -> GateFacts:
    phase = phase or contract.phase
    done = session.scalars(
        select(CompletedDeliverable.deliverable_id).where(
            CompletedDeliverable.contract_id == contract.id, CompletedDeliverable.phase == phase
        )
    ).all()
    tasks = session.execute(
        select(ContractTask.name, ContractTask.status, ContractTask.is_supervisor).where(
            ContractTask.contract_id == contract.id, ContractTask.phase == phase
        )
    ).all()
    return GateFacts(phase, frozenset(done), tuple(TaskSummary(*t) for t in tasks))


def readiness(session: Session, contract: Contract) -> ReadinessResult:
    return check_phase_readiness(phase_config_of(contract), load_gate_facts(session, contract))


def switches_for(contract: Contract, settings: Settings) -> AutomationSwitches:
    return AutomationSwitches(
        auto_complete_feature=settings.feature_flags.auto_complete,
        auto_advance_phases=settings.contracts.auto_advance_phases,
        contract_auto_complete=contract.auto_complete_enabled,
    )


def phase_readiness_view(
    session: Session, caller: Caller, contract_id: uuid.UUID, settings: Settings | None = None
) -> dict[str, Any]:
    settings = settings or get_settings()
    contract = get_contract(session, caller, contract_id)
    config = phase_config_of(contract)
    result = check_phase_readiness(config, load_gate_facts(session, contract))
    gate = config.get(contract.phase).gate
    return {
        "phase": contract.phase,
        "ready": result.ready,
        "readiness": result.readiness.value,
        "missing": list(result.missing),
        "autoAdvanceEnabled": bool(gate and gate.auto_advance and switches_for(contract, settings).on),
    }


def contract_json(contract: Contract) -> dict[str, Any]:
    def ts(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(contract.id),
        "ownerId": contract.owner_id,
        "name": contract.name,
        "contractType": contract.contract_type,
        "phaseConfig": contract.phase_config,
        "phase": contract.phase,
        "status": contract.status,
        "version": contract.version,
        "phaseGuard": contract.phase_guard,
        "autoCompleteEnabled": contract.auto_complete_enabled,
        "statusChangedAt": ts(contract.status_changed_at),
        "lastActivityAt": ts(contract.last_activity_at),
        "waitingFor": contract.waiting_for,
        "blockedReason": contract.blocked_reason,
        "failureReason": contract.failure_reason,
        "completionDetectedAt": ts(contract.completion_detected_at),
        "createdAt": ts(contract.created_at),
        "updatedAt": ts(contract.updated_at),
    }


# --- listing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContractFilter:
    statuses: tuple[Status, ...] = ()
    phase: str | None = None
    stale: bool = False
    stale_threshold: timedelta | None = None
    waiting: bool = False
    limit: int = 50
    cursor: str | None = None


def encode_cursor(contract: Contract) -> str:
    raw = f"{contract.created_at.isoformat()}|{contract.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, cid = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("cursor timestamp has no time zone")
        return created, uuid.UUID(cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "The cursor is not one this server issued; pass the 'nextCursor' of a previous page.",
            details={"field": "cursor"},
        ) from None


def list_contracts(
    session: Session,
    caller: Caller,
    flt: ContractFilter,
    now: datetime,
    settings: Settings | None = None,
) -> tuple[list[Contract], str | None]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
    settings = settings or get_settings()
    query = select(Contract)
    if not caller.is_admin:
        query = query.where(Contract.owner_id == caller.owner_id)
    if flt.statuses:
        query = query.where(Contract.status.in_([s.value for s in flt.statuses]))
    if flt.phase:
        query = query.where(Contract.phase == flt.phase)
    if flt.waiting:
        query = query.where(Contract.status == Status.WAITING_FOR_INPUT.value)
    if flt.stale:
        threshold = flt.stale_threshold or timedelta(minutes=settings.contracts.stale_threshold_minutes)
        query = query.where(
            Contract.last_activity_at < now - threshold,
            Contract.status.in_([s.value for s in Status.open()]),
        )
    if flt.cursor:
        created, cid = decode_cursor(flt.cursor)
        query = query.where(
            or_(
                Contract.created_at < created,
                and_(Contract.created_at == created, Contract.id < cid),
            )
        )
    query = query.order_by(Contract.created_at.desc(), Contract.id.desc()).limit(flt.limit + 1)
    rows = list(session.scalars(query))
    page = rows[: flt.limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > flt.limit and page else None
    return page, next_cursor


# --- commands ---------------------------------------------------------------------------


def _touch(contract: Contract, now: datetime) -> None:
    contract.last_activity_at = now
    contract.updated_at = now


def _set_status(
    session: Session,
    contract: Contract,
    target: Status,
    now: datetime,
    *,
    reason: str | None = None,
    blocker: str | None = None,
    waiting_for: str | None = None,
) -> Status:
    """Move the status along the table, keep the side columns honest, record the event."""
    previous = Status(contract.status)
    check_transition(previous, target, reason=reason, blocker=blocker)
    contract.status = target.value
    contract.status_changed_at = now
    contract.waiting_for = waiting_for if target is Status.WAITING_FOR_INPUT else None
    contract.blocked_reason = blocker if target is Status.BLOCKED else None
    if target is Status.FAILED:
        contract.failure_reason = reason
    if target is Status.COMPLETING:
        contract.completion_detected_at = now
    elif previous is Status.COMPLETING and target is Status.ACTIVE:
        contract.completion_detected_at = None
    _touch(contract, now)
    payload: dict[str, Any] = {
        "oldStatus": previous.value,
        "newStatus": target.value,
        "reason": reason or blocker or waiting_for,
    }
    record_event(session, contract.id, "status_changed", payload, now)
    return previous


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
    settings: Settings | None = None,
) -> Contract:
    settings = settings or get_settings()
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
            settings.contracts.auto_complete_enabled
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
        "contract_created",
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

    Two moves carry the seed's guards (1.4): `completing` only from the terminal phase with
    its gate met, which then runs the same completion flow as auto-detection; `completed`
    only from `completing`, and it runs the cleanup at once (the person confirmed early).
    """
    settings = get_settings()
    contract = lock_contract(uow.session, caller, contract_id)
    if target is Status.WAITING_FOR_INPUT and waiting_for is None:
        waiting_for = WaitingFor.QUESTION
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
        _begin_completion(uow, contract, now, settings, reason=reason or "completion requested")
        return previous, contract
    if target is Status.COMPLETED:
        check_transition(Status(contract.status), target)
        previous = Status(contract.status)
        _complete(uow, contract, now, reason=reason or "completion confirmed")
        return previous, contract
    previous = _set_status(
        uow.session,
        contract,
        target,
        now,
        reason=reason,
        blocker=blocker,
        waiting_for=waiting_for.value if waiting_for else None,
    )
    if target is Status.ACTIVE and previous is Status.COMPLETING:
        # A person rejected the completion: it is not begun again until new progress arrives.
        record_event(uow.session, contract.id, "completion_rejected", {"reason": reason}, now)
    elif target is Status.ACTIVE:
        # Work resumes: the gate may have been met while nobody was allowed to act on it.
        uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return previous, contract


def change_phase(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    request: PhaseChangeRequest,
    *,
    now: datetime,
) -> Contract:
    contract = lock_contract(uow.session, caller, contract_id)
    config = phase_config_of(contract)
    snapshot = ContractSnapshot(
        contract.phase, Status(contract.status), contract.version, contract.phase_guard, contract.waiting_for
    )
    plan = plan_phase_change(config, snapshot, load_gate_facts(uow.session, contract), request)
    # Apply the plan as the domain decided it: its version, and its status (a confirmed move
    # out of waiting_for_input returns the contract to active).
    _apply_phase(
        uow.session,
        contract,
        plan.new_phase,
        plan.new_version,
        now,
        forced=plan.forced,
        confirmed=plan.confirmed,
    )
    if plan.new_status is not Status(contract.status):
        _set_status(uow.session, contract, plan.new_status, now, reason="phase confirmed")
    ids = config.phase_ids()
    if ids.index(plan.new_phase) > ids.index(plan.old_phase):
        # Judge the new phase; a person's forced move backwards is not undone by automation.
        uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return contract


def _apply_phase(
    session: Session,
    contract: Contract,
    new_phase: str,
    new_version: int,
    now: datetime,
    *,
    forced: bool,
    confirmed: bool,
) -> None:
    old = contract.phase
    contract.phase = new_phase
    contract.version = new_version
    _touch(contract, now)
    record_event(
        session,
        contract.id,
        "phase_changed",
        {
            "oldPhase": old,
            "newPhase": new_phase,
            "version": contract.version,
            "forced": forced,
            "confirmed": confirmed,
        },
        now,
    )


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
    if not _first_delivery(uow, contract.id, message_id, "mark_deliverable", now):
        return contract, False
    _refuse_if_closed(contract, "deliverables")
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
    _touch(contract, now)
    record_event(
        uow.session,
        contract.id,
        "deliverable_completed",
        {"phase": phase, "deliverableId": deliverable_id},
        now,
    )
    uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return contract, True


def set_auto_complete(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, enabled: bool, *, now: datetime
) -> Contract:
    contract = lock_contract(uow.session, caller, contract_id)
    if contract.auto_complete_enabled != enabled:
        contract.auto_complete_enabled = enabled
        _touch(contract, now)
        record_event(uow.session, contract.id, "auto_complete_changed", {"enabled": enabled}, now)
        if enabled:
            uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return contract


def _refuse_if_closed(contract: Contract, what: str) -> None:
    status = Status(contract.status)
    if status in Status.terminal():
        raise ValidationFailed(
            f"The contract is '{status.value}': no more {what} can be recorded on it.",
            details={"status": status.value},
        )


def _first_delivery(
    uow: UnitOfWork, contract_id: uuid.UUID, message_id: str | None, kind: str, now: datetime
) -> bool:
    """Claim a daemon message's id under the contract's lock; False for a repeat delivery.

    The claim commits with the effect, so a message is applied once however often it
    arrives; calls without a message id (HTTP commands) are judged on their own terms.
    """
    return message_id is None or claim_message(uow.session, contract_id, message_id, kind, now)


def claim_message(
    session: Session, contract_id: uuid.UUID, message_id: str, kind: str, now: datetime
) -> bool:
    """Record that a message's effect is being committed; False if it already was."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(ProcessedMessage)
        .values(contract_id=contract_id, message_id=message_id, kind=kind, processed_at=now)
        .on_conflict_do_nothing(index_elements=["contract_id", "message_id"])
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def record_task_started(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    task_id: uuid.UUID,
    task_name: str,
    is_supervisor: bool,
    message_id: str | None = None,
    now: datetime,
) -> Contract:
    """A task was spawned. A supervisor starting is what makes a `created` contract active."""
    contract = lock_contract(uow.session, caller, contract_id)
    if not _first_delivery(uow, contract.id, message_id, "task_started", now):
        return contract
    _refuse_if_closed(contract, "tasks")
    task = uow.session.get(ContractTask, task_id)
    if task is None:
        uow.session.add(
            ContractTask(
                id=task_id,
                contract_id=contract.id,
                name=task_name,
                status="running",
                is_supervisor=is_supervisor,
                phase=contract.phase,
                created_at=now,
                updated_at=now,
            )
        )
        _touch(contract, now)
        record_event(
            uow.session,
            contract.id,
            "task_spawned",
            {
                "taskId": str(task_id),
                "taskName": task_name,
                "isSupervisor": is_supervisor,
                "phase": contract.phase,
            },
            now,
        )
    if is_supervisor and contract.status == Status.CREATED.value:
        _set_status(uow.session, contract, Status.ACTIVE, now, reason="supervisor started")
        uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return contract


def record_task_completed(
    uow: UnitOfWork,
    caller: Caller,
    contract_id: uuid.UUID,
    *,
    task_id: uuid.UUID,
    task_name: str,
    success: bool,
    message_id: str | None = None,
    now: datetime,
    settings: Settings | None = None,
) -> Decision | None:
    """Apply a task-completed report and, under the same lock, what the gate now allows.

    Completing the task and advancing the phase share one transaction, so two workers
    finishing the last two tasks of a phase advance it once: the second waits for the row
    lock and then judges the phase the first one left.
    """
    contract = lock_contract(uow.session, caller, contract_id)
    if not _first_delivery(uow, contract.id, message_id, "task_completed", now):
        return None
    _refuse_if_closed(contract, "task results")
    task = uow.session.get(ContractTask, task_id)
    new_status = "done" if success else "failed"
    if task is None:
        task = ContractTask(
            id=task_id,
            contract_id=contract.id,
            name=task_name,
            status=new_status,
            is_supervisor=False,
            phase=contract.phase,
            created_at=now,
            updated_at=now,
            completed_at=now,
        )
        uow.session.add(task)
    elif task.contract_id != contract.id:
        raise ValidationFailed(
            f"Task {task_id} belongs to another contract.",
            details={"taskId": str(task_id)},
        )
    elif task.status in ("done", "failed"):
        return None
    else:
        task.status = new_status
        task.updated_at = now
        task.completed_at = now
    _touch(contract, now)
    record_event(
        uow.session,
        contract.id,
        "task_completed",
        {"taskId": str(task_id), "taskName": task_name, "success": success},
        now,
    )
    uow.session.flush()
    return advance_if_ready(uow, contract, now, settings)


def advance_if_ready(
    uow: UnitOfWork, contract: Contract, now: datetime, settings: Settings | None = None
) -> Decision:
    """The auto-advance flow on a locked row: advance, ask, or begin completion, repeatedly.

    A phase whose gate is already met on entry is judged at once, so a chain of satisfied
    phases is walked in one transaction; it stops where a person or more work is needed.
    """
    settings = settings or get_settings()
    config = phase_config_of(contract)
    decision = Decision(Step.WAIT)
    for _ in range(len(config.phases) + 1):
        decision = decide_after_progress(
            config,
            Status(contract.status),
            contract.phase_guard,
            load_gate_facts(uow.session, contract),
            switches_for(contract, settings),
        )
        if decision.step is Step.ADVANCE and decision.next_phase:
            _apply_phase(
                uow.session,
                contract,
                decision.next_phase,
                contract.version + 1,
                now,
                forced=False,
                confirmed=False,
            )
            uow.session.flush()
            continue
        if decision.step is Step.ASK_CONFIRMATION:
            _set_status(
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
                _begin_completion(uow, contract, now, settings, reason="terminal phase gate met")
        elif decision.step is Step.NOTIFY and not _phase_ready_told(uow.session, contract):
            record_event(
                uow.session,
                contract.id,
                "phase_ready",
                {"phase": contract.phase, "version": contract.version, "autoAdvance": False},
                now,
            )
        break
    return decision


PROGRESS_EVENTS: Final = ("task_completed", "deliverable_completed", "phase_changed")


def _completion_rejected_since_progress(session: Session, contract: Contract) -> bool:
    """A person rejected the completion and nothing has happened since: do not ask again."""
    last = session.scalars(
        select(ContractEvent.type)
        .where(
            ContractEvent.contract_id == contract.id,
            ContractEvent.type.in_(("completion_rejected", *PROGRESS_EVENTS)),
        )
        .order_by(ContractEvent.id.desc())
        .limit(1)
    ).first()
    return last == "completion_rejected"


def _phase_ready_told(session: Session, contract: Contract) -> bool:
    """Was this phase, at this version, already announced as ready? Tell people once."""
    last = session.scalars(
        select(ContractEvent.payload)
        .where(ContractEvent.contract_id == contract.id, ContractEvent.type == "phase_ready")
        .order_by(ContractEvent.id.desc())
        .limit(1)
    ).first()
    if not last:
        return False
    return bool(last.get("phase") == contract.phase and last.get("version") == contract.version)


def evaluate_progress(
    uow: UnitOfWork,
    contract_id: uuid.UUID,
    *,
    now: datetime,
    caller: Caller | None = None,
    settings: Settings | None = None,
) -> Decision:
    """Re-judge a contract's gate; safe to run any number of times.

    `caller=None` is the service acting on its own follow-up; a daemon's request names its
    principal, who must be able to see the contract.
    """
    contract = lock_contract(uow.session, caller, contract_id)
    return advance_if_ready(uow, contract, now, settings)


def check_completion(uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID) -> dict[str, Any]:
    contract = get_contract(uow.session, caller, contract_id)
    config = phase_config_of(contract)
    facts = load_gate_facts(uow.session, contract)
    result = check_phase_readiness(config, facts)
    if result.ready and Status(contract.status) is Status.ACTIVE:
        uow.dispatch_after_commit(EVALUATE_TASK, {"contractId": str(contract.id)})
    return {
        "ready": result.ready,
        "wouldComplete": would_complete(config, facts),
        "missing": list(result.missing),
    }


def _begin_completion(
    uow: UnitOfWork, contract: Contract, now: datetime, settings: Settings, *, reason: str
) -> None:
    """Status `completing`, and the finalisation scheduled for the end of the grace period."""
    _set_status(uow.session, contract, Status.COMPLETING, now, reason=reason)
    record_event(uow.session, contract.id, "completion_detected", {"phase": contract.phase}, now)
    uow.dispatch_after_commit(
        FINALIZE_TASK,
        {"contractId": str(contract.id)},
        countdown=settings.contracts.completion_grace_seconds,
    )


def _complete(uow: UnitOfWork, contract: Contract, now: datetime, *, reason: str) -> None:
    """The cleanup step: release worktrees, queue daemon commands, mark completed."""
    worktrees = list(
        uow.session.scalars(
            select(ContractWorktree).where(
                ContractWorktree.contract_id == contract.id, ContractWorktree.released_at.is_(None)
            )
        )
    )
    for wt in worktrees:
        wt.released_at = now
        uow.session.add(
            DaemonCommand(
                contract_id=contract.id,
                command="remove_worktree",
                payload={"worktreeId": str(wt.id), "path": wt.path},
                created_at=now,
            )
        )
    supervisors = uow.session.scalars(
        select(ContractTask.id).where(
            ContractTask.contract_id == contract.id,
            ContractTask.is_supervisor.is_(True),
            ContractTask.status == "running",
        )
    ).all()
    for sup_id in supervisors:
        uow.session.add(
            DaemonCommand(
                contract_id=contract.id,
                command="stop_supervisor",
                payload={"taskId": str(sup_id)},
                created_at=now,
            )
        )
    uow.session.execute(
        update(ContractTask)
        .where(
            ContractTask.contract_id == contract.id,
            ContractTask.is_supervisor.is_(True),
            ContractTask.status == "running",
        )
        .values(status="done", updated_at=now, completed_at=now)
    )
    record_event(
        uow.session,
        contract.id,
        "completion_cleanup",
        {"worktreesReleased": len(worktrees), "supervisorsStopped": len(supervisors)},
        now,
    )
    _set_status(uow.session, contract, Status.COMPLETED, now, reason=reason)
    uow.dispatch_after_commit(PUBLISH_COMMANDS_TASK, {"contractId": str(contract.id)})


def finalize_completion(
    uow: UnitOfWork, contract_id: uuid.UUID, *, now: datetime, settings: Settings | None = None
) -> bool:
    """After the grace period: release worktrees, tell the daemon to stop, mark completed.

    Returns False (and does nothing) if the completion was rejected meanwhile, is not due
    yet, or already happened, which is what makes a second delivery harmless.
    """
    settings = settings or get_settings()
    contract = lock_contract(uow.session, None, contract_id)
    if contract.status != Status.COMPLETING.value or contract.completion_detected_at is None:
        return False
    grace = settings.contracts.completion_grace_seconds
    if not completion_due(contract.completion_detected_at.timestamp(), now.timestamp(), grace):
        due = contract.completion_detected_at + timedelta(seconds=grace)
        uow.dispatch_after_commit(
            FINALIZE_TASK, {"contractId": str(contract.id)}, countdown=(due - now).total_seconds()
        )
        return False
    _complete(uow, contract, now, reason="completion confirmed")
    return True


def due_completions(session: Session, now: datetime, settings: Settings | None = None) -> Sequence[uuid.UUID]:
    """Contracts whose grace period is over: the beat sweep's catch-all for lost countdowns."""
    settings = settings or get_settings()
    cutoff = now - timedelta(seconds=settings.contracts.completion_grace_seconds)
    return session.scalars(
        select(Contract.id).where(
            Contract.status == Status.COMPLETING.value, Contract.completion_detected_at <= cutoff
        )
    ).all()


def record_worktree(
    uow: UnitOfWork, caller: Caller, contract_id: uuid.UUID, *, path: str, now: datetime
) -> ContractWorktree:
    contract = lock_contract(uow.session, caller, contract_id)
    existing = uow.session.scalars(
        select(ContractWorktree).where(
            ContractWorktree.contract_id == contract.id, ContractWorktree.path == path
        )
    ).first()
    if existing is not None:
        return existing
    wt = ContractWorktree(contract_id=contract.id, path=path, created_at=now)
    uow.session.add(wt)
    _touch(contract, now)
    uow.session.flush()
    record_event(uow.session, contract.id, "worktree_created", {"worktreeId": str(wt.id), "path": path}, now)
    return wt


__all__ = [
    "ContractFilter",
    "advance_if_ready",
    "change_phase",
    "change_status",
    "check_completion",
    "claim_message",
    "contract_json",
    "create_contract",
    "due_completions",
    "evaluate_progress",
    "finalize_completion",
    "get_contract",
    "list_contracts",
    "load_gate_facts",
    "lock_contract",
    "mark_deliverable",
    "phase_config_of",
    "phase_readiness_view",
    "record_task_completed",
    "record_task_started",
    "record_worktree",
    "set_auto_complete",
]
