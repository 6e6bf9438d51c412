"""The fleet simulator's pure parts: the schedule a supervisor follows, and the arithmetic of
the reconciliation (what counts as applied, refused or lost; when a restoration matches)."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from typing import Any

import httpx
import pytest

from app.domain.phases import CONTRACT_TYPES
from app.domain.questions import QuestionType, parse_answer, parse_question
from app.simulation.fleet import READS
from app.simulation.ledger import Fate, Item, Kind, Ledger, percentile, progress_line, tally
from app.simulation.plan import (
    CONTRACT_TYPE,
    DELIVERABLES,
    MAX_OPEN_QUESTIONS,
    MAX_QUESTIONS,
    MAX_RUNNING_TASKS,
    PHASE_MOVES,
    STEPS_BEFORE_DELIVERING,
    Action,
    View,
    answer_for,
    choices,
    choose_action,
    crash_probability,
    daemon_layout,
    default_daemon_count,
    next_crash_in,
    progress,
    question_for,
)
from app.simulation.reconciliation import (
    Acknowledged,
    Reconciliation,
    RunFacts,
    compare_restoration,
    exit_code,
    expected_fallback,
    judge_heartbeats,
    judge_message,
    judge_questions,
    judge_states,
)
from app.simulation.service import RECHECK_SECONDS, Feature, Service, error_code


def view(**over: Any) -> View:
    base: dict[str, Any] = {
        "phase": "plan",
        "steps_in_phase": 0,
        "running": 0,
        "starting": 0,
        "open_questions": 0,
        "questions_asked": 0,
        "delivered": frozenset(),
    }
    base.update(over)
    return View(**base)


# --- the schedule ------------------------------------------------------------------------------


def test_the_deliverables_marked_are_the_simple_types_and_never_close_the_contract() -> None:
    config = CONTRACT_TYPES[CONTRACT_TYPE]
    phases = {p.id: p for p in config.phases}
    assert set(DELIVERABLES) == set(phases)
    for phase_id, marked in DELIVERABLES.items():
        defined = {d.id for d in phases[phase_id].deliverables}
        assert set(marked) <= defined
    # plan-document is what the plan gate needs, and it moves the contract to execute ...
    assert PHASE_MOVES == {"plan-document": "execute"}
    assert phases["plan"].gate is not None
    assert set(phases["plan"].gate.required_deliverables) <= set(DELIVERABLES["plan"])
    # ... while execute's required pull-request is never marked: the contracts stay open.
    assert phases["execute"].gate is not None
    assert not set(phases["execute"].gate.required_deliverables) & set(DELIVERABLES["execute"])


def test_a_supervisor_completes_only_tasks_it_saw_running() -> None:
    assert Action.COMPLETE not in choices(view(running=0, starting=2))
    assert Action.COMPLETE in choices(view(running=1))


def test_a_supervisor_spawns_at_most_its_limit_of_tasks_at_once() -> None:
    assert Action.SPAWN in choices(view(running=MAX_RUNNING_TASKS - 1))
    assert Action.SPAWN not in choices(view(running=MAX_RUNNING_TASKS - 1, starting=1))


def test_questions_are_bounded_open_and_in_all_and_skipped_when_the_service_has_none() -> None:
    assert Action.ASK in choices(view())
    assert Action.ASK not in choices(view(open_questions=MAX_OPEN_QUESTIONS))
    assert Action.ASK not in choices(view(questions_asked=MAX_QUESTIONS))
    assert Action.ASK not in choices(view(may_ask=False))


def test_a_deliverable_is_due_after_a_few_steps_and_the_phase_move_waits_for_every_answer() -> None:
    assert Action.DELIVER not in choices(view(steps_in_phase=STEPS_BEFORE_DELIVERING - 1))
    assert Action.DELIVER in choices(view(steps_in_phase=STEPS_BEFORE_DELIVERING))
    # task-breakdown does not move the phase: it may be marked with a question open
    assert Action.DELIVER in choices(view(steps_in_phase=9, open_questions=1))
    # plan-document moves it, and a contract waiting for an answer is not advanced
    moving = view(steps_in_phase=9, delivered=frozenset({"task-breakdown"}))
    assert Action.DELIVER in choices(moving)
    assert Action.DELIVER not in choices(view(steps_in_phase=9, open_questions=1, delivered=moving.delivered))
    # everything of the phase marked: nothing left to deliver
    assert Action.DELIVER not in choices(
        view(phase="execute", steps_in_phase=9, delivered=frozenset(DELIVERABLES["execute"]))
    )


def test_the_choice_is_the_seeds_and_always_one_that_is_open() -> None:
    first = [choose_action(view(steps_in_phase=5, running=1), random.Random(7)) for _ in range(3)]
    again = [choose_action(view(steps_in_phase=5, running=1), random.Random(7)) for _ in range(3)]
    assert first == again
    rng = random.Random(1)
    for _ in range(500):
        v = view(
            steps_in_phase=rng.randrange(8),
            running=rng.randrange(3),
            open_questions=rng.randrange(3),
            questions_asked=rng.randrange(6),
        )
        assert choose_action(v, rng) in choices(v)


def test_progress_stays_below_100_so_no_one_reads_a_finished_supervisor() -> None:
    assert progress(view()) == 0
    assert progress(view(steps_in_phase=100)) < 50
    assert 50 <= progress(view(phase="execute", steps_in_phase=100)) < 100


def test_the_crash_probability_is_a_poisson_process() -> None:
    assert crash_probability(0, 60) == 0
    assert crash_probability(2, 0) == 0
    assert crash_probability(1, 60) == pytest.approx(1 - math.exp(-1))
    assert crash_probability(2, 15) == pytest.approx(1 - math.exp(-0.5))


def test_crashes_come_at_the_rate_asked_on_average_and_never_at_rate_zero() -> None:
    rng = random.Random(3)
    gaps = [next_crash_in(rng, 2.0) for _ in range(20_000)]
    assert statistics.fmean(gaps) == pytest.approx(30.0, rel=0.03)
    within_15s = sum(1 for g in gaps if g <= 15) / len(gaps)
    assert within_15s == pytest.approx(crash_probability(2.0, 15), abs=0.02)
    assert next_crash_in(rng, 0) == math.inf


def test_supervisors_are_spread_evenly_over_a_few_daemons() -> None:
    assert default_daemon_count(1) == 1
    assert default_daemon_count(20) == 2
    assert default_daemon_count(200) == 8
    layout = daemon_layout(20, 3)
    assert [layout.count(d) for d in range(3)] == [7, 7, 6]
    assert layout == sorted(layout)
    assert daemon_layout(2, 5) == [0, 1]
    with pytest.raises(ValueError):
        daemon_layout(0, 1)


@pytest.mark.parametrize("number", range(8))
def test_every_question_and_its_answer_are_what_the_service_accepts(number: int) -> None:
    rng = random.Random(number)
    question = question_for(rng, number)
    draft = parse_question(question.question, question.type, options=list(question.options))
    answer = answer_for(question.type, question.options, rng)
    parse_answer(draft.type, draft.options, answer)


def test_each_question_type_is_asked() -> None:
    rng = random.Random(0)
    assert {question_for(rng, n).type for n in range(4)} == {t.value for t in QuestionType}


# --- the ledger ------------------------------------------------------------------------------


def test_an_item_counts_once_however_often_it_is_resent() -> None:
    ledger = Ledger()
    first = ledger.item(Kind.REPORTS, "m-1", "c")
    again = ledger.item(Kind.REPORTS, "m-1", "c")
    assert first is again
    first.accept()
    first.apply()
    assert tally(Kind.REPORTS, ledger.of(Kind.REPORTS)).sent == 1


def test_what_is_still_only_acknowledged_or_unanswered_at_the_end_is_lost() -> None:
    items = [Item(Kind.REPORTS, str(n)) for n in range(6)]
    items[0].apply()
    items[1].refuse("VALIDATION_FAILED")
    items[2].refuse("VALIDATION_FAILED")
    items[3].accept()
    items[5].lose("another answer stored")
    row = tally(Kind.REPORTS, items)
    assert (row.sent, row.applied, row.refused, row.lost) == (6, 1, 2, 3)
    assert row.refused_by_code == {"VALIDATION_FAILED": 2}
    assert row.lost_by_reason == {"acknowledged, not found": 1, "no answer": 1, "another answer stored": 1}


def test_acknowledged_items_the_service_cannot_read_back_are_unverified_not_lost() -> None:
    items = [Item(Kind.STATES, "a"), Item(Kind.STATES, "b")]
    items[0].accept()
    row = tally(Kind.STATES, items, unchecked="no read endpoint")
    assert (row.lost, row.unverified) == (1, 1)  # the unanswered one is still lost


def test_a_route_that_does_not_exist_leaves_nothing_in_the_ledger() -> None:
    ledger = Ledger()
    ledger.item(Kind.STATES, "x")
    ledger.forget(Kind.STATES, "x")
    assert tally(Kind.STATES, ledger.of(Kind.STATES)).sent == 0


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    random.Random(2).shuffle(values)
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7


def test_the_progress_line_counts_acknowledged_items_and_errors_by_code() -> None:
    ledger = Ledger()
    ledger.item(Kind.HEARTBEATS, "h1").accept()
    ledger.item(Kind.HEARTBEATS, "h2")
    ledger.stats("heartbeats").record("2xx", 4.0)
    ledger.stats("heartbeats").record("BROKER_UNAVAILABLE", 2.0)
    line = progress_line(12, ledger)
    assert "heartbeats 1/2 p50 2 p99 4 ms" in line
    assert line.endswith("errors: BROKER_UNAVAILABLE 1")


# --- judging what the service holds -------------------------------------------------------


def test_a_report_is_applied_refused_or_still_outstanding_by_its_message_status() -> None:
    applied, refused, pending = Item(Kind.REPORTS, "a"), Item(Kind.REPORTS, "b"), Item(Kind.REPORTS, "c")
    for item in (applied, refused, pending):
        item.accept()
    assert judge_message(applied, {"status": "applied"}) == "applied"
    judge_message(refused, {"status": "refused", "error": {"code": "VALIDATION_FAILED", "message": "closed"}})
    assert judge_message(pending, {"status": "pending"}) == "pending"
    assert applied.fate is Fate.APPLIED
    assert (refused.fate, refused.code) == (Fate.REFUSED, "VALIDATION_FAILED")
    assert pending.fate is Fate.ACCEPTED


def test_a_fenced_heartbeat_was_stored_and_is_not_lost() -> None:
    items = [Item(Kind.HEARTBEATS, k) for k in ("a", "b", "c", "d")]
    for item in items[:3]:
        item.accept()
    items[3].refuse("VALIDATION_FAILED")
    check = judge_heartbeats(items, {"a": False, "b": True})
    assert (check.stored, check.fenced, check.missing) == (2, 1, ("c",))
    assert [i.fate for i in items] == [Fate.APPLIED, Fate.APPLIED, Fate.ACCEPTED, Fate.REFUSED]


def save(incarnation: int, version: int, fate: Fate = Fate.ACCEPTED) -> Item:
    item = Item(
        Kind.STATES,
        f"t:{incarnation}:{version}",
        request={"incarnation": incarnation, "stateVersion": version},
    )
    item.fate = fate
    return item


def test_saves_up_to_the_stored_state_are_applied_and_a_newer_acknowledged_one_is_lost() -> None:
    saves = [save(1, 1), save(1, 2), save(2, 3), save(2, 4)]
    judge_states(saves, (2, 3))
    assert [s.fate for s in saves] == [Fate.APPLIED, Fate.APPLIED, Fate.APPLIED, Fate.LOST]
    assert saves[3].code == "acknowledged, newer than the stored state"


def test_a_save_without_an_answer_is_applied_only_if_the_stored_state_reached_it() -> None:
    reached, not_reached = save(1, 2, Fate.UNANSWERED), save(1, 3, Fate.UNANSWERED)
    judge_states([reached, not_reached], (1, 2))
    assert (reached.fate, not_reached.fate, not_reached.code) == (Fate.APPLIED, Fate.LOST, "no answer")


def test_no_stored_state_after_an_acknowledged_save_is_a_loss_and_a_refused_save_is_not() -> None:
    acked, refused = save(1, 1), save(1, 2, Fate.REFUSED)
    refused.code = "STALE_STATE"
    judge_states([acked, refused], None)
    assert (acked.fate, acked.code) == (Fate.LOST, "acknowledged, no state stored")
    assert refused.fate is Fate.REFUSED


def test_every_question_asked_and_every_answer_given_must_be_stored_as_given() -> None:
    asked = [Item(Kind.QUESTIONS, q) for q in ("q1", "q2", "q3")]
    for item in asked:
        item.accept()
    answers = [
        Item(Kind.ANSWERS, "q1", request={"answer": ["option B", "option A"]}),
        Item(Kind.ANSWERS, "q2", request={"answer": True}),
    ]
    for item in answers:
        item.accept()
    stored = {
        "q1": {"status": "answered", "answer": ["option A", "option B"]},  # kept in the options' order
        "q2": {"status": "open", "answer": None},
    }
    judge_questions(asked, answers, stored)
    assert [i.fate for i in asked] == [Fate.APPLIED, Fate.APPLIED, Fate.LOST]
    assert answers[0].fate is Fate.APPLIED
    assert (answers[1].fate, answers[1].code) == (Fate.LOST, "question is open, not answered")


def restoration(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "branch": "resume",
        "inconsistencies": [],
        "incarnation": 2,
        "state": {"stateVersion": 7, "historyLength": 12, "phase": "plan"},
        "history": [{"role": "assistant", "content": "..."}] * 12,
        "historyFrom": 0,
        "pendingQuestions": [{"id": "q-open"}],
        "answeredQuestions": [{"id": "q-done"}],
    }
    base.update(over)
    return base


def acknowledged(**over: Any) -> Acknowledged:
    ack = Acknowledged(state=(1, 7), history_length=12, open_questions={"q-open"}, answered={"q-done"})
    for key, value in over.items():
        setattr(ack, key, value)
    return ack


def test_a_restoration_matches_when_it_gives_back_what_was_acknowledged() -> None:
    assert compare_restoration(acknowledged(), restoration()) == []


def test_a_restoration_of_an_older_state_or_a_shorter_history_does_not_match() -> None:
    problems = compare_restoration(
        acknowledged(), restoration(state={"stateVersion": 6, "historyLength": 10})
    )
    assert problems == [
        "stateVersion: 7 acknowledged, 6 restored",
        "history: 12 messages acknowledged, 10 restored",
    ]


def test_a_save_that_got_no_answer_may_or_may_not_be_the_one_restored() -> None:
    ack = acknowledged(uncertain_versions={8}, uncertain_history={14})
    assert compare_restoration(ack, restoration(state={"stateVersion": 8, "historyLength": 14})) == []


def test_open_questions_must_come_back_pending_and_answered_ones_must_not() -> None:
    problems = compare_restoration(
        acknowledged(), restoration(pendingQuestions=[{"id": "q-done"}, {"id": "q-stranger"}])
    )
    assert problems == [
        "question q-open is open but was not restored as pending",
        "question q-done was answered but was restored as pending",
        "question q-stranger restored as pending was never acknowledged",
    ]
    # an answer in flight at the crash may land either side
    ack = acknowledged(uncertain_questions={"q-open"})
    assert compare_restoration(ack, restoration(pendingQuestions=[])) == []


def test_nothing_acknowledged_matches_a_fresh_start_and_inconsistencies_never_match() -> None:
    fresh = restoration(branch="fresh", state=None, history=[], pendingQuestions=[], answeredQuestions=[])
    assert compare_restoration(Acknowledged(), fresh) == []
    assert compare_restoration(acknowledged(), fresh)[0] == "stateVersion: 7 acknowledged, None restored"
    checkpointed = restoration(branch="checkpoint", inconsistencies=[{"kind": "phase_mismatch"}])
    assert compare_restoration(acknowledged(), checkpointed)[0].startswith(
        "the service found the stored state"
    )


def test_a_phase_moved_before_its_save_makes_the_protocols_fallback_the_expected_answer() -> None:
    moved = restoration(
        branch="fresh",
        state=None,
        history=[],
        inconsistencies=[{"kind": "phase_mismatch", "detail": "the state is in phase 'plan' ..."}],
    )
    assert compare_restoration(acknowledged(phase_moving="execute"), moved) == []
    assert expected_fallback(acknowledged(phase_moving="execute"), moved)
    # without a phase move pending, the same answer lost an acknowledged state
    assert compare_restoration(acknowledged(), moved)[0].startswith("the service found the stored state")
    # any other inconsistency is never expected
    truncated = restoration(inconsistencies=[{"kind": "phase_mismatch"}, {"kind": "history_truncated"}])
    assert not expected_fallback(acknowledged(phase_moving="execute"), truncated)
    # and the questions must still come back
    lost_question = {**moved, "pendingQuestions": []}
    assert compare_restoration(acknowledged(phase_moving="execute"), lost_question) == [
        "question q-open is open but was not restored as pending"
    ]


def result(*rows_lost: int) -> Reconciliation:
    facts = RunFacts("http://x", "sim-1", 20, 2, 15, 2, 5, 1, 30)
    rows = []
    for kind, lost in zip(Kind, rows_lost, strict=False):
        items = [Item(kind, str(n)) for n in range(3)]
        for item in items[lost:]:
            item.apply()
        rows.append(tally(kind, items))
    return Reconciliation(facts, tuple(rows), {})


def test_the_run_passes_only_with_nothing_lost_and_says_so_on_its_last_line() -> None:
    ok = result(0, 0, 0)
    assert (ok.lost, exit_code(ok)) == (0, 0)
    assert ok.render().splitlines()[-1] == "lost 0: everything the service acknowledged is there."
    bad = result(0, 2, 1)
    assert (bad.lost, exit_code(bad)) == (3, 1)
    assert bad.render().splitlines()[-1].startswith("LOST 3 (heartbeats 1, reports 2)")
    as_json = bad.to_json()
    assert (as_json["lost"], as_json["ok"]) == (3, False)
    assert as_json["kinds"]["reports"] | {"lostByReason": None} == {
        "kind": "reports",
        "sent": 3,
        "applied": 1,
        "refused": 0,
        "lost": 2,
        "refusedByCode": {},
        "lostByReason": None,
        "skipped": None,
        "unverified": 0,
        "unchecked": None,
        "notes": [],
    }


def test_an_error_is_counted_by_the_services_code_or_by_its_http_status() -> None:
    assert error_code(202, {"messageId": "m"}) is None
    assert (
        error_code(409, {"error": {"code": "STALE_STATE", "message": "...", "details": {}}}) == "STALE_STATE"
    )
    assert error_code(502, "<html>bad gateway</html>") == "HTTP_502"


# --- the client: patient with 503s, tolerant of missing routes (an in-memory transport) -----------


def refusal(status: int, code: str, **details: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "...", "details": details}})


def ask_question(service: Service) -> Any:
    path = "/contracts/c/questions"
    return asyncio.run(service.call(Kind.QUESTIONS, "POST", path, "mk", json={}, feature=Feature.QUESTIONS))


def service_with(handler: Any, clock: Any = None) -> tuple[Service, Ledger, list[str]]:
    said: list[str] = []
    ledger = Ledger()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://service")
    extra = {"clock": clock} if clock is not None else {}
    return Service(client, ledger, concurrency=4, say=said.append, **extra), ledger, said


def test_a_503_with_retry_after_is_sent_again_as_it_was_and_counted_by_code() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        if len(seen) == 1:
            unavailable = refusal(503, "BROKER_UNAVAILABLE")
            unavailable.headers["Retry-After"] = "0"
            return unavailable
        return httpx.Response(202, json={"messageId": "m-1"})

    service, ledger, _ = service_with(handler)
    body = {"taskName": "t", "success": True, "messageId": "m-1"}
    path = "/contracts/c/tasks/t/completed"
    answer = asyncio.run(service.call(Kind.REPORTS, "POST", path, "mk", json=body))
    assert answer.ok and answer.field("messageId") == "m-1"
    assert len(seen) == 2 and seen[0] == seen[1]  # the same id, byte for byte
    assert ledger.stats("reports").codes == {"BROKER_UNAVAILABLE": 1, "2xx": 1}


def test_a_refusal_is_answered_at_once_and_never_resent() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return refusal(409, "STALE_STATE", storedStateVersion=4)

    service, _, _ = service_with(handler)
    answer = asyncio.run(service.call(Kind.STATES, "POST", "/contracts/c/supervisor/state", "mk", json={}))
    assert (answer.status, answer.code, answer.details) == (409, "STALE_STATE", {"storedStateVersion": 4})
    assert len(calls) == 1


def test_an_unexpected_answer_is_counted_by_status_and_never_raises() -> None:
    service, ledger, _ = service_with(lambda request: httpx.Response(418, text="<html>teapot</html>"))
    answer = asyncio.run(service.call(READS, "GET", "/contracts/c", "mk"))
    assert (answer.status, answer.code, answer.body) == (418, "HTTP_418", "<html>teapot</html>")
    assert ledger.stats(READS).codes == {"HTTP_418": 1}


def test_a_missing_route_skips_its_feature_with_one_notice_and_is_tried_again_later() -> None:
    now = [0.0]
    routes = {"missing": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if routes["missing"]:
            return refusal(404, "NOT_FOUND")
        return httpx.Response(201, json={"id": "q"})

    service, _, said = service_with(handler, clock=lambda: now[0])
    assert ask_question(service).code == "NOT_FOUND"
    assert not service.available(Feature.QUESTIONS)
    assert len(said) == 1 and "no POST /api/v1/contracts/{id}/questions yet" in said[0]
    now[0] += RECHECK_SECONDS
    assert service.available(Feature.QUESTIONS)  # time to look again
    routes["missing"] = False
    assert ask_question(service).ok
    assert service.available(Feature.QUESTIONS) and "answers now" in said[-1]


def test_a_resource_the_service_does_not_have_is_not_a_missing_route() -> None:
    service, _, said = service_with(lambda request: refusal(404, "CONTRACT_NOT_FOUND"))
    assert ask_question(service).code == "CONTRACT_NOT_FOUND"
    assert service.available(Feature.QUESTIONS) and said == []
