"""Phase change rules (seed 6.1 and 6.3; DESIGN "Phase change").

Checked in this order, each on the locked snapshot:
1. an expected version that is not the stored one → VERSION_CONFLICT (expected, actual, current phase);
2. the contract must be active or waiting_for_input → else VALIDATION_FAILED;
3. the target must be a phase, and not the current one;
4. without force: only the next phase, and only with the current phase's gate met
   (VALIDATION_FAILED with the missing list);
5. phase_guard on and not confirmed → PHASE_GUARD_REQUIRED (next phase and the current
   phase's deliverables) for every caller, supervisors included; force does not bypass it.
   Only a person (`user` or `admin`) lifts it: a request that is not a person's is refused
   with PHASE_GUARD_REQUIRED naming who may confirm, confirmed or not, and so is its move of
   a contract waiting for a phase confirmation.
Success bumps the version by one; a contract waiting for a phase confirmation goes back to active.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from app.domain.completion import GateFacts, TaskSummary, gate_facts
from app.domain.errors import PhaseGuardRequired, ValidationFailed, VersionConflict
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phase_change import (
    ContractSnapshot,
    PhaseChangePlan,
    PhaseChangeRequest,
    plan_phase_change,
)
from app.domain.phases import CONTRACT_TYPES, Deliverable, Phase, PhaseConfig, PhaseGate

SIMPLE = CONTRACT_TYPES["simple"]
SPEC = CONTRACT_TYPES["specification"]

PLAN_MET = gate_facts("plan", {"plan-document"})
PLAN_UNMET = gate_facts("plan", set())


def snapshot(
    phase: str = "plan",
    status: Status = Status.ACTIVE,
    version: int = 7,
    phase_guard: bool = False,
    waiting_for: str | None = None,
) -> ContractSnapshot:
    return ContractSnapshot(phase, status, version, phase_guard, waiting_for)


def change(
    contract: ContractSnapshot | None = None,
    facts: GateFacts = PLAN_MET,
    config: PhaseConfig = SIMPLE,
    **request: object,
) -> PhaseChangePlan:
    req = PhaseChangeRequest(**{"target_phase": "execute", **request})  # type: ignore[arg-type]
    return plan_phase_change(config, contract or snapshot(), facts, req)


# --- 1. version first -----------------------------------------------------------------------


def test_an_expected_version_that_is_not_the_stored_one_is_a_version_conflict() -> None:
    with pytest.raises(VersionConflict) as caught:
        change(snapshot(version=7), expected_version=6)
    err = caught.value
    assert err.code == "VERSION_CONFLICT"
    assert err.details == {"expected": 6, "actual": 7, "currentPhase": "plan"}
    assert "6" in err.message and "7" in err.message and "'plan'" in err.message


EVERYTHING_ELSE_WRONG = {
    "paused": dict(contract=snapshot(status=Status.PAUSED)),
    "archived": dict(contract=snapshot(status=Status.ARCHIVED)),
    "same-phase": dict(target_phase="plan"),
    "unknown-phase": dict(target_phase="deploy"),
    "gate-unmet": dict(facts=PLAN_UNMET),
    "phase-guard": dict(contract=snapshot(phase_guard=True)),
    "all-at-once": dict(contract=snapshot(status=Status.BLOCKED, phase_guard=True), facts=PLAN_UNMET),
}


@pytest.mark.parametrize("case", list(EVERYTHING_ELSE_WRONG.values()), ids=list(EVERYTHING_ELSE_WRONG))
def test_the_version_is_checked_before_anything_else(case: dict[str, object]) -> None:
    with pytest.raises(VersionConflict) as caught:
        change(expected_version=3, **case)  # type: ignore[arg-type]
    assert caught.value.details["expected"] == 3
    assert caught.value.details["actual"] == 7


@pytest.mark.parametrize("expected", [None, 7], ids=["not-given", "matching"])
def test_no_conflict_when_the_version_is_not_given_or_matches(expected: int | None) -> None:
    plan = change(snapshot(version=7), expected_version=expected)
    assert plan.new_version == 8


# --- 2. status ------------------------------------------------------------------------------

NOT_ACCEPTING = [s for s in Status if s not in (Status.ACTIVE, Status.WAITING_FOR_INPUT)]


@pytest.mark.parametrize("status", NOT_ACCEPTING, ids=str)
def test_phases_change_only_while_active_or_waiting_for_input(status: Status) -> None:
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(status=status))
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.details["status"] == status.value
    assert err.details["allowedStatuses"] == ["active", "waiting_for_input"]
    assert f"'{status.value}'" in err.message


def test_status_is_checked_before_target_gate_and_guard() -> None:
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(status=Status.PAUSED, phase_guard=True), facts=PLAN_UNMET, target_phase="nowhere")
    assert caught.value.details["status"] == "paused"


# --- 3. the target --------------------------------------------------------------------------


def test_an_unknown_target_phase_is_a_validation_failure_naming_the_phases() -> None:
    with pytest.raises(ValidationFailed) as caught:
        change(target_phase="deploy", force=True)
    assert caught.value.details["validPhases"] == ["plan", "execute"]
    assert "'deploy'" in caught.value.message


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_moving_to_the_current_phase_is_a_validation_failure(force: bool) -> None:
    with pytest.raises(ValidationFailed) as caught:
        change(target_phase="plan", force=force)
    assert caught.value.details["currentPhase"] == "plan"
    assert "already in phase 'plan'" in caught.value.message


# --- 4. order and gate, unless forced -------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "following"),
    [
        ("research", "plan", "specify"),  # skipping forward
        ("research", "review", "specify"),
        ("execute", "specify", "review"),  # going back
        ("review", "research", None),  # from the terminal phase
    ],
)
def test_phases_advance_one_at_a_time(current: str, target: str, following: str | None) -> None:
    everything_done = gate_facts(current, {d.id for d in SPEC.get(current).deliverables})
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(phase=current), everything_done, SPEC, target_phase=target)
    err = caught.value
    assert err.details["currentPhase"] == current
    assert err.details["nextPhase"] == following
    assert "force=true" in err.message
    if following:
        assert f"the next phase is '{following}'" in err.message
    else:
        assert "terminal phase" in err.message


def test_an_unmet_gate_blocks_the_change_and_lists_what_is_missing() -> None:
    facts = gate_facts("execute", set(), [TaskSummary("a", "done"), TaskSummary("b", "running")])
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(phase="execute"), facts, SPEC, target_phase="review")
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.missing == ["Deliverable: pull-request", "1 tasks incomplete"]
    assert err.details["missing"] == ["Deliverable: pull-request", "1 tasks incomplete"]
    assert err.details["currentPhase"] == "execute"
    assert err.details["nextPhase"] == "review"
    assert "Deliverable: pull-request" in err.message and "1 tasks incomplete" in err.message


def test_order_is_checked_before_the_gate() -> None:
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(phase="research"), gate_facts("research", set()), SPEC, target_phase="plan")
    assert caught.value.details["nextPhase"] == "specify"
    assert caught.value.missing == []


def test_the_gate_is_checked_before_the_guard() -> None:
    # A person is only asked to confirm a move that could actually happen.
    with pytest.raises(ValidationFailed) as caught:
        change(snapshot(phase_guard=True), PLAN_UNMET)
    assert caught.value.missing == ["Deliverable: plan-document"]


def test_force_skips_the_gate() -> None:
    plan = change(facts=PLAN_UNMET, force=True)
    assert (plan.old_phase, plan.new_phase, plan.forced) == ("plan", "execute", True)


@pytest.mark.parametrize(
    ("current", "target"), [("research", "execute"), ("review", "specify"), ("plan", "research")]
)
def test_force_skips_the_order(current: str, target: str) -> None:
    plan = change(snapshot(phase=current), gate_facts(current, set()), SPEC, target_phase=target, force=True)
    assert (plan.old_phase, plan.new_phase, plan.forced) == (current, target, True)


# --- 5. the phase guard, for everyone -------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_phase_guard_without_confirmation_requires_it(force: bool) -> None:
    with pytest.raises(PhaseGuardRequired) as caught:
        change(snapshot(phase_guard=True), force=force, caller_is_person=True)
    err = caught.value
    assert type(err) is PhaseGuardRequired and "personRequired" not in err.details
    assert err.code == "PHASE_GUARD_REQUIRED"
    assert err.details == {
        "currentPhase": "plan",
        "nextPhase": "execute",
        "deliverables": [
            {"id": "plan-document", "name": "Plan document", "required": True},
            {"id": "task-breakdown", "name": "Task breakdown", "required": False},
        ],
    }
    assert "'plan'" in err.message and "'execute'" in err.message and "confirmed=true" in err.message


def test_the_guard_lists_the_current_phases_deliverables_for_a_forced_jump() -> None:
    with pytest.raises(PhaseGuardRequired) as caught:
        change(
            snapshot(phase="research", phase_guard=True),
            gate_facts("research", set()),
            SPEC,
            target_phase="execute",
            force=True,
            caller_is_person=True,
        )
    assert caught.value.details["nextPhase"] == "execute"
    assert [d["id"] for d in caught.value.details["deliverables"]] == ["research-notes", "references"]


def test_the_only_caller_fact_the_rule_takes_is_whether_a_person_asks() -> None:
    # Seed 6.3's bug was an `is_supervisor` flag that let supervisors through. The rule takes
    # the configuration, the locked snapshot, the facts and the request; the one fact about
    # the caller, `caller_is_person`, can only add a refusal, and defaults to the refusing side.
    assert list(inspect.signature(plan_phase_change).parameters) == ["config", "contract", "facts", "request"]
    request_fields = {f.name for f in dataclasses.fields(PhaseChangeRequest)}
    snapshot_fields = {f.name for f in dataclasses.fields(ContractSnapshot)}
    assert request_fields == {"target_phase", "expected_version", "confirmed", "force", "caller_is_person"}
    assert snapshot_fields == {"phase", "status", "version", "phase_guard", "waiting_for"}
    assert PhaseChangeRequest("execute").caller_is_person is False


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_a_persons_confirmed_request_passes_the_guard(force: bool) -> None:
    plan = change(snapshot(phase_guard=True), confirmed=True, force=force, caller_is_person=True)
    assert plan.new_phase == "execute"
    assert plan.confirmed is True


@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "unconfirmed"])
@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_only_a_person_may_lift_a_phase_guard(confirmed: bool, force: bool) -> None:
    with pytest.raises(PhaseGuardRequired) as caught:
        change(snapshot(phase_guard=True), confirmed=confirmed, force=force, caller_is_person=False)
    err = caught.value
    assert type(err) is PhaseGuardRequired and err.code == "PHASE_GUARD_REQUIRED"
    assert "person" in err.message and "supervisor" in err.message
    assert err.details["mayConfirm"] == ["user", "admin"]
    assert err.details["personRequired"] is True
    assert (err.details["currentPhase"], err.details["nextPhase"]) == ("plan", "execute")
    assert [d["id"] for d in err.details["deliverables"]] == ["plan-document", "task-breakdown"]


def test_only_a_person_may_answer_a_phase_confirmation_wait() -> None:
    # Even were the guard off, the wait was opened for a person's decision.
    for guard in (True, False):
        waiting = snapshot(
            status=Status.WAITING_FOR_INPUT,
            phase_guard=guard,
            waiting_for=WaitingFor.PHASE_CONFIRMATION.value,
        )
        with pytest.raises(PhaseGuardRequired) as caught:
            change(waiting, confirmed=True, caller_is_person=False)
        assert caught.value.details["personRequired"] is True
        assert change(waiting, confirmed=True, caller_is_person=True).new_status is Status.ACTIVE


def test_without_a_guard_or_a_wait_every_caller_changes_phases_alike() -> None:
    by_person = change(snapshot(), caller_is_person=True)
    by_daemon = change(snapshot(), caller_is_person=False)
    assert by_person == by_daemon


def test_a_stale_version_is_reported_before_the_person_rule() -> None:
    with pytest.raises(VersionConflict):
        change(snapshot(phase_guard=True, version=7), expected_version=6, confirmed=True)


# --- success --------------------------------------------------------------------------------


def test_success_moves_to_the_target_and_bumps_the_version_by_one() -> None:
    plan = change(snapshot(version=41))
    assert plan == PhaseChangePlan(
        old_phase="plan",
        new_phase="execute",
        new_version=42,
        new_status=Status.ACTIVE,
        clears_waiting=False,
        forced=False,
        confirmed=False,
    )


def test_confirming_a_phase_the_contract_waits_on_returns_it_to_active() -> None:
    waiting = snapshot(
        status=Status.WAITING_FOR_INPUT, phase_guard=True, waiting_for=WaitingFor.PHASE_CONFIRMATION.value
    )
    plan = change(waiting, confirmed=True, caller_is_person=True)
    assert plan.new_status is Status.ACTIVE
    assert plan.clears_waiting is True
    assert plan.new_version == 8


@pytest.mark.parametrize(
    "waiting_for", [WaitingFor.QUESTION.value, WaitingFor.COMPLETION_CONFIRMATION.value, None], ids=str
)
def test_a_contract_waiting_on_something_else_keeps_waiting(waiting_for: str | None) -> None:
    plan = change(snapshot(status=Status.WAITING_FOR_INPUT, waiting_for=waiting_for))
    assert plan.new_status is Status.WAITING_FOR_INPUT
    assert plan.clears_waiting is False


def test_a_phase_without_a_gate_may_be_left_by_hand() -> None:
    config = PhaseConfig(
        (Phase("free", "Free", (Deliverable("x", "X"),), None), Phase("end", "End", (), PhaseGate()))
    )
    plan = change(snapshot(phase="free"), gate_facts("free", set()), config, target_phase="end")
    assert plan.new_phase == "end"
