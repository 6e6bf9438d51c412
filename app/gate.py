"""The facts a contract's phase gate is judged on, read from the schema for the pure domain.

Every rule that asks "is this phase done?" (the guarded phase change, auto-advance, the
readiness view, the completion check) loads its facts here, so they all judge the same
thing the same way.
"""

from __future__ import annotations

from sqlalchemy import Boolean, String, cast, false, null, select, union_all
from sqlalchemy.orm import Session

from app.config import Settings
from app.domain.completion import (
    AutomationSwitches,
    GateFacts,
    ReadinessResult,
    TaskSummary,
    check_phase_readiness,
    registered_validators,
)
from app.domain.phases import PhaseConfig, parse_phase_config, resolve_phase_config
from app.models import CompletedDeliverable, Contract, ContractTask


def phase_config_of(contract: Contract) -> PhaseConfig:
    """The contract's own phases if it brought them, else its type's."""
    own = (
        parse_phase_config(contract.phase_config, registered_validators())
        if contract.phase_config is not None
        else None
    )
    return resolve_phase_config(contract.contract_type, own)


def load_gate_facts(session: Session, contract: Contract, phase: str | None = None) -> GateFacts:
    """The phase's completed deliverables and its tasks, in one round trip (UNION ALL).

    A deliverable row carries its id in `name` and NULL status; a task row its name, status
    and supervisor flag.
    """
    phase = phase or contract.phase
    deliverables = select(
        CompletedDeliverable.deliverable_id.label("name"),
        cast(null(), String).label("status"),
        cast(false(), Boolean).label("is_supervisor"),
    ).where(CompletedDeliverable.contract_id == contract.id, CompletedDeliverable.phase == phase)
    tasks = select(ContractTask.name, ContractTask.status, ContractTask.is_supervisor).where(
        ContractTask.contract_id == contract.id, ContractTask.phase == phase
    )
    done: set[str] = set()
    summaries: list[TaskSummary] = []
    for name, status, is_supervisor in session.execute(union_all(deliverables, tasks)):
        if status is None:
            done.add(name)
        else:
            summaries.append(TaskSummary(name, status, bool(is_supervisor)))
    return GateFacts(phase, frozenset(done), tuple(summaries))


def readiness(session: Session, contract: Contract) -> ReadinessResult:
    return check_phase_readiness(phase_config_of(contract), load_gate_facts(session, contract))


def switches_for(contract: Contract, settings: Settings) -> AutomationSwitches:
    """The three switches automation obeys: the feature flag, the server, the contract."""
    return AutomationSwitches(
        auto_complete_feature=settings.feature_flags.auto_complete,
        auto_advance_phases=settings.contracts.auto_advance_phases,
        contract_auto_complete=contract.auto_complete_enabled,
    )


__all__ = ["load_gate_facts", "phase_config_of", "readiness", "switches_for"]
