"""The pure rules of a state save: what a save may carry, how saves are ordered, where history lands."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.errors import (
    HistoryGap,
    IncarnationNotIssued,
    StaleState,
    StateVersionReused,
    SupervisorFenced,
    ValidationFailed,
)
from app.domain.history_messages import parse_message
from app.domain.save_plan import SaveVerdict, StoredOrder, current_incarnation, judge_save, worth_an_event
from app.domain.save_resends import refuse_a_different_resend, resend_differences, resend_window
from app.domain.state_saves import CheckpointMark, parse_save
from app.domain.state_snapshots import checkpoint_after, parse_snapshot, snapshot_of
from app.domain.state_values import MAX_APPEND, MAX_CONTENT, MAX_TASK_IDS
from app.domain.supervisors import SupervisorState
from app.domain.uuids import UUID_FORM

CID, TASK = uuid.uuid4(), uuid.uuid4()
T0 = datetime(2026, 1, 31, 10, 30, tzinfo=UTC)


def raw(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "taskId": str(TASK),
        "stateVersion": 3,
        "state": "working",
        "phase": "execute",
        "currentActivity": "Implementing user authentication",
        "progress": 45,
        "spawnedTaskIds": [str(uuid.uuid4())],
        "waitingOnTaskIds": [],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def msg(i: int, role: str = "assistant") -> dict[str, Any]:
    return {"role": role, "content": f"message {i}"}


def refused(**over: Any) -> dict[str, Any]:
    with pytest.raises(ValidationFailed) as caught:
        parse_save(raw(**over))
    return caught.value.details


# --- what a save may carry --------------------------------------------------------------------


def test_a_save_round_trips_every_field() -> None:
    save = parse_save(
        raw(
            incarnation=2,
            error=None,
            historyFrom=4,
            historyAppend=[
                {
                    "role": "tool",
                    "content": "42",
                    "name": "calc",
                    "toolCallId": "c-1",
                    "at": "2026-01-31T10:30:00Z",
                }
            ],
            checkpoint={"id": "after-plan", "note": "plan agreed"},
            daemonId="d-7",
            host="gpu-7",
        )
    )
    assert (save.task_id, save.incarnation, save.state_version, save.state) == (
        TASK,
        2,
        3,
        SupervisorState.WORKING,
    )
    assert save.history_from == 4 and save.history_append is not None
    (message,) = save.history_append
    assert (message.role, message.name, message.tool_call_id, message.at) == ("tool", "calc", "c-1", T0)
    assert parse_message(message.to_json()) == message
    assert save.checkpoint == CheckpointMark("after-plan", "plan agreed")
    assert (save.daemon_id, save.host) == ("d-7", "gpu-7")


def test_every_refusal_names_the_field_and_the_limit() -> None:
    assert refused(stateVersion=None)["field"] == "stateVersion"
    assert refused(stateVersion=-1)["field"] == "stateVersion"
    assert refused(state="dreaming")["field"] == "state"
    assert "waiting_for_tasks" in refused(state="dreaming")["problem"]
    assert refused(progress=101)["field"] == "progress"
    assert refused(incarnation=0)["field"] == "incarnation"
    assert refused(taskId="nope")["field"] == "taskId"
    assert refused(phase="")["field"] == "phase"
    assert refused(surprise=1)["field"] == "surprise"
    many = refused(spawnedTaskIds=[str(uuid.uuid4()) for _ in range(MAX_TASK_IDS + 1)])
    assert (many["field"], many["limit"]) == ("spawnedTaskIds", MAX_TASK_IDS)
    assert refused(waitingOnTaskIds=["not-a-uuid"])["field"] == "waitingOnTaskIds[0]"
    too_long = refused(historyAppend=[msg(0), {"role": "user", "content": "x" * (MAX_CONTENT + 1)}])
    assert (too_long["field"], too_long["limit"]) == ("historyAppend[1].content", MAX_CONTENT)
    too_many = refused(historyAppend=[msg(i) for i in range(MAX_APPEND + 1)])
    assert (too_many["field"], too_many["limit"]) == ("historyAppend", MAX_APPEND)
    assert refused(historyAppend=[{"role": "robot", "content": "x"}])["field"] == "historyAppend[0].role"
    assert refused(historyAppend=[{"role": "user"}])["field"] == "historyAppend[0].content"
    assert refused(historyAppend=[{**msg(0), "at": "yesterday"}])["field"] == "historyAppend[0].at"
    assert refused(historyFrom=-1)["field"] == "historyFrom"
    assert refused(checkpoint={"note": "no id"})["field"] == "checkpoint.id"
    assert refused(currentActivity="nul\x00")["field"] == "currentActivity"


def test_a_saves_phase_and_activity_are_one_line_as_a_heartbeats_are() -> None:
    for field, bad in (
        ("phase", "plan\nexecute"),
        ("phase", "plan\u2028"),
        ("currentActivity", "\x1b[31mred"),
        ("currentActivity", "two\tcolumns"),
    ):
        problem = refused(**{field: bad})
        assert problem["field"] == field, problem
        assert "one line" in problem["problem"]
    # Message content is free text, newlines and all.
    assert parse_save(raw(historyAppend=[{"role": "user", "content": "line 1\nline 2"}])).history_append


# Spellings `uuid.UUID` reads and a heartbeat's ids may not take (`uuid_problem`).
LOOSE_IDS = {
    "braces": "{" + str(TASK) + "}",
    "urn": "urn:uuid:" + str(TASK),
    "full-width digits": "\uff10" * 32,
    "a hyphen misplaced": f"{TASK.hex[:4]}-{TASK.hex[4:]}",
    "hyphens missing": f"{TASK.hex[:8]}-{TASK.hex[8:]}",
    "an underscore": TASK.hex[:4] + "_" + TASK.hex[5:],
}


@pytest.mark.parametrize("given", LOOSE_IDS.values(), ids=LOOSE_IDS.keys())
@pytest.mark.parametrize(
    ("field", "sent"),
    [
        ("taskId", lambda given: {"taskId": given}),
        ("spawnedTaskIds[1]", lambda given: {"spawnedTaskIds": [str(CID), given]}),
        ("waitingOnTaskIds[0]", lambda given: {"waitingOnTaskIds": [given]}),
    ],
    ids=["taskId", "spawnedTaskIds", "waitingOnTaskIds"],
)
def test_a_saves_ids_are_held_to_a_heartbeats_form_naming_the_field_and_the_form(
    field: str, sent: Any, given: str
) -> None:
    """`uuid.UUID` took these, so a save named a task in spellings its heartbeats were refused
    for; the problem is the heartbeat's own words, ending with the form an id may take."""
    details = refused(**sent(given))
    assert details["field"] == field
    assert details["problem"] == f"'{given[:60]}' is not a UUID: {UUID_FORM}"


def test_a_saves_ids_are_taken_in_either_case_with_or_without_hyphens() -> None:
    for given in (str(TASK).upper(), TASK.hex, TASK.hex.upper()):
        save = parse_save(raw(taskId=given, spawnedTaskIds=[given], waitingOnTaskIds=[given]))
        assert (save.task_id, save.spawned_task_ids, save.waiting_on_task_ids) == (
            TASK,
            (str(TASK),),
            (str(TASK),),
        )
    assert refused(taskId=7) == {
        "missing": [],
        "field": "taskId",
        "problem": f"must be a UUID string: {UUID_FORM}",
    }


# --- ordering ---------------------------------------------------------------------------------


def stored(incarnation: int = 1, version: int = 5, length: int = 10) -> StoredOrder:
    return StoredOrder(incarnation, version, length)


def test_the_incarnation_in_force_is_the_heartbeats_else_the_saves_own_else_one() -> None:
    assert current_incarnation(3, stored(incarnation=2)) == 3
    assert current_incarnation(None, stored(incarnation=2)) == 2
    assert current_incarnation(None, None) == 1


def test_a_newer_save_applies_an_equal_one_is_a_duplicate_an_older_one_is_stale() -> None:
    assert judge_save(CID, parse_save(raw(stateVersion=6)), stored(), 1).verdict is SaveVerdict.APPLY
    duplicate = judge_save(CID, parse_save(raw(stateVersion=5, historyAppend=[msg(10)])), stored(), 1)
    assert (duplicate.verdict, duplicate.history_from, duplicate.history_length) == (
        SaveVerdict.DUPLICATE,
        None,
        10,
    )
    with pytest.raises(StaleState) as stale:
        judge_save(CID, parse_save(raw(stateVersion=4)), stored(), 1)
    assert stale.value.details == {
        "taskId": str(TASK),
        "incarnation": 1,
        "stateVersion": 4,
        "storedIncarnation": 1,
        "storedStateVersion": 5,
    }


def stored_save(save_raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, list[Any] | None]:
    """What the server keeps of an applied first save: the state, its checkpoint, its messages."""
    save = parse_save(save_raw)
    plan = judge_save(CID, save, None, 1)
    history = [m.to_json() for m in save.history_append or ()]
    state = {**snapshot_of(save, plan, T0), "daemonId": save.daemon_id, "host": save.host}
    return state, checkpoint_after(save, plan, None, T0), history


def test_a_resend_is_the_same_save_any_other_content_under_its_version_is_refused_naming_what_differs() -> (
    None
):
    first = raw(stateVersion=5, historyAppend=[msg(0), msg(1)], checkpoint={"id": "cp"}, daemonId="d-7")
    state, checkpoint, history = stored_save(first)
    assert resend_window(parse_save(first), 2) == (0, 2)
    assert resend_differences(parse_save(first), state, checkpoint, history) == []
    # The same key with other content is not a resend: nothing may be dropped in silence.
    changed = {**first, "progress": 46, "historyAppend": [msg(0), msg(9)], "checkpoint": None}
    assert resend_differences(parse_save(changed), state, checkpoint, history) == [
        "progress",
        "history",
        "checkpoint",
    ]
    assert resend_differences(parse_save({**first, "daemonId": "d-8"}), state, checkpoint, history) == [
        "daemonId"
    ]
    # An append that cannot have made the stored history (two messages where one is stored).
    assert resend_window(parse_save(first), 1) is None
    assert resend_differences(parse_save(first), state, checkpoint, None) == ["history"]
    save = parse_save(changed)
    with pytest.raises(StateVersionReused) as reused:
        refuse_a_different_resend(
            save, judge_save(CID, save, stored(version=5, length=2), 1), state, checkpoint, history
        )
    assert reused.value.code == "STATE_VERSION_REUSED"
    assert reused.value.details == {
        "taskId": str(TASK),
        "incarnation": 1,
        "stateVersion": 5,
        "differs": ["progress", "history", "checkpoint"],
    }


def test_a_newer_incarnation_wins_whatever_its_state_version() -> None:
    plan = judge_save(
        CID, parse_save(raw(incarnation=2, stateVersion=0)), stored(incarnation=1, version=99), 2
    )
    assert (plan.verdict, plan.incarnation) == (SaveVerdict.APPLY, 2)


def test_an_incarnation_older_than_the_one_in_force_is_fenced_whatever_its_version() -> None:
    with pytest.raises(SupervisorFenced) as fenced:
        judge_save(CID, parse_save(raw(incarnation=1, stateVersion=1000)), stored(), 2)
    assert (fenced.value.details["incarnation"], fenced.value.details["currentIncarnation"]) == (1, 2)
    # Naming the one in force, a save applies.
    named = judge_save(CID, parse_save(raw(incarnation=2, stateVersion=6)), stored(incarnation=2), 2)
    assert named.incarnation == 2


def test_history_is_appended_at_history_from_never_past_the_stored_end() -> None:
    at_end = judge_save(CID, parse_save(raw(stateVersion=6, historyAppend=[msg(10), msg(11)])), stored(), 1)
    assert (at_end.history_from, at_end.history_length) == (10, 12)
    rewrite = judge_save(
        CID, parse_save(raw(stateVersion=6, historyFrom=4, historyAppend=[msg(4)])), stored(), 1
    )
    assert (rewrite.history_from, rewrite.history_length) == (4, 5)
    truncate = judge_save(CID, parse_save(raw(stateVersion=6, historyFrom=2)), stored(), 1)
    assert (truncate.history_from, truncate.history_length) == (2, 2)
    untouched = judge_save(CID, parse_save(raw(stateVersion=6)), stored(), 1)
    assert (untouched.history_from, untouched.history_length) == (None, 10)
    with pytest.raises(HistoryGap) as gap:
        judge_save(CID, parse_save(raw(stateVersion=6, historyFrom=11, historyAppend=[msg(11)])), stored(), 1)
    assert (gap.value.details["historyFrom"], gap.value.details["storedLength"]) == (11, 10)
    first = judge_save(CID, parse_save(raw(historyFrom=0, historyAppend=[msg(0)])), None, 1)
    assert (first.verdict, first.history_length) == (SaveVerdict.APPLY, 1)


def test_a_stale_save_is_refused_before_its_history_is_judged() -> None:
    with pytest.raises(StaleState):
        judge_save(CID, parse_save(raw(stateVersion=1, historyFrom=99, historyAppend=[msg(0)])), stored(), 1)


# --- checkpoints and events ---------------------------------------------------------------------


def test_a_checkpoint_is_a_snapshot_of_its_save_and_survives_later_saves_until_its_history_is_rewritten() -> (
    None
):
    save = parse_save(raw(historyFrom=0, historyAppend=[msg(0), msg(1)], checkpoint={"id": "cp-1"}))
    plan = judge_save(CID, save, None, 1)
    checkpoint = checkpoint_after(save, plan, None, T0)
    assert checkpoint is not None
    snap = parse_snapshot(checkpoint)
    assert (snap.checkpoint_id, snap.state_version, snap.history_length, snap.saved_at) == ("cp-1", 3, 2, T0)
    assert checkpoint["historyIntact"] is True

    later = parse_save(raw(stateVersion=4, historyAppend=[msg(2)]))
    kept = checkpoint_after(later, judge_save(CID, later, StoredOrder(1, 3, 2), 1), checkpoint, T0)
    assert kept == checkpoint
    rewrite = parse_save(raw(stateVersion=5, historyFrom=1, historyAppend=[msg(1)]))
    spoiled = checkpoint_after(rewrite, judge_save(CID, rewrite, StoredOrder(1, 4, 3), 1), checkpoint, T0)
    assert spoiled is not None and spoiled["historyIntact"] is False and spoiled["historyRewrittenFrom"] == 1


def test_an_event_only_for_a_first_save_a_change_of_state_or_phase_or_a_checkpoint() -> None:
    save = parse_save(raw())
    assert worth_an_event(save, None, None)
    assert not worth_an_event(save, "working", "execute")
    assert worth_an_event(save, "idle", "execute")
    assert worth_an_event(save, "working", "plan")
    assert worth_an_event(parse_save(raw(checkpoint={"id": "x"})), "working", "execute")


def test_snapshot_of_a_save_is_what_a_restoration_reads_back() -> None:
    save = parse_save(raw(waitingOnTaskIds=[str(TASK)]))
    plan = judge_save(CID, save, None, 1)
    snap = parse_snapshot(snapshot_of(save, plan, T0))
    assert (snap.state, snap.phase, snap.waiting_on_task_ids, snap.saved_at) == (
        SupervisorState.WORKING,
        "execute",
        (str(TASK),),
        T0,
    )


def test_once_an_incarnation_was_issued_a_save_must_name_it() -> None:
    # Incarnation 1 in force, nothing issued by the server yet: leaving it out is fine.
    assert judge_save(CID, parse_save(raw(stateVersion=6)), stored(), 1).incarnation == 1
    with pytest.raises(SupervisorFenced) as fenced:  # after a restoration, restart or death
        judge_save(CID, parse_save(raw(stateVersion=6)), stored(incarnation=2), 2)
    assert (fenced.value.details["incarnation"], fenced.value.details["currentIncarnation"]) == (None, 2)
    assert "must name the incarnation" in str(fenced.value)


def test_an_incarnation_never_issued_is_refused_naming_the_one_in_force() -> None:
    with pytest.raises(IncarnationNotIssued) as future:
        judge_save(CID, parse_save(raw(incarnation=50, stateVersion=1)), stored(), 1)
    assert (future.value.details["incarnation"], future.value.details["currentIncarnation"]) == (50, 1)
    assert "restoration" in str(future.value)


def test_a_stale_save_of_an_older_incarnation_is_not_told_to_count_higher() -> None:
    older = str(StaleState(TASK, (1, 100), (2, 1)))
    assert "Incarnation 1" in older and "older than the stored save's incarnation 2" in older
    assert "higher stateVersion" not in older and "restoration" in older
    same = str(StaleState(TASK, (2, 4), (2, 7)))
    assert "State version 4 (incarnation 2)" in same and "Send a higher stateVersion" in same
