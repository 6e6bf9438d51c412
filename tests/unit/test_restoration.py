"""The pure restoration decision (seed 3.6): every branch, every inconsistency, the next step and
the context text."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from app.domain.restoration import (
    CONTEXT_LIMIT,
    Branch,
    ContextFacts,
    HistoryScan,
    HistoryScanner,
    InconsistencyKind,
    NextStep,
    OpenQuestion,
    ReceivedAnswer,
    WaitedTask,
    claim_notices,
    claimed_history_length,
    decide_restoration,
    next_step,
    restart_notice,
    restoration_context,
    waited_task_ids,
)

T0 = datetime(2026, 1, 31, 10, 30, tzinfo=UTC)
TASK_A, TASK_B = str(uuid.uuid4()), str(uuid.uuid4())
KNOWN = frozenset({TASK_A, TASK_B})


def state(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "incarnation": 1,
        "stateVersion": 9,
        "state": "waiting_for_tasks",
        "phase": "plan",
        "currentActivity": "waiting for the research tasks",
        "progress": 40,
        "error": None,
        "spawnedTaskIds": [TASK_A, TASK_B],
        "waitingOnTaskIds": [TASK_A],
        "historyLength": 6,
        "savedAt": T0.isoformat(),
    }
    base.update(over)
    return base


def checkpoint(**over: Any) -> dict[str, Any]:
    return {
        "id": "cp-plan",
        "note": None,
        **state(**{"stateVersion": 5, "historyLength": 4, **over}),
        "historyIntact": True,
    }


def scan_of(rows: dict[int, Any], length: int) -> HistoryScan:
    scanner = HistoryScanner(length)
    for seq in sorted(rows):
        scanner.see(seq, rows[seq])
    return scanner.done()


def clean(length: int) -> HistoryScan:
    return scan_of({i: {"role": "user", "content": f"m{i}"} for i in range(length)}, length)


def kinds(decision: Any) -> list[str]:
    return [i.kind.value for i in decision.inconsistencies]


# --- the branches -----------------------------------------------------------------------------


def test_nothing_stored_starts_fresh_with_a_warning() -> None:
    decision = decide_restoration(None, None, "plan", KNOWN, clean(0))
    assert (decision.branch, decision.snapshot, decision.inconsistencies) == (Branch.FRESH, None, ())
    assert "start fresh" in decision.warnings[0]
    assert next_step(decision, open_questions=2, waiting=[]) is NextStep.START_FRESH


def test_a_consistent_state_is_resumed_whole() -> None:
    decision = decide_restoration(state(), checkpoint(), "plan", KNOWN, clean(6))
    assert decision.branch is Branch.RESUME and not decision.inconsistencies and not decision.warnings
    assert decision.snapshot is not None and decision.snapshot.state_version == 9
    assert decision.history_length == 6


def test_an_inconsistent_state_falls_back_to_a_consistent_checkpoint_naming_what_was_wrong() -> None:
    decision = decide_restoration(state(phase="review"), checkpoint(), "plan", KNOWN, clean(6))
    assert decision.branch is Branch.CHECKPOINT
    assert decision.snapshot is not None and decision.snapshot.checkpoint_id == "cp-plan"
    assert (decision.snapshot.state_version, decision.history_length) == (5, 4)
    assert kinds(decision) == ["phase_mismatch"]
    assert "'review'" in decision.inconsistencies[0].detail and "'plan'" in decision.inconsistencies[0].detail


def test_without_a_usable_checkpoint_an_inconsistent_state_starts_fresh_with_the_inconsistencies() -> None:
    no_checkpoint = decide_restoration(state(phase="review"), None, "plan", KNOWN, clean(6))
    assert (no_checkpoint.branch, no_checkpoint.snapshot) == (Branch.FRESH, None)
    assert kinds(no_checkpoint) == ["phase_mismatch"] and "no checkpoint" in no_checkpoint.warnings[0]
    bad_checkpoint = decide_restoration(
        state(phase="review"), checkpoint(phase="review"), "plan", KNOWN, clean(6)
    )
    assert bad_checkpoint.branch is Branch.FRESH and "phase_mismatch" in bad_checkpoint.warnings[0]


# --- every inconsistency ----------------------------------------------------------------------


def test_waited_on_tasks_the_contract_does_not_have() -> None:
    stranger = str(uuid.uuid4())
    decision = decide_restoration(state(waitingOnTaskIds=[TASK_A, stranger]), None, "plan", KNOWN, clean(6))
    assert kinds(decision) == ["unknown_waited_tasks"] and stranger in decision.inconsistencies[0].detail


def test_a_missing_history_row_or_too_few_rows_is_a_truncated_history() -> None:
    rows = {i: {"role": "user", "content": f"m{i}"} for i in range(6) if i != 2}
    gap = decide_restoration(state(), checkpoint(historyLength=2), "plan", KNOWN, scan_of(rows, 6))
    assert kinds(gap) == ["history_truncated"] and "message 2 is missing" in gap.inconsistencies[0].detail
    # The checkpoint covers only messages 0 and 1, both present: it is restored.
    assert gap.branch is Branch.CHECKPOINT and gap.history_length == 2
    short = decide_restoration(state(), None, "plan", KNOWN, scan_of({i: rows[i] for i in (0, 1)}, 6))
    assert kinds(short) == ["history_truncated"] and "message 2" in short.inconsistencies[0].detail


def test_a_stored_row_that_is_not_a_message_is_a_malformed_history() -> None:
    rows: dict[int, Any] = {i: {"role": "user", "content": f"m{i}"} for i in range(6)}
    rows[5] = {"garbage": True}
    decision = decide_restoration(state(), checkpoint(), "plan", KNOWN, scan_of(rows, 6))
    assert kinds(decision) == ["history_malformed"] and "message 5" in decision.inconsistencies[0].detail
    assert decision.branch is Branch.CHECKPOINT  # the checkpoint's 4 messages are intact


def test_a_stored_value_that_does_not_parse_is_a_malformed_state() -> None:
    decision = decide_restoration(state(state="exploded"), checkpoint(), "plan", KNOWN, clean(6))
    assert kinds(decision) == ["state_malformed"] and "exploded" in decision.inconsistencies[0].detail
    assert decision.branch is Branch.CHECKPOINT
    garbage_checkpoint = decide_restoration(state(state="exploded"), {"id": 3}, "plan", KNOWN, clean(6))
    assert garbage_checkpoint.branch is Branch.FRESH


def test_a_checkpoint_whose_history_was_rewritten_is_not_usable() -> None:
    spoiled = {**checkpoint(), "historyIntact": False}
    decision = decide_restoration(state(phase="review"), spoiled, "plan", KNOWN, clean(6))
    assert decision.branch is Branch.FRESH and "rewrote the history" in decision.warnings[0]


def test_several_inconsistencies_are_all_named() -> None:
    rows: dict[int, Any] = {0: {"role": "user", "content": "m0"}, 1: "not an object"}
    decision = decide_restoration(
        state(phase="review", waitingOnTaskIds=[str(uuid.uuid4())]), None, "plan", KNOWN, scan_of(rows, 6)
    )
    assert kinds(decision) == [
        InconsistencyKind.PHASE_MISMATCH.value,
        InconsistencyKind.UNKNOWN_WAITED_TASKS.value,
        InconsistencyKind.HISTORY_TRUNCATED.value,
        InconsistencyKind.HISTORY_MALFORMED.value,
    ]


# --- the next step ----------------------------------------------------------------------------


def test_the_next_step_is_the_first_of_steps_5_to_8_that_applies() -> None:
    decision = decide_restoration(state(), None, "plan", KNOWN, clean(6))
    running = [WaitedTask(TASK_A, "research", "running", True)]
    finished = [WaitedTask(TASK_A, "research", "done", True)]
    assert next_step(decision, 1, running) is NextStep.REDELIVER_QUESTIONS
    assert next_step(decision, 0, running) is NextStep.RESUME_WAITING
    assert next_step(decision, 0, finished) is NextStep.RESUME
    assert next_step(decision, 0, []) is NextStep.RESUME


# --- the context ------------------------------------------------------------------------------


def facts(**over: Any) -> ContextFacts:
    decision = decide_restoration(state(), None, "plan", KNOWN, clean(6))
    base: dict[str, Any] = {
        "contract_name": "Add OAuth login",
        "contract_type": "simple",
        "status": "active",
        "phase": "plan",
        "version": 1,
        "deliverables_done": (),
        "deliverables_missing": ("plan-document",),
        "decision": decision,
        "next": NextStep.RESUME_WAITING,
        "waiting": (WaitedTask(TASK_A, "research", "running", True),),
        "questions": (OpenQuestion("Which database?", "choice", ("PostgreSQL", "SQLite")),),
        "answers": (ReceivedAnswer("Deploy on Friday?", "no"),),
        "history_kept": 6,
    }
    base.update(over)
    return ContextFacts(**base)


def test_the_context_says_where_the_contract_and_the_supervisor_stand() -> None:
    text = restoration_context(facts())
    for part in (
        "Add OAuth login",
        "phase plan",
        "missing: plan-document",
        "waiting_for_tasks",
        "waiting for the research tasks",
        "research (running)",
        "Which database?",
        "PostgreSQL",
        "Deploy on Friday? -> no",
        "6 messages restored",
        "Resume waiting",
    ):
        assert part in text, part


def test_the_context_counts_every_open_question_and_says_where_the_others_are() -> None:
    carried = (OpenQuestion("Which database?", "choice", ("PostgreSQL", "SQLite")),)
    all_here = restoration_context(facts(questions=carried, open_question_count=1))
    assert "Open questions (1):" in all_here and "pendingQuestionsNextAfter" not in all_here
    some_here = restoration_context(facts(questions=carried, open_question_count=53))
    assert (
        "Open questions (53; 1 in pendingQuestions, read the others with "
        "GET .../questions?open=true&after=<pendingQuestionsNextAfter>):"
    ) in some_here
    assert "Which database?" in some_here


def test_the_context_is_bounded_however_much_there_is_to_say() -> None:
    huge = facts(
        contract_name="n" * 10_000,
        questions=tuple(OpenQuestion("q" * 5000, "free_text", ()) for _ in range(50)),
        answers=tuple(ReceivedAnswer("a" * 5000, "é" * 5000) for _ in range(50)),
        waiting=tuple(WaitedTask(str(uuid.uuid4()), "t" * 500, "running", True) for _ in range(1000)),
    )
    assert len(restoration_context(huge).encode("utf-8")) <= CONTEXT_LIMIT


def test_the_history_a_stored_state_claims_counts_only_a_positive_whole_number() -> None:
    assert claimed_history_length(state(historyLength=6)) == 6
    for claimed in (0, -3, True, "6", 6.0, None):
        assert claimed_history_length(state(historyLength=claimed)) == 0, claimed
    assert claimed_history_length(None) == 0
    assert claimed_history_length(["historyLength"]) == 0


def test_the_tasks_a_stored_state_waits_on_are_read_as_text_whatever_they_are() -> None:
    assert waited_task_ids(state(waitingOnTaskIds=[TASK_A, 7])) == [TASK_A, "7"]
    assert waited_task_ids(state(waitingOnTaskIds="not a list")) == []
    assert waited_task_ids(None) == []


def test_a_claiming_daemon_is_told_its_incarnation_and_where_answers_go() -> None:
    first, *rest = claim_notices(3, "d-new", 2, questions_pending=True)
    assert "incarnation 3" in first and "SUPERVISOR_FENCED" in first
    assert rest == ["The answers to 2 pending question(s) will come to daemon d-new."]
    # Named, with nothing re-pointed: only the incarnation.
    assert len(claim_notices(3, "d-new", 0, questions_pending=True)) == 1
    # Unnamed, with questions pending: asked to name itself next time.
    assert "daemonId" in claim_notices(3, None, 0, questions_pending=True)[1]
    assert len(claim_notices(3, None, 0, questions_pending=False)) == 1


def test_a_restarted_supervisor_is_told_the_incarnation_to_send() -> None:
    notice = restart_notice(4)
    assert "incarnation 4" in notice and "SUPERVISOR_FENCED" in notice
