"""The completion detector (seed 2.2.1 to 2.2.3).

Readiness of a gate, in the seed's words:
- each required deliverable not completed  → "Deliverable: <id>"
- AllComplete: non-supervisor tasks not "done" → "<n> tasks incomplete"
- MinComplete(n): fewer than n non-supervisor tasks done → "Need <n> tasks complete, have <k>"
- NamedTasks: each named task not done → "Task '<name>' not complete"
- no gate → NoGate
What follows progress (2.2.3): gate not met → wait; auto_advance off → notify the user;
phase_guard on → ask for confirmation; otherwise advance; the terminal phase met → completing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from app.domain import completion
from app.domain.completion import (
    AutomationSwitches,
    Decision,
    GateFacts,
    Readiness,
    ReadinessResult,
    Step,
    TaskSummary,
    check_gate,
    check_phase_readiness,
    completion_due,
    decide_after_progress,
    gate_facts,
    register_validator,
    registered_validators,
    would_complete,
)
from app.domain.lifecycle import Status
from app.domain.phases import CONTRACT_TYPES, Deliverable, Phase, PhaseConfig, PhaseGate, TaskRequirement

SIMPLE = CONTRACT_TYPES["simple"]
SPEC = CONTRACT_TYPES["specification"]


def done(name: str, *, supervisor: bool = False) -> TaskSummary:
    return TaskSummary(name, "done", is_supervisor=supervisor)


def running(name: str, *, supervisor: bool = False) -> TaskSummary:
    return TaskSummary(name, "running", is_supervisor=supervisor)


def failed(name: str) -> TaskSummary:
    return TaskSummary(name, "failed")


def tasks_gate(requirement: TaskRequirement) -> PhaseGate:
    return PhaseGate(required_deliverables=(), required_tasks=requirement)


def facts(*tasks: TaskSummary, deliverables: set[str] | None = None, phase: str = "work") -> GateFacts:
    return gate_facts(phase, deliverables or set(), tasks)


def assert_ready(result: ReadinessResult) -> None:
    assert result == ReadinessResult(Readiness.READY)
    assert result.ready


def assert_missing(result: ReadinessResult, *missing: str) -> None:
    assert result.readiness is Readiness.NOT_READY
    assert not result.ready
    assert result.missing == missing


# --- TaskRequirement ------------------------------------------------------------------------


class TestNoTaskRequirement:
    def test_tasks_do_not_matter(self) -> None:
        gate = tasks_gate(TaskRequirement.none())
        assert_ready(check_gate(gate, facts()))
        assert_ready(check_gate(gate, facts(running("a"), failed("b"))))


class TestAllComplete:
    gate = tasks_gate(TaskRequirement.all_complete())

    def test_met_when_every_task_is_done(self) -> None:
        assert_ready(check_gate(self.gate, facts(done("a"), done("b"))))

    def test_each_unfinished_task_is_counted(self) -> None:
        result = check_gate(self.gate, facts(done("a"), running("b"), TaskSummary("c", "pending")))
        assert_missing(result, "2 tasks incomplete")

    def test_a_failed_task_counts_as_incomplete(self) -> None:
        assert_missing(check_gate(self.gate, facts(done("a"), failed("b"))), "1 tasks incomplete")

    def test_supervisor_tasks_are_ignored(self) -> None:
        # The supervisor runs for the contract's whole life; it is never "done" mid-phase.
        assert_ready(check_gate(self.gate, facts(done("a"), running("supervisor", supervisor=True))))

    def test_met_when_nothing_was_spawned(self) -> None:
        # The seed counts incomplete tasks; with none there is nothing incomplete.
        assert_ready(check_gate(self.gate, facts()))
        assert_ready(check_gate(self.gate, facts(running("supervisor", supervisor=True))))


class TestMinComplete:
    gate = tasks_gate(TaskRequirement.min_complete(2))

    def test_below_the_minimum(self) -> None:
        assert_missing(check_gate(self.gate, facts(done("a"), running("b"))), "Need 2 tasks complete, have 1")
        assert_missing(check_gate(self.gate, facts()), "Need 2 tasks complete, have 0")

    def test_at_the_minimum(self) -> None:
        assert_ready(check_gate(self.gate, facts(done("a"), done("b"), running("c"))))

    def test_above_the_minimum(self) -> None:
        assert_ready(check_gate(self.gate, facts(done("a"), done("b"), done("c"))))

    def test_supervisor_and_failed_tasks_do_not_count(self) -> None:
        result = check_gate(self.gate, facts(done("a"), done("supervisor", supervisor=True), failed("b")))
        assert_missing(result, "Need 2 tasks complete, have 1")


class TestNamedTasks:
    gate = tasks_gate(TaskRequirement.named_tasks("compile", "test"))

    def test_none_done_names_each_in_order(self) -> None:
        result = check_gate(self.gate, facts(running("compile")))
        assert_missing(result, "Task 'compile' not complete", "Task 'test' not complete")

    def test_partially_done_names_the_rest(self) -> None:
        result = check_gate(self.gate, facts(done("compile"), running("test")))
        assert_missing(result, "Task 'test' not complete")

    def test_all_named_done(self) -> None:
        assert_ready(check_gate(self.gate, facts(done("compile"), done("test"), running("lint"))))

    def test_a_failed_named_task_is_not_complete(self) -> None:
        result = check_gate(self.gate, facts(done("compile"), failed("test")))
        assert_missing(result, "Task 'test' not complete")

    def test_other_tasks_being_done_do_not_stand_in(self) -> None:
        result = check_gate(self.gate, facts(done("lint"), done("docs")))
        assert_missing(result, "Task 'compile' not complete", "Task 'test' not complete")


# --- deliverables and mixed gates -----------------------------------------------------------


class TestDeliverables:
    def test_each_required_deliverable_missing_is_listed(self) -> None:
        gate = PhaseGate(required_deliverables=("spec", "diagram"))
        assert_missing(check_gate(gate, facts(deliverables={"diagram"})), "Deliverable: spec")
        assert_missing(check_gate(gate, facts()), "Deliverable: spec", "Deliverable: diagram")

    def test_met_when_all_required_are_completed_extra_ones_do_not_matter(self) -> None:
        gate = PhaseGate(required_deliverables=("spec",))
        assert_ready(check_gate(gate, facts(deliverables={"spec", "notes"})))

    def test_optional_deliverables_are_not_required(self) -> None:
        # simple/plan: plan-document required, task-breakdown optional.
        result = check_phase_readiness(SIMPLE, gate_facts("plan", {"plan-document"}))
        assert_ready(result)
        result = check_phase_readiness(SIMPLE, gate_facts("plan", {"task-breakdown"}))
        assert_missing(result, "Deliverable: plan-document")


def test_mixed_gate_lists_deliverables_then_tasks_in_the_seeds_wording() -> None:
    gate = PhaseGate(
        required_deliverables=("pull-request", "changelog"), required_tasks=TaskRequirement.all_complete()
    )
    result = check_gate(gate, facts(done("a"), running("b"), failed("c"), deliverables={"changelog"}))
    assert_missing(result, "Deliverable: pull-request", "2 tasks incomplete")

    gate = PhaseGate(required_deliverables=("a", "b"), required_tasks=TaskRequirement.min_complete(3))
    assert_missing(
        check_gate(gate, facts(done("x"))),
        "Deliverable: a",
        "Deliverable: b",
        "Need 3 tasks complete, have 1",
    )

    gate = PhaseGate(required_deliverables=("a",), required_tasks=TaskRequirement.named_tasks("t1", "t2"))
    assert_missing(check_gate(gate, facts(done("t2"))), "Deliverable: a", "Task 't1' not complete")


def test_a_shipped_execute_phase_needs_its_pull_request_and_all_tasks() -> None:
    result = check_phase_readiness(SIMPLE, gate_facts("execute", set(), [done("a"), running("b")]))
    assert_missing(result, "Deliverable: pull-request", "1 tasks incomplete")
    assert_ready(
        check_phase_readiness(SIMPLE, gate_facts("execute", {"pull-request"}, [done("a"), done("b")]))
    )


def test_no_gate_is_no_gate_and_nothing_is_missing() -> None:
    result = check_gate(None, facts(running("a")))
    assert result == ReadinessResult(Readiness.NO_GATE)
    assert result.missing == ()
    assert result.ready  # nothing to wait for; it is left by hand


def test_a_config_phase_with_no_gate_reads_as_no_gate() -> None:
    config = PhaseConfig((Phase("free", "Free", (Deliverable("x", "X"),), None),))
    assert check_phase_readiness(config, gate_facts("free", set())).readiness is Readiness.NO_GATE


# --- custom validators, registered by name --------------------------------------------------


@pytest.fixture
def validator_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private copy of the registry so a validator registered in a test does not leak."""
    monkeypatch.setattr(completion, "_VALIDATORS", dict(completion._VALIDATORS))
    yield


@pytest.mark.usefixtures("validator_registry")
class TestCustomValidators:
    def test_a_registered_validator_is_run_by_name(self) -> None:
        seen: list[GateFacts] = []

        @register_validator("has_changelog")
        def has_changelog(f: GateFacts) -> str | None:
            seen.append(f)
            return None if "changelog" in f.completed_deliverables else "A changelog entry is needed"

        assert "has_changelog" in registered_validators()
        gate = PhaseGate(validators=("has_changelog",))

        without = facts(done("a"))
        assert_missing(check_gate(gate, without), "A changelog entry is needed")
        assert seen == [without]

        assert_ready(check_gate(gate, facts(done("a"), deliverables={"changelog"})))

    def test_validator_problems_follow_deliverables_and_tasks(self) -> None:
        register_validator("always_unhappy")(lambda f: "Not today")
        gate = PhaseGate(("doc",), TaskRequirement.min_complete(1), ("always_unhappy",))
        assert_missing(
            check_gate(gate, facts()), "Deliverable: doc", "Need 1 tasks complete, have 0", "Not today"
        )

    def test_an_unregistered_validator_is_reported_missing(self) -> None:
        gate = PhaseGate(validators=("no_such_check",))
        assert "no_such_check" not in registered_validators()
        assert_missing(
            check_gate(gate, facts()), "Validator 'no_such_check' is not registered on this server"
        )

    def test_the_shipped_no_failed_tasks_validator(self) -> None:
        assert "no_failed_tasks" in registered_validators()
        gate = PhaseGate(validators=("no_failed_tasks",))
        assert_ready(check_gate(gate, facts(done("a"), running("b"))))
        result = check_gate(gate, facts(failed("a"), done("b"), failed("c")))
        assert_missing(result, "Failed tasks must be retried or removed: a, c")


def test_registering_in_a_test_did_not_leak() -> None:
    assert "has_changelog" not in registered_validators()
    assert "always_unhappy" not in registered_validators()


# --- what happens after progress (seed 2.2.3) -----------------------------------------------

ALL_ON = AutomationSwitches()
PLAN_MET = gate_facts("plan", {"plan-document"})
PLAN_UNMET = gate_facts("plan", set())
EXECUTE_MET = gate_facts("execute", {"pull-request"}, [done("a"), done("b"), running("sup", supervisor=True)])


def decide(
    config: PhaseConfig = SIMPLE,
    status: Status = Status.ACTIVE,
    phase_guard: bool = False,
    gate_facts_: GateFacts = PLAN_MET,
    switches: AutomationSwitches = ALL_ON,
) -> Decision:
    return decide_after_progress(config, status, phase_guard, gate_facts_, switches)


def test_gate_not_met_waits_and_says_what_is_missing() -> None:
    assert decide(gate_facts_=PLAN_UNMET) == Decision(Step.WAIT, ("Deliverable: plan-document",))


def test_gate_met_with_automation_on_and_no_guard_advances_to_the_next_phase() -> None:
    assert decide() == Decision(Step.ADVANCE, next_phase="execute")


@pytest.mark.parametrize(("phase", "following"), list(itertools.pairwise(SPEC.phase_ids())))
def test_every_non_terminal_specification_phase_advances_to_the_following_one(
    phase: str, following: str
) -> None:
    gate = SPEC.get(phase).gate
    assert gate is not None
    met = gate_facts(phase, set(gate.required_deliverables), [done("t")])
    assert decide(SPEC, gate_facts_=met) == Decision(Step.ADVANCE, next_phase=following)


def test_gate_met_with_phase_guard_asks_for_confirmation() -> None:
    assert decide(phase_guard=True) == Decision(Step.ASK_CONFIRMATION, next_phase="execute")


SWITCHES_WITH_ONE_OFF = {
    "feature-flag-auto_complete-off": AutomationSwitches(auto_complete_feature=False),
    "config-auto_advance_phases-off": AutomationSwitches(auto_advance_phases=False),
    "contract-auto_complete_enabled-off": AutomationSwitches(contract_auto_complete=False),
}


@pytest.mark.parametrize("switches", list(SWITCHES_WITH_ONE_OFF.values()), ids=list(SWITCHES_WITH_ONE_OFF))
@pytest.mark.parametrize("phase_guard", [False, True], ids=["no-guard", "guard"])
@pytest.mark.parametrize("met", [PLAN_MET, EXECUTE_MET], ids=["plan", "terminal"])
def test_any_automation_switch_off_only_notifies(
    switches: AutomationSwitches, phase_guard: bool, met: GateFacts
) -> None:
    assert not switches.on
    assert decide(phase_guard=phase_guard, gate_facts_=met, switches=switches) == Decision(Step.NOTIFY)


def test_all_three_switches_on_is_on() -> None:
    assert AutomationSwitches().on
    assert AutomationSwitches(True, True, True).on


def _with_auto_advance_off(config: PhaseConfig) -> PhaseConfig:
    phases = []
    for phase in config.phases:
        assert phase.gate is not None
        gate = PhaseGate(
            phase.gate.required_deliverables,
            phase.gate.required_tasks,
            phase.gate.validators,
            auto_advance=False,
        )
        phases.append(Phase(phase.id, phase.name, phase.deliverables, gate))
    return PhaseConfig(tuple(phases))


@pytest.mark.parametrize("met", [PLAN_MET, EXECUTE_MET], ids=["plan", "terminal"])
def test_a_gate_with_auto_advance_off_only_notifies(met: GateFacts) -> None:
    manual = _with_auto_advance_off(SIMPLE)
    assert decide(manual, gate_facts_=met) == Decision(Step.NOTIFY)
    assert decide(manual, gate_facts_=met, phase_guard=True) == Decision(Step.NOTIFY)


@pytest.mark.parametrize("phase_guard", [False, True], ids=["no-guard", "guard"])
def test_terminal_phase_met_begins_completion_even_with_the_phase_guard_on(phase_guard: bool) -> None:
    assert decide(phase_guard=phase_guard, gate_facts_=EXECUTE_MET) == Decision(Step.BEGIN_COMPLETION)


def test_terminal_phase_not_met_waits() -> None:
    unmet = gate_facts("execute", {"pull-request"}, [done("a"), running("b")])
    assert decide(gate_facts_=unmet) == Decision(Step.WAIT, ("1 tasks incomplete",))


NOT_ACTIVE = [Status.PAUSED, Status.BLOCKED, Status.WAITING_FOR_INPUT, Status.COMPLETING, Status.CREATED]


@pytest.mark.parametrize("status", NOT_ACTIVE, ids=str)
@pytest.mark.parametrize("met", [PLAN_MET, EXECUTE_MET], ids=["plan", "terminal"])
def test_only_an_active_contract_is_moved_on(status: Status, met: GateFacts) -> None:
    assert decide(status=status, gate_facts_=met) == Decision(Step.WAIT)
    assert decide(status=status, gate_facts_=met, phase_guard=True) == Decision(Step.WAIT)


@pytest.mark.parametrize("status", NOT_ACTIVE, ids=str)
def test_a_non_active_contract_with_an_unmet_gate_still_says_what_is_missing(status: Status) -> None:
    assert decide(status=status, gate_facts_=PLAN_UNMET) == Decision(
        Step.WAIT, ("Deliverable: plan-document",)
    )


def test_a_phase_without_a_gate_is_left_by_hand_never_automatically() -> None:
    config = PhaseConfig(
        (Phase("free", "Free", (Deliverable("x", "X"),), None), Phase("end", "End", (), PhaseGate()))
    )
    assert decide(config, gate_facts_=gate_facts("free", {"x"})) == Decision(Step.WAIT)


# --- would_complete and the grace period ----------------------------------------------------


def test_would_complete_in_the_terminal_phase_with_its_gate_met() -> None:
    assert would_complete(SIMPLE, EXECUTE_MET)
    assert would_complete(SPEC, gate_facts("review", {"review-report"}))


def test_would_not_complete_when_the_terminal_gate_is_unmet() -> None:
    assert not would_complete(SIMPLE, gate_facts("execute", {"pull-request"}, [running("a")]))
    assert not would_complete(SPEC, gate_facts("review", {"release-notes"}))


def test_would_not_complete_outside_the_terminal_phase_however_ready() -> None:
    assert not would_complete(SIMPLE, PLAN_MET)
    assert not would_complete(SPEC, gate_facts("execute", {"pull-request"}))


def test_a_terminal_phase_without_a_gate_would_not_auto_complete() -> None:
    config = PhaseConfig((Phase("plan", "Plan", (), PhaseGate()), Phase("free", "Free", (), None)))
    facts_ = gate_facts("free", set())
    assert decide(config, gate_facts_=facts_) == Decision(Step.WAIT)  # the flow never completes it
    assert not would_complete(config, facts_)


GRACE = 300.0  # seconds: the seed's 5 minutes


@pytest.mark.parametrize(
    ("detected_at", "now", "due"),
    [
        (None, 10_000.0, False),  # never detected: never due
        (1_000.0, 1_000.0, False),  # just detected
        (1_000.0, 1_299.999, False),  # a moment before the grace period ends
        (1_000.0, 1_300.0, True),  # exactly at the end: final
        (1_000.0, 5_000.0, True),  # long after
    ],
    ids=["never-detected", "just-detected", "just-before", "exactly-at", "long-after"],
)
def test_completion_is_due_once_the_grace_period_is_over(
    detected_at: float | None, now: float, due: bool
) -> None:
    assert completion_due(detected_at, now, GRACE) is due


def test_with_no_grace_period_completion_is_due_at_once() -> None:
    assert completion_due(1_000.0, 1_000.0, 0.0)
