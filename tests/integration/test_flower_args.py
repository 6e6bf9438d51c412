"""What Flower shows as a task's argument: the one payload the API module sends, with the
contract, message and principal ids, never the caller's token (README "Flower")."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from app.api import ContractsAPI
from app.domain.lifecycle import Status
from app.queues import TaskName

pytestmark = pytest.mark.integration


def test_task_payloads_carry_the_principal_and_never_the_token(make_caller: Any) -> None:
    token, caller = make_caller()
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        sent.append((task, payload))
        return uuid.uuid4().hex

    api = ContractsAPI(token, sender=record)
    cid = api.create_contract("flower args", "simple", auto_complete_enabled=False).id
    api.change_status(cid, Status.ACTIVE)
    task = uuid.uuid4()
    api.report_task_started(cid, task, "write tests")
    api.report_task_completed(cid, task, "write tests", success=True)
    api.mark_deliverable(cid, "plan")
    api.report_worktree_created(cid, "/tmp/wt")
    api.request_completion_check(cid)

    reports = [(t, p) for t, p in sent if t.startswith("contracts.") and "principalId" in p]
    assert {t for t, _ in reports} >= {
        TaskName.TASK_STARTED,
        TaskName.TASK_COMPLETED,
        TaskName.MARK_DELIVERABLE,
        TaskName.WORKTREE_CREATED,
        TaskName.CHECK_COMPLETION,
    }
    for _, payload in reports:
        assert payload["principalId"] == str(caller.principal_id)
        assert payload["contractId"] == str(cid)
    for name, payload in sent:
        text = json.dumps(payload)
        assert token not in text and "mk_" not in text, (name, payload)
        assert not {"token", "authorization"} & {k.lower() for k in payload}, (name, payload)
