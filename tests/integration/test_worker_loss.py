"""A worker killed with SIGKILL in the middle of a task loses no message.

Runs in its own module so no other worker consumes while the first one holds the message.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app.api import ContractsAPI
from app.db import get_engine, unit_of_work
from app.models import DeadLetter, ProcessedMessage
from tests.integration.helpers import count_events, message_processed, new_contract
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration


def worker_is_waiting_on_the_lock() -> bool:
    """A backend of this database waits for a lock: the task is inside its transaction."""
    with get_engine().connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar()
        )


_RECEIVED = re.compile(r"Task [\w.]+\[([0-9a-f-]+)\] received")
_FINISHED = re.compile(r"Task [\w.]+\[([0-9a-f-]+)\] (?:succeeded|raised|retry)")


def settled(worker: WorkerProcess) -> bool:
    """Every task the worker received has finished: no follow-up of the contract's start (an
    `evaluate_progress`) is still on its way to the row the test is about to lock, where it
    would block in place of the report the test means to block."""
    log = worker.log()
    return set(_RECEIVED.findall(log)) <= set(_FINISHED.findall(log))


def test_a_worker_killed_mid_task_loses_no_message(tmp_path: Path, make_caller) -> None:
    """Hold the contract row locked so the task blocks inside its transaction, kill its worker
    with SIGKILL, and let a second worker pick the unacknowledged message up."""
    token, _ = make_caller()
    api = ContractsAPI(token)
    # No other worker runs in this module, so the first one is the only consumer.
    first = start_worker(tmp_path, queues="contracts")
    first.wait_ready()
    second: WorkerProcess | None = None
    try:
        cid = new_contract(api)
        wait_for(lambda: settled(first), what="the contract's follow-ups done")
        task = uuid.uuid4()
        engine = get_engine()
        blocker = engine.connect()
        tx = blocker.begin()
        blocker.execute(text("SELECT id FROM contracts WHERE id = :id FOR UPDATE"), {"id": cid})
        message_id = api.report_task_completed(cid, task, "implement", success=True)

        wait_for(worker_is_waiting_on_the_lock, what="task blocked mid-transaction")
        assert "contracts.task_completed" in first.log()
        first.kill()
        tx.rollback()
        blocker.close()
        assert not message_processed(message_id)

        second = start_worker(tmp_path, queues="contracts")
        second.wait_ready()
        wait_for(lambda: message_processed(message_id), timeout=45, what="redelivered and processed")
        assert count_events(cid, "task_completed") == 1
        with unit_of_work() as uow:
            assert (
                uow.session.scalar(
                    select(func.count())
                    .select_from(ProcessedMessage)
                    .where(ProcessedMessage.message_id == message_id)
                )
                == 1
            )
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_message_that_keeps_killing_its_worker_is_parked_after_its_delivery_limit(
    tmp_path: Path, make_caller
) -> None:
    """With a limit of one delivery, the copy redelivered after the kill is parked, not run."""
    token, _ = make_caller()
    api = ContractsAPI(token)
    limit_one = {"MAKIMA_MAX_DELIVERIES": "1"}
    first = start_worker(tmp_path, queues="contracts", extra_env=limit_one)
    first.wait_ready()
    second: WorkerProcess | None = None
    try:
        cid = new_contract(api)
        wait_for(lambda: settled(first), what="the contract's follow-ups done")
        engine = get_engine()
        blocker = engine.connect()
        tx = blocker.begin()
        blocker.execute(text("SELECT id FROM contracts WHERE id = :id FOR UPDATE"), {"id": cid})
        message_id = api.report_task_completed(cid, uuid.uuid4(), "crashy", success=True)
        wait_for(worker_is_waiting_on_the_lock, what="first delivery blocked mid-transaction")
        first.kill()
        tx.rollback()
        blocker.close()

        second = start_worker(tmp_path, queues="contracts", extra_env=limit_one)
        second.wait_ready()

        def parked() -> DeadLetter | None:
            with unit_of_work() as uow:
                rows = uow.session.scalars(select(DeadLetter)).all()
                return next((r for r in rows if message_id in r.raw_body), None)

        row = wait_for(parked, timeout=45, what="parked after its delivery limit")
        assert "delivered 2 times" in row.error
        assert not message_processed(message_id)
    finally:
        first.stop()
        if second is not None:
            second.stop()
