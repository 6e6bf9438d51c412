"""The task outbox: it drains a backlog in one run, survives a broker outage and a sender's
crash, and does not grow in steady state.

Follow-ups are committed to `task_outbox` with the change that decided them; a row leaves
the table once the broker has the message (retired in batches after a send, or deleted by
the relay that sent it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import delete, func, insert, select

from app.api import ContractsAPI
from app.broker import send_task
from app.db import get_engine, unit_of_work
from app.models import OutboxMessage, utcnow
from app.outbox import relay_outbox, sent_rows
from app.queues import Queue, TaskName
from tests.integration.conftest import KEY_PREFIX, REDIS_URL
from tests.integration.worker_processes import ROOT, wait_for

pytestmark = pytest.mark.integration


def outbox_rows(marker: str | None = None) -> int:
    """Rows in the outbox (or only those whose payload carries `marker`)."""
    with unit_of_work() as uow:
        query = select(func.count()).select_from(OutboxMessage)
        if marker is not None:
            query = query.where(OutboxMessage.payload["marker"].as_string() == marker)
        return int(uow.session.scalar(query) or 0)


def backlog(count: int, marker: str) -> None:
    """`count` committed, never-sent follow-ups (pings: harmless to whoever consumes them)."""
    past = utcnow() - timedelta(minutes=5)
    with unit_of_work() as uow:
        uow.session.execute(
            insert(OutboxMessage),
            [
                {"task": TaskName.PING.value, "payload": {"marker": marker}, "created_at": past}
                for _ in range(count)
            ],
        )


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    with unit_of_work() as uow:
        uow.session.execute(delete(OutboxMessage))


def contracts_queue_length() -> int:
    return int(redis.Redis.from_url(REDIS_URL).llen(f"{KEY_PREFIX}{Queue.CONTRACTS.value}"))


def test_a_ten_thousand_row_backlog_clears_in_one_sweep_run() -> None:
    marker = uuid.uuid4().hex
    backlog(10_000, marker)
    queued_before = contracts_queue_length()
    try:
        sent = relay_outbox(get_engine(), older_than_seconds=0)
        assert sent == 10_000
        assert outbox_rows(marker) == 0
        assert contracts_queue_length() == queued_before + 10_000
    finally:
        # 10,000 pings would keep the next tests' workers busy for a while.
        redis.Redis.from_url(REDIS_URL).delete(f"{KEY_PREFIX}{Queue.CONTRACTS.value}")


def test_a_broker_outage_keeps_what_was_not_sent_and_the_next_run_sends_it() -> None:
    marker = uuid.uuid4().hex
    backlog(50, marker)
    calls = 0

    def broker_fails_after_ten(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        nonlocal calls
        calls += 1
        if calls > 10:
            raise ConnectionError("broker unreachable")
        return "sent"

    assert relay_outbox(get_engine(), older_than_seconds=0, sender=broker_fails_after_ten) == 10
    assert outbox_rows(marker) == 40
    assert relay_outbox(get_engine(), older_than_seconds=0) == 40
    assert outbox_rows(marker) == 0


def test_follow_ups_whose_send_failed_stay_until_relayed(make_caller) -> None:
    _, caller = make_caller()

    def broker_down(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        raise ConnectionError("broker unreachable")

    api = ContractsAPI(caller=caller, sender=broker_down)
    cid = uuid.UUID(str(api.create_contract("outage", "simple").id))
    api.complete_deliverable(cid, "plan-document")  # decides an evaluate follow-up
    assert outbox_rows() >= 1
    assert relay_outbox(get_engine(), older_than_seconds=0) >= 1
    assert outbox_rows() == 0


def test_a_broker_outage_is_one_warning_line_per_command_not_a_traceback(
    make_caller: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage is expected and the outbox holds what was not sent: each command logs one
    line saying so (an outage used to log a 70-line traceback per command)."""
    import logging

    from kombu.exceptions import OperationalError

    _, caller = make_caller()

    def broker_down(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    api = ContractsAPI(caller=caller, sender=broker_down)
    cid = uuid.UUID(str(api.create_contract("outage log", "simple").id))
    with caplog.at_level(logging.WARNING, logger="app.db"):
        api.complete_deliverable(cid, "plan-document")
    lines = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert "broker unavailable" in lines[0].getMessage()
    assert relay_outbox(get_engine(), older_than_seconds=0) >= 1


def test_the_outbox_does_not_grow_in_steady_state(make_caller) -> None:
    _, caller = make_caller()
    api = ContractsAPI(caller=caller, sender=send_task)
    for i in range(100):
        cid = uuid.UUID(str(api.create_contract(f"steady-{i}", "simple").id))
        api.complete_deliverable(cid, "plan-document")
    wait_for(
        lambda: outbox_rows() == 0 and sent_rows(get_engine()).pending() == 0,
        timeout=10,
        what="every sent follow-up retired",
    )


def _sender_process(exit_how: str) -> None:
    """A separate process that commits a follow-up, sends it, and exits cleanly or dies at once."""
    script = textwrap.dedent(
        f"""
        import os, uuid
        from app.api import ContractsAPI
        from app.auth import Role, create_token
        from app.broker import send_task
        from app.db import unit_of_work
        with unit_of_work() as uow:
            token = create_token(uow.session, "outbox-" + uuid.uuid4().hex[:6], Role.USER)
        api = ContractsAPI(token, sender=send_task)
        cid = api.create_contract("crash", "simple").id
        api.complete_deliverable(cid, "plan-document")
        if {exit_how!r} == "killed":
            os._exit(0)  # no atexit, no retiring thread: as if the process was killed
        """
    )
    subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True
    )


def test_a_sender_that_exits_cleanly_retires_what_it_sent() -> None:
    _sender_process("clean")
    assert outbox_rows() == 0


def test_a_sender_killed_after_sending_leaves_rows_the_relay_sends_again() -> None:
    _sender_process("killed")
    assert outbox_rows() >= 1  # sent, but the process died before retiring the row
    assert relay_outbox(get_engine(), older_than_seconds=0) >= 1  # a duplicate: tasks are idempotent
    assert outbox_rows() == 0
