"""Quiet sweeps (app.sweep_logging): beat's sweeps that did nothing log at DEBUG, not INFO.

The records are built with Celery's own logger names and format strings, so a Celery upgrade
that rewords them fails here rather than silently flooding the log again.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from app.sweep_logging import QuietSweeps, is_quiet_sweep


def record(name: str, msg: str, args: Any, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def succeeded(task: str, result: str) -> logging.LogRecord:
    context = {"id": "t-1", "name": task, "return_value": result, "runtime": 0.01, "args": "", "kwargs": ""}
    return record("celery.app.trace", LOG_SUCCESS, (context,))


def received(task: str) -> logging.LogRecord:
    context = {"id": "t-1", "name": task, "args": "", "kwargs": "", "eta": None}
    return record("celery.worker.strategy", LOG_RECEIVED, (context,))


def beat_sending(task: str) -> logging.LogRecord:
    return record("celery.beat", "Scheduler: Sending due task %s (%s)", ("relay-outbox", task))


def test_a_sweep_that_did_nothing_is_quiet() -> None:
    assert is_quiet_sweep(succeeded("sweeps.relay_outbox", "0"))


def test_a_sweep_that_did_something_is_still_logged() -> None:
    assert not is_quiet_sweep(succeeded("sweeps.relay_outbox", "3"))


def test_other_tasks_are_never_quiet_whatever_they_return() -> None:
    assert not is_quiet_sweep(succeeded("contracts.task_completed", "None"))
    assert not is_quiet_sweep(received("contracts.task_completed"))


def test_receiving_and_sending_a_sweep_is_quiet_its_outcome_line_says_what_it_did() -> None:
    assert is_quiet_sweep(received("sweeps.drain_dead_letters"))
    assert is_quiet_sweep(beat_sending("sweeps.drain_dead_letters"))
    assert not is_quiet_sweep(beat_sending("contracts.ping"))


def test_a_failed_sweep_is_never_quiet() -> None:
    failure = record(
        "celery.app.trace",
        "Task %(name)s[%(id)s] %(description)s: %(exc)s",
        ({"name": "sweeps.relay_outbox"},),
    )
    failure.levelno = logging.ERROR
    assert QuietSweeps().filter(failure) is True


@pytest.mark.parametrize("debug", [False, True])
def test_quiet_lines_are_dropped_at_info_and_shown_as_debug_at_debug(debug: bool) -> None:
    logger = logging.getLogger("celery.app.trace")
    previous = logger.level
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        line = succeeded("sweeps.relay_outbox", "0")
        assert QuietSweeps().filter(line) is debug
        if debug:
            assert (line.levelno, line.levelname) == (logging.DEBUG, "DEBUG")
        assert QuietSweeps().filter(succeeded("sweeps.relay_outbox", "2")) is True
    finally:
        logger.setLevel(previous)
