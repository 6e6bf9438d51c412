"""The maintenance rules (app.domain.maintenance): stale, input timeout, retention, batch selection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.domain.maintenance import (
    STALE_STATUSES,
    ContractFacts,
    Operation,
    StaleStep,
    input_timed_out,
    is_stale,
    may_delete,
    parse_batch_operation,
    stale_step,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
THIRTY = timedelta(minutes=30)


@pytest.mark.parametrize("status", list(Status))
def test_only_a_contract_whose_supervisor_should_be_working_can_be_stale(status: Status) -> None:
    silent = NOW - timedelta(hours=2)
    assert is_stale(status, silent, NOW, THIRTY) is (status in {Status.ACTIVE, Status.CREATED})
    assert not is_stale(status, NOW - timedelta(minutes=29), NOW, THIRTY)
    assert {Status.ACTIVE, Status.CREATED} == STALE_STATUSES


@pytest.mark.parametrize(
    ("stale_now", "episode_minutes_ago", "activity_minutes_ago", "step"),
    [
        (True, None, 40, StaleStep.DETECT),  # a new silence: one detection
        (True, 40, 40, StaleStep.NONE),  # the same silence: nothing more, however many runs
        (True, 90, 40, StaleStep.CLEAR),  # activity since detection (even if silent again)
        (False, 40, 1, StaleStep.CLEAR),  # activity returned
        (False, None, 1, StaleStep.NONE),
    ],
)
def test_one_stale_episode_per_silence(
    stale_now: bool, episode_minutes_ago: int | None, activity_minutes_ago: int, step: StaleStep
) -> None:
    episode = NOW - timedelta(minutes=episode_minutes_ago) if episode_minutes_ago is not None else None
    last = NOW - timedelta(minutes=activity_minutes_ago)
    assert stale_step(stale_now=stale_now, episode_activity=episode, last_activity_at=last) is step


def test_input_times_out_only_while_waiting_and_only_after_the_timeout() -> None:
    day = timedelta(hours=24)
    assert input_timed_out(Status.WAITING_FOR_INPUT, NOW - day, NOW, day)
    assert not input_timed_out(Status.WAITING_FOR_INPUT, NOW - day + timedelta(seconds=1), NOW, day)
    assert not input_timed_out(Status.PAUSED, NOW - 2 * day, NOW, day)


def test_retention_deletes_only_archived_contracts_past_it() -> None:
    month = timedelta(days=30)
    assert may_delete(Status.ARCHIVED, NOW - timedelta(days=31), NOW, month)
    assert not may_delete(Status.ARCHIVED, NOW - timedelta(days=29), NOW, month)
    assert not may_delete(Status.COMPLETED, NOW - timedelta(days=400), NOW, month)


def facts(status: Status, changed_hours_ago: float, active_hours_ago: float | None = None) -> ContractFacts:
    active = changed_hours_ago if active_hours_ago is None else active_hours_ago
    return ContractFacts(status, NOW - timedelta(hours=changed_hours_ago), NOW - timedelta(hours=active))


def test_each_batch_operation_selects_its_contracts() -> None:
    archive = parse_batch_operation("archive_old", {"olderThanHours": 168})
    assert archive.statuses == (Status.COMPLETED, Status.FAILED) and archive.target is Status.ARCHIVED
    assert archive.selects(facts(Status.FAILED, 200), NOW)
    assert not archive.selects(facts(Status.COMPLETED, 100), NOW)
    assert not archive.selects(facts(Status.ACTIVE, 200), NOW)
    pause = parse_batch_operation("pause_all", {"reason": "upgrade"})
    assert pause.selects(facts(Status.ACTIVE, 0), NOW) and not pause.selects(facts(Status.PAUSED, 9), NOW)
    assert pause.event_reason("b") == "upgrade" and pause.target is Status.PAUSED
    resume = parse_batch_operation("resume_all", {})
    assert resume.selects(facts(Status.PAUSED, 0), NOW) and resume.target is Status.ACTIVE
    cleanup = parse_batch_operation("cleanup_archived", {"olderThanHours": 24})
    assert cleanup.selects(facts(Status.ARCHIVED, 25), NOW) and not cleanup.selects(
        facts(Status.ARCHIVED, 23), NOW
    )
    assert cleanup.target is None
    restart = parse_batch_operation("restart_stale", {"staleThresholdMinutes": 30})
    assert restart.selects(facts(Status.ACTIVE, 0, active_hours_ago=1), NOW)
    assert not restart.selects(facts(Status.ACTIVE, 5, active_hours_ago=0.1), NOW)
    assert {o.value for o in Operation} == {
        "archive_old",
        "pause_all",
        "resume_all",
        "cleanup_archived",
        "restart_stale",
    }


@pytest.mark.parametrize(
    ("operation", "parameters", "field"),
    [
        ("archive_old", {"olderThanHours": 0}, "olderThanHours"),
        ("archive_old", {"olderThanHours": True}, "olderThanHours"),
        ("cleanup_archived", {}, "olderThanHours"),
        ("restart_stale", {"staleThresholdMinutes": -1}, "staleThresholdMinutes"),
        ("archive_everything", {}, "operation"),
    ],
)
def test_a_batch_request_that_makes_no_sense_is_refused(
    operation: str, parameters: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_batch_operation(operation, parameters)
    details = refused.value.details
    assert details.get("field", "operation" if "operation" in details else None) == field


def test_pause_all_needs_a_reason() -> None:
    with pytest.raises(ValidationFailed):
        parse_batch_operation("pause_all", {"reason": "  "})
