"""The completion detector (seed 2.2): is a phase's gate met, and what should follow.

Readiness is computed from facts passed in (completed deliverables, the phase's tasks), so a
worker, an endpoint and a unit test all ask the same question the same way. Custom validators
are registered by name: a gate stores the name, never a function, and stays serialisable.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.domain.lifecycle import Status
from app.domain.phases import PhaseConfig, PhaseGate
from app.domain.records import TaskStatus


@dataclass(frozen=True, slots=True)
class TaskSummary:
    name: str
    status: str
    is_supervisor: bool = False


@dataclass(frozen=True, slots=True)
class GateFacts:
    """What a gate is judged on: the phase's completed deliverables and spawned tasks."""

    phase: str
    completed_deliverables: frozenset[str]
    tasks: tuple[TaskSummary, ...] = ()


Validator = Callable[[GateFacts], str | None]
"""A custom check: returns None when satisfied, else the sentence to list as missing."""

_VALIDATORS: dict[str, Validator] = {}


def register_validator(name: str) -> Callable[[Validator], Validator]:
    def deco(fn: Validator) -> Validator:
        _VALIDATORS[name] = fn
        return fn

    return deco


def registered_validators() -> list[str]:
    return sorted(_VALIDATORS)


@register_validator("no_failed_tasks")
def _no_failed_tasks(facts: GateFacts) -> str | None:
    failed = [t.name for t in facts.tasks if not t.is_supervisor and t.status == TaskStatus.FAILED]
    return f"Failed tasks must be retried or removed: {', '.join(failed)}" if failed else None


class CompletionAction(StrEnum):
    """What a completion check did, so the caller never has to guess from the flags."""

    COMPLETION_STARTED = "completion_started"
    EVALUATION_QUEUED = "evaluation_queued"
    NONE = "none"


class Readiness(StrEnum):
    READY = "ready"
    NOT_READY = "not_ready"
    NO_GATE = "no_gate"


@dataclass(frozen=True, slots=True)
class ReadinessResult:
    readiness: Readiness
    missing: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """A phase without a gate has nothing to wait for; it is left by hand, never auto."""
        return self.readiness is not Readiness.NOT_READY


def check_gate(gate: PhaseGate | None, facts: GateFacts) -> ReadinessResult:
    if gate is None:
        return ReadinessResult(Readiness.NO_GATE)
    missing: list[str] = [
        f"Deliverable: {d}" for d in gate.required_deliverables if d not in facts.completed_deliverables
    ]
    work = [t for t in facts.tasks if not t.is_supervisor]
    req = gate.required_tasks
    if req.kind == "all_complete":
        incomplete = sum(1 for t in work if t.status != TaskStatus.DONE)
        if incomplete:
            missing.append(f"{incomplete} tasks incomplete")
    elif req.kind == "min_complete":
        done = sum(1 for t in work if t.status == TaskStatus.DONE)
        if done < req.count:
            missing.append(f"Need {req.count} tasks complete, have {done}")
    elif req.kind == "named_tasks":
        done_names = {t.name for t in work if t.status == TaskStatus.DONE}
        missing.extend(f"Task '{n}' not complete" for n in req.names if n not in done_names)
    for name in gate.validators:
        validator = _VALIDATORS.get(name)
        problem = (
            f"Validator '{name}' is not registered on this server" if validator is None else validator(facts)
        )
        if problem:
            missing.append(problem)
    if missing:
        return ReadinessResult(Readiness.NOT_READY, tuple(missing))
    return ReadinessResult(Readiness.READY)


def check_phase_readiness(config: PhaseConfig, facts: GateFacts) -> ReadinessResult:
    return check_gate(config.get(facts.phase).gate, facts)


# --- what the workers do after progress (seed 2.2.3, plan Task 2.3) ------------------------


class Step(StrEnum):
    WAIT = "wait"  # gate not met, or nothing to do in this status
    NOTIFY = "notify"  # gate met, auto-advance off: a person advances by hand
    ASK_CONFIRMATION = "ask_confirmation"  # gate met, phase guard on: waiting_for_input
    ADVANCE = "advance"  # gate met: move to the next phase
    BEGIN_COMPLETION = "begin_completion"  # terminal gate met: status completing


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    missing: tuple[str, ...] = ()
    next_phase: str | None = None


@dataclass(frozen=True, slots=True)
class AutomationSwitches:
    """The three switches that must all be on before the service acts without being asked."""

    auto_complete_feature: bool = True  # [feature_flags] auto_complete
    auto_advance_phases: bool = True  # [contracts] auto_advance_phases
    contract_auto_complete: bool = True  # the contract's own auto_complete_enabled

    @property
    def on(self) -> bool:
        return self.auto_complete_feature and self.auto_advance_phases and self.contract_auto_complete


def decide_after_progress(
    config: PhaseConfig,
    status: Status,
    phase_guard: bool,
    facts: GateFacts,
    switches: AutomationSwitches,
) -> Decision:
    """Given a contract's state after a task completed or a deliverable was marked, what next.

    Only an `active` contract is moved on: a paused, blocked or already-waiting contract keeps
    its state until a person acts, and a completing one is already on its way.
    """
    result = check_phase_readiness(config, facts)
    if result.readiness is Readiness.NOT_READY:
        return Decision(Step.WAIT, result.missing)
    if result.readiness is Readiness.NO_GATE or status is not Status.ACTIVE:
        return Decision(Step.WAIT)
    gate = config.get(facts.phase).gate
    assert gate is not None
    if not (switches.on and gate.auto_advance):
        return Decision(Step.NOTIFY)
    next_phase = config.next_phase(facts.phase)
    if next_phase is None:
        return Decision(Step.BEGIN_COMPLETION)
    if phase_guard:
        return Decision(Step.ASK_CONFIRMATION, next_phase=next_phase)
    return Decision(Step.ADVANCE, next_phase=next_phase)


def would_complete(config: PhaseConfig, facts: GateFacts) -> bool:
    """Seed `check_contract_completion`: in the terminal phase with its gate met."""
    return (
        facts.phase == config.terminal_phase
        and check_phase_readiness(config, facts).readiness is Readiness.READY
    )


def completion_due(detected_at_epoch: float | None, now_epoch: float, grace_seconds: float) -> bool:
    """Completion is final once the grace period, in which a person may reject it, is over."""
    return detected_at_epoch is not None and now_epoch - detected_at_epoch >= grace_seconds


def gate_facts(phase: str, deliverables: Collection[str], tasks: Sequence[TaskSummary] = ()) -> GateFacts:
    return GateFacts(phase, frozenset(deliverables), tuple(tasks))


__all__ = [
    "AutomationSwitches",
    "CompletionAction",
    "Decision",
    "GateFacts",
    "Readiness",
    "ReadinessResult",
    "Step",
    "TaskSummary",
    "check_gate",
    "check_phase_readiness",
    "completion_due",
    "decide_after_progress",
    "gate_facts",
    "register_validator",
    "registered_validators",
    "would_complete",
]
