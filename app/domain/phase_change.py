"""The rules of a phase change (seed 6.1 and 6.3), decided on a locked snapshot.

The caller locks the row, builds a snapshot and asks `plan_phase_change`; the answer is
either a plan to apply or one of the domain errors. Order matters and is fixed here:
version first (a stale caller must re-read before anything else means anything), then the
target, then the gate, then the guard, so a person is only asked to confirm a move that
could actually happen.

The guard exists so that a person decides (DESIGN "Who may do what"): only a request made by
a person (`caller_is_person`: a `user` or `admin` principal of the owner, set by the command
from the authenticated caller, never by the client) can lift it, and only a person can
answer a contract waiting for a phase confirmation. A supervisor's `confirmed: true` is
refused with PHASE_GUARD_REQUIRED saying who may confirm. The flag can only restrict: with
no guard and no wait, every caller moves phases alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from app.domain.completion import GateFacts, check_phase_readiness
from app.domain.errors import PhaseGuardRequired, ValidationFailed, VersionConflict
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phases import PhaseConfig

# The roles whose confirmation lifts a phase guard; named in the refusal so a caller knows
# whom to ask (the values of `app.auth.Role` that stand for a person).
CONFIRMING_ROLES: Final = ("user", "admin")


@dataclass(frozen=True, slots=True)
class PhaseChangeRequest:
    target_phase: str
    expected_version: int | None = None
    confirmed: bool = False
    force: bool = False
    # Whether a person asks (a `user` or `admin`): only a person's confirmation counts. False
    # by default, so a caller that does not say who asks cannot lift a guard.
    caller_is_person: bool = False


def person_must_confirm(
    current_phase: str, next_phase: str, deliverables: Sequence[Mapping[str, Any]]
) -> PhaseGuardRequired:
    """PHASE_GUARD_REQUIRED for a caller that is not a person: confirming again cannot help,
    so the answer says who may (`mayConfirm`, `personRequired`) instead of inviting a retry.

    The same error class as any guard refusal, so every edge maps it the same way (409, exit 4).
    """
    error = PhaseGuardRequired(current_phase, next_phase, deliverables)
    error.message = (
        f"Phase guard is enabled: moving from '{current_phase}' to '{next_phase}' must be "
        f"confirmed by a person ({' or '.join(CONFIRMING_ROLES)} of the owner); a "
        "supervisor's confirmation does not count. Ask a person to review the deliverables "
        "and confirm."
    )
    error.args = (error.message,)
    error.details["mayConfirm"] = list(CONFIRMING_ROLES)
    error.details["personRequired"] = True
    return error


@dataclass(frozen=True, slots=True)
class ContractSnapshot:
    phase: str
    status: Status
    version: int
    phase_guard: bool
    waiting_for: str | None


@dataclass(frozen=True, slots=True)
class PhaseChangePlan:
    old_phase: str
    new_phase: str
    new_version: int
    new_status: Status
    clears_waiting: bool
    forced: bool
    confirmed: bool


def plan_phase_change(
    config: PhaseConfig,
    contract: ContractSnapshot,
    facts: GateFacts,
    request: PhaseChangeRequest,
) -> PhaseChangePlan:
    if facts.phase != contract.phase:
        raise ValueError(f"gate facts are for phase {facts.phase!r}, the contract is in {contract.phase!r}")
    if request.expected_version is not None and request.expected_version != contract.version:
        raise VersionConflict(request.expected_version, contract.version, contract.phase)
    if contract.status not in Status.accepting_phase_changes():
        allowed = sorted(s.value for s in Status.accepting_phase_changes())
        raise ValidationFailed(
            f"The contract is '{contract.status.value}'; phases change only while it is "
            f"{' or '.join(allowed)}.",
            details={"status": contract.status.value, "allowedStatuses": allowed},
        )
    target = config.get(request.target_phase).id
    if target == contract.phase:
        raise ValidationFailed(
            f"The contract is already in phase '{target}'.",
            details={"currentPhase": contract.phase},
        )
    next_phase = config.next_phase(contract.phase)
    if not request.force:
        if target != next_phase:
            raise ValidationFailed(
                f"Phases advance one at a time: from '{contract.phase}' the next phase is "
                f"'{next_phase or '(none: this is the terminal phase)'}'. "
                "Use force=true to move elsewhere.",
                details={"currentPhase": contract.phase, "nextPhase": next_phase},
            )
        readiness = check_phase_readiness(config, facts)
        if not readiness.ready:
            raise ValidationFailed(
                f"Phase '{contract.phase}' is not complete: {'; '.join(readiness.missing)}. "
                "Finish these, or use force=true.",
                missing=readiness.missing,
                details={"currentPhase": contract.phase, "nextPhase": target},
            )
    waiting_on_phase = (
        contract.status is Status.WAITING_FOR_INPUT
        and contract.waiting_for == WaitingFor.PHASE_CONFIRMATION.value
    )
    deliverables = [d.to_json() for d in config.get(contract.phase).deliverables]
    if (contract.phase_guard or waiting_on_phase) and not request.caller_is_person:
        raise person_must_confirm(contract.phase, target, deliverables)
    if contract.phase_guard and not request.confirmed:
        raise PhaseGuardRequired(contract.phase, target, deliverables)
    return PhaseChangePlan(
        old_phase=contract.phase,
        new_phase=target,
        new_version=contract.version + 1,
        new_status=Status.ACTIVE if waiting_on_phase else contract.status,
        clears_waiting=waiting_on_phase,
        forced=request.force,
        confirmed=request.confirmed,
    )


__all__ = [
    "CONFIRMING_ROLES",
    "ContractSnapshot",
    "PhaseChangePlan",
    "PhaseChangeRequest",
    "person_must_confirm",
    "plan_phase_change",
]
