"""Round trips on the hot paths, counted, so a change that adds one fails here loudly.

Counted are the statements the database driver executes (SQLAlchemy's
`before_cursor_execute`), not BEGIN/COMMIT. Budgets: a guarded phase change at most 6, a
task-completed message (through the worker task's own code, in-process) at most 8.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from app import contracts
from app.api import ContractsAPI
from app.db import get_engine, unit_of_work
from app.domain.lifecycle import Status
from app.domain.phase_change import PhaseChangeRequest
from app.models import utcnow

pytestmark = pytest.mark.integration

PHASE_CHANGE_BUDGET = 6
TASK_COMPLETED_BUDGET = 8


def _no_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    return "not-sent"


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement.split("\n", 1)[0][:120])

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _active_contract(caller: Any) -> uuid.UUID:
    api = ContractsAPI(caller=caller, sender=_no_send)
    cid = uuid.UUID(str(api.create_contract("round trips", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    return cid


def test_a_guarded_phase_change_costs_at_most_six_statements(make_caller) -> None:
    _, caller = make_caller()
    cid = _active_contract(caller)
    with unit_of_work(_no_send) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
    with counted_statements() as statements, unit_of_work(_no_send) as uow:
        contracts.change_phase(
            uow, caller, cid, PhaseChangeRequest("execute", expected_version=1), now=utcnow()
        )
    print(f"guarded phase change: {len(statements)} statements", *statements, sep="\n  ")
    assert 0 < len(statements) <= PHASE_CHANGE_BUDGET, statements


def test_a_task_completed_message_costs_at_most_eight_statements(make_caller) -> None:
    from workers.contracts import task_completed

    _, caller = make_caller(role="supervisor")
    cid = _active_contract(caller)

    def message() -> dict[str, Any]:
        return {
            "messageId": str(uuid.uuid4()),
            "principalId": str(caller.principal_id),
            "contractId": str(cid),
            "taskId": str(uuid.uuid4()),
            "taskName": "write tests",
            "success": True,
        }

    task_completed.run(message())  # warms the principal cache, as a running worker's is
    with counted_statements() as statements:
        task_completed.run(message())
    print(f"task completed: {len(statements)} statements", *statements, sep="\n  ")
    assert 0 < len(statements) <= TASK_COMPLETED_BUDGET, statements
