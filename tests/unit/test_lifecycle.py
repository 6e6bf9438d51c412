"""Contract lifecycle (seed section 1.4, DESIGN "Domain rules we settle here").

The expected table below is written out by hand from the seed's transition table, not read
from `app.domain.lifecycle`, so the two are checked against each other:

| From              | To                                                   |
|-------------------|------------------------------------------------------|
| created           | active                                                |
| active            | waiting_for_input, paused, blocked, completing        |
| waiting_for_input | active, paused                                        |
| paused            | active                                                |
| blocked           | active                                                |
| completing        | completed, active                                     |
| Any (non-final)   | failed                                                |
| completed         | archived                                              |
| failed            | archived                                              |
| archived          | nothing (deleted by retention only)                   |
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from app.domain.errors import InvalidTransition, ValidationFailed
from app.domain.lifecycle import ALLOWED, Status, WaitingFor, allowed_targets, check_transition, render_table

S = Status

NINE_STATUSES = [
    "created",
    "active",
    "waiting_for_input",
    "paused",
    "blocked",
    "completing",
    "completed",
    "failed",
    "archived",
]

SEED_TABLE: dict[Status, set[Status]] = {
    S.CREATED: {S.ACTIVE, S.FAILED},
    S.ACTIVE: {S.WAITING_FOR_INPUT, S.PAUSED, S.BLOCKED, S.COMPLETING, S.FAILED},
    S.WAITING_FOR_INPUT: {S.ACTIVE, S.PAUSED, S.FAILED},
    S.PAUSED: {S.ACTIVE, S.FAILED},
    S.BLOCKED: {S.ACTIVE, S.FAILED},
    S.COMPLETING: {S.COMPLETED, S.ACTIVE, S.FAILED},
    S.COMPLETED: {S.ARCHIVED},
    S.FAILED: {S.ARCHIVED},
    S.ARCHIVED: set(),
}

NON_TERMINAL = [S.CREATED, S.ACTIVE, S.WAITING_FOR_INPUT, S.PAUSED, S.BLOCKED, S.COMPLETING]
TERMINAL = [S.COMPLETED, S.FAILED, S.ARCHIVED]

ALL_PAIRS = list(itertools.product(Status, Status))
ALLOWED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in SEED_TABLE[a]]
REJECTED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in SEED_TABLE[a]]


def _pair_id(pair: tuple[Status, Status]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# --- the statuses themselves -------------------------------------------------------------


def test_there_are_exactly_the_nine_statuses_stored_as_text() -> None:
    assert [s.value for s in Status] == NINE_STATUSES
    for s in Status:
        assert isinstance(s, str)
        assert Status(s.value) is s


def test_terminal_statuses_are_completed_failed_and_archived() -> None:
    assert Status.terminal() == set(TERMINAL)
    assert Status.open() == set(NON_TERMINAL)


def test_phases_change_only_while_active_or_waiting_for_input() -> None:
    assert Status.accepting_phase_changes() == {S.ACTIVE, S.WAITING_FOR_INPUT}


def test_a_contract_waits_for_a_question_a_phase_confirmation_or_a_completion_confirmation() -> None:
    assert {w.value for w in WaitingFor} == {
        "question",
        "phase_confirmation",
        "completion_confirmation",
    }


# --- the table, all 81 pairs ---------------------------------------------------------------


def test_the_table_is_the_seeds_table() -> None:
    assert set(ALLOWED) == set(Status)
    assert {k: set(v) for k, v in ALLOWED.items()} == SEED_TABLE


def test_all_81_pairs_are_covered() -> None:
    assert len(ALL_PAIRS) == 81
    assert len(ALLOWED_PAIRS) + len(REJECTED_PAIRS) == 81


@pytest.mark.parametrize(("current", "target"), ALLOWED_PAIRS, ids=[_pair_id(p) for p in ALLOWED_PAIRS])
def test_an_allowed_move_passes(current: Status, target: Status) -> None:
    # The guard facts are supplied so only the table is under test here.
    check_transition(current, target, reason="the daemon crashed", blocker="waiting on the API key")


@pytest.mark.parametrize(("current", "target"), REJECTED_PAIRS, ids=[_pair_id(p) for p in REJECTED_PAIRS])
def test_a_move_outside_the_table_is_an_invalid_transition_listing_the_allowed_targets(
    current: Status, target: Status
) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_transition(current, target, reason="a reason", blocker="a blocker")
    err = caught.value
    expected = sorted(s.value for s in SEED_TABLE[current])
    assert err.code == "INVALID_TRANSITION"
    assert err.details == {
        "currentStatus": current.value,
        "targetStatus": target.value,
        "allowedTargets": expected,
    }
    assert f"'{current.value}'" in err.message
    assert f"'{target.value}'" in err.message
    for allowed in expected:
        assert allowed in err.message
    if not expected:
        assert "none" in err.message
    assert str(err) == err.message


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_allowed_targets_are_sorted_and_exactly_the_tables(status: Status) -> None:
    assert allowed_targets(status) == sorted(s.value for s in SEED_TABLE[status])


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_no_status_moves_to_itself(status: Status) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(status, status, reason="r", blocker="b")


@pytest.mark.parametrize("status", NON_TERMINAL, ids=str)
def test_failed_is_reachable_from_every_non_terminal_status(status: Status) -> None:
    assert S.FAILED in ALLOWED[status]
    check_transition(status, S.FAILED, reason="unrecoverable error")


@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED], ids=str)
def test_completed_and_failed_go_to_archived_only(status: Status) -> None:
    assert ALLOWED[status] == {S.ARCHIVED}
    check_transition(status, S.ARCHIVED)


@pytest.mark.parametrize("target", list(Status), ids=str)
def test_nothing_leaves_archived(target: Status) -> None:
    assert ALLOWED[S.ARCHIVED] == frozenset()
    with pytest.raises(InvalidTransition) as caught:
        check_transition(S.ARCHIVED, target, reason="r", blocker="b")
    assert caught.value.details["allowedTargets"] == []
    assert "none (it is final)" in caught.value.message


def _reachable_from(start: Status) -> set[Status]:
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in ALLOWED[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def test_every_status_is_reachable_from_created() -> None:
    assert _reachable_from(S.CREATED) == set(Status)


@pytest.mark.parametrize("status", TERMINAL, ids=str)
def test_a_finished_contract_never_comes_back_to_work(status: Status) -> None:
    assert _reachable_from(status) <= set(TERMINAL)


def test_created_is_only_the_start_nothing_moves_back_to_it() -> None:
    assert all(S.CREATED not in targets for targets in ALLOWED.values())


# --- guards that need facts -----------------------------------------------------------------


@pytest.mark.parametrize("blocker", [None, "", "   \t"], ids=["absent", "empty", "blank"])
def test_blocked_needs_a_blocker(blocker: str | None) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_transition(S.ACTIVE, S.BLOCKED, blocker=blocker, reason="a reason is not a blocker")
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.missing == ["blocker"]
    assert err.details["missing"] == ["blocker"]
    assert "'blocker'" in err.message
    assert "'blocked'" in err.message


def test_blocked_with_a_blocker_passes() -> None:
    check_transition(S.ACTIVE, S.BLOCKED, blocker="waiting on the staging database")


@pytest.mark.parametrize("status", NON_TERMINAL, ids=str)
@pytest.mark.parametrize("reason", [None, "", "  \n"], ids=["absent", "empty", "blank"])
def test_failed_needs_a_reason(status: Status, reason: str | None) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_transition(status, S.FAILED, reason=reason, blocker="a blocker is not a reason")
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.missing == ["reason"]
    assert err.details["missing"] == ["reason"]
    assert "'reason'" in err.message
    assert "'failed'" in err.message


def test_the_table_is_checked_before_the_guards() -> None:
    # archived -> failed without a reason is illegal as a move, whatever facts are missing.
    with pytest.raises(InvalidTransition):
        check_transition(S.ARCHIVED, S.FAILED)
    with pytest.raises(InvalidTransition):
        check_transition(S.PAUSED, S.BLOCKED)


UNGUARDED_PAIRS = [(a, b) for a, b in ALLOWED_PAIRS if b not in (S.BLOCKED, S.FAILED)]


@pytest.mark.parametrize(("current", "target"), UNGUARDED_PAIRS, ids=[_pair_id(p) for p in UNGUARDED_PAIRS])
def test_moves_other_than_blocked_and_failed_need_no_facts(current: Status, target: Status) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(("target", "field"), [("failed", "reason"), ("blocked", "blocker")])
def test_guards_hold_when_the_target_arrives_as_plain_text(target: str, field: str) -> None:
    try:
        check_transition(S.ACTIVE, target)  # type: ignore[arg-type]
    except ValidationFailed as err:
        assert err.missing == [field]
    else:
        raise AssertionError(f"active -> {target} without a {field} was accepted")


# --- the table as people read it ------------------------------------------------------------


def test_render_table_mentions_every_status_with_its_targets() -> None:
    table = render_table()
    lines = table.splitlines()
    assert lines[:2] == ["| from | may move to |", "|---|---|"]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[2:]}
    assert list(rows) == NINE_STATUSES
    for status in Status:
        targets = rows[status.value]
        expected = sorted(s.value for s in SEED_TABLE[status])
        if expected:
            assert targets == ", ".join(expected)
        else:
            assert "deleted by retention" in targets
