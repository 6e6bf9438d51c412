"""The completion flow driven only by daemon messages, through real Celery workers.

Every test here talks to the real PostgreSQL and Redis and to `celery worker` processes
started for the test: no eager mode, no in-memory broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.api import ContractsAPI
from app.broker import send_task
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.models import DaemonCommand
from app.queues import TaskName
from tests.integration.helpers import contract_row, count_events, event_types, message_processed, new_contract
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(tmp_path_factory.mktemp("workers"), concurrency=2)
    w.wait_ready()
    yield w
    w.stop()


def test_simple_contract_runs_plan_to_completed_on_messages_alone(worker: WorkerProcess, make_caller) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = new_contract(api)

    api.mark_deliverable(cid, "plan-document")
    wait_for(lambda: contract_row(cid).phase == "execute", what="auto-advance to execute")

    task = uuid.uuid4()
    api.report_task_started(cid, task, "implement")
    api.mark_deliverable(cid, "pull-request")
    done = api.report_task_completed(cid, task, "implement", success=True)
    wait_for(lambda: message_processed(done), what="task completed processed")
    wait_for(lambda: contract_row(cid).status == Status.COMPLETED.value, timeout=30, what="completed")

    types = event_types(cid)
    assert (
        types.index("phase_changed") < types.index("completion_detected") < types.index("completion_cleanup")
    )
    row = contract_row(cid)
    assert row.phase == "execute" and row.version == 2 and row.completion_detected_at is not None
    with unit_of_work() as uow:
        commands = uow.session.scalars(
            select(DaemonCommand.command).where(DaemonCommand.contract_id == cid)
        ).all()
    assert commands == ["stop_supervisor"]


def test_phase_guard_holds_auto_advance_until_a_confirmed_phase_change(
    worker: WorkerProcess, make_caller
) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = new_contract(api, phase_guard=True)

    api.mark_deliverable(cid, "plan-document")
    wait_for(
        lambda: contract_row(cid).status == Status.WAITING_FOR_INPUT.value, what="waiting for confirmation"
    )
    row = contract_row(cid)
    assert (row.phase, row.waiting_for, row.version) == ("plan", "phase_confirmation", 1)

    person, _ = make_caller(owner=api.caller.owner_id)  # only a person may confirm
    ContractsAPI(person).change_phase(cid, "execute", expected_version=1, confirmed=True)
    row = contract_row(cid)
    assert (row.phase, row.status, row.waiting_for, row.version) == ("execute", "active", None, 2)

    task = uuid.uuid4()
    api.report_task_started(cid, task, "implement")
    api.mark_deliverable(cid, "pull-request")
    api.report_task_completed(cid, task, "implement", success=True)
    wait_for(lambda: contract_row(cid).status == Status.COMPLETED.value, timeout=30, what="completed")


def test_auto_complete_off_stops_auto_advance_until_turned_back_on(
    worker: WorkerProcess, make_caller
) -> None:
    token, _ = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api, auto_complete_enabled=False)

    marked = api.mark_deliverable(cid, "plan-document")
    wait_for(lambda: message_processed(marked), what="deliverable processed")
    wait_for(lambda: "phase_ready" in event_types(cid), what="phase_ready notice")
    assert contract_row(cid).phase == "plan"
    assert api.phase_readiness(cid).ready is True

    api.set_auto_complete(cid, True)
    wait_for(lambda: contract_row(cid).phase == "execute", what="advance after re-enabling")


def test_the_same_message_delivered_twice_changes_state_once(worker: WorkerProcess, make_caller) -> None:
    """Two deliveries of one message id, naming different tasks so that only the message-id
    claim (not the task's own done state) can stop the second from taking effect."""
    token, _ = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api)

    def finished_runs() -> int:
        return sum(
            1
            for line in worker.log().splitlines()
            if "contracts.task_completed[" in line and "succeeded" in line
        )

    before = finished_runs()
    message_id = f"done-{uuid.uuid4()}"
    api.report_task_completed(cid, uuid.uuid4(), "first copy", success=True, message_id=message_id)
    # The API module refuses to reuse an id for a different report, so the second copy goes
    # to the broker directly, as a duplicated delivery would arrive.
    send_task(
        TaskName.TASK_COMPLETED,
        {
            "messageId": message_id,
            "principalId": str(api.caller.principal_id),
            "contractId": str(cid),
            "taskId": str(uuid.uuid4()),
            "taskName": "second copy",
            "success": True,
        },
    )
    wait_for(lambda: finished_runs() >= before + 2, what="both deliveries handled")
    assert count_events(cid, "task_completed") == 1


def test_two_workers_finishing_the_last_two_tasks_advance_the_phase_once(
    tmp_path: Path, worker: WorkerProcess, make_caller
) -> None:
    second = start_worker(tmp_path, concurrency=2)
    second.wait_ready()
    try:
        token, _ = make_caller()
        api = ContractsAPI(token)
        config = {
            "phases": [
                {
                    "id": "build",
                    "deliverables": [],
                    "gate": {"requiredTasks": {"kind": "all_complete"}},
                },
                {"id": "ship", "deliverables": [{"id": "release"}]},
            ]
        }
        for _round in range(3):
            cid = new_contract(api, name="race", contract_type="custom", phase_config=config)
            tasks = [uuid.uuid4(), uuid.uuid4()]
            for t in tasks:
                api.report_task_started(cid, t, f"part-{t}")
            wait_for(lambda cid=cid: count_events(cid, "task_spawned") == 3, what="tasks spawned")
            ids = [api.report_task_completed(cid, t, f"part-{t}", success=True) for t in tasks]
            wait_for(lambda ids=ids: all(message_processed(i) for i in ids), what="both completions")
            wait_for(lambda cid=cid: contract_row(cid).phase == "ship", what="advanced")
            assert count_events(cid, "phase_changed") == 1
            assert contract_row(cid).version == 2
    finally:
        second.stop()


def test_a_requested_completion_check_advances_a_contract_whose_gate_is_met(
    worker: WorkerProcess, make_caller
) -> None:
    token, caller = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api)
    # Mark without enqueueing the follow-up, as if that message had been lost.
    ContractsAPI(caller=caller, sender=lambda *_: "").complete_deliverable(cid, "plan-document")
    assert contract_row(cid).phase == "plan"
    api.request_completion_check(cid)
    wait_for(lambda: contract_row(cid).phase == "execute", what="advanced by the requested check")


def test_a_follow_up_whose_send_failed_is_relayed_from_the_outbox(worker: WorkerProcess, make_caller) -> None:
    from app.db import get_engine
    from app.outbox import relay_outbox

    token, caller = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api)

    def broker_down(*_: object) -> str:
        raise ConnectionError("broker unreachable")

    # The caller's change commits and answers normally although the broker is down.
    answer = ContractsAPI(caller=caller, sender=broker_down).complete_deliverable(cid, "plan-document")
    assert answer.already_complete is False
    assert contract_row(cid).phase == "plan"

    assert relay_outbox(get_engine(), older_than_seconds=0) >= 1
    wait_for(lambda: contract_row(cid).phase == "execute", what="advanced by the relayed follow-up")
    assert relay_outbox(get_engine(), older_than_seconds=0) == 0
