"""A task report never takes another contract's supervisor task id.

A supervisor's task id belongs to the contract whose `supervisors` row holds it (its first
heartbeat's). Task reports once checked only the ordinary tasks (`contract_tasks`), so a
report on contract B naming A's supervisor task id was answered 202 and applied (a
`task_spawned` on B), and from then on A's supervisor was refused its own heartbeats and state
saves. Now the fronts refuse such a report at once (HTTP and the API module), a worker refuses
and parks one that reached the broker anyway, and A's supervisor goes on: across owners (the
holder never named) and within one owner (told why). Real PostgreSQL, Redis and a real worker.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.api import ContractsAPI
from app.broker import send_task
from app.db import unit_of_work
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.http import create_app
from app.models import ContractEvent, ContractTask, DeadLetter, Supervisor
from app.queues import TaskName
from tests.integration.helpers import event_types
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

CONTRACTS = "/api/v1/contracts"
STRANGER = "cannot be used on this contract"
EXPLAINED = "is the supervisor of another contract"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("reports-vs-supervisors"), queues="heartbeats,contracts")
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def supervisor_activity(task: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    with unit_of_work() as uow:
        row = uow.session.get(Supervisor, task)
        return None if row is None else (row.contract_id, row.current_activity)


def task_row(task: uuid.UUID) -> uuid.UUID | None:
    """The contract an ordinary task row with this id belongs to (None: there is none)."""
    with unit_of_work() as uow:
        return uow.session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task))


def heartbeating_supervisor(api: ContractsAPI) -> tuple[uuid.UUID, uuid.UUID]:
    """A contract of `api`'s owner whose supervisor has heartbeated (its `supervisors` row
    exists) and was never reported started: the attack's starting point."""
    cid = uuid.UUID(str(api.create_contract("holder", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    task = uuid.uuid4()
    api.send_heartbeat(cid, task, "working", "plan", current_activity="first")
    api.flush()
    wait_for(lambda: supervisor_activity(task) == (cid, "first"), what="the supervisor's first heartbeat")
    return cid, task


def assert_supervisor_keeps_working(api: ContractsAPI, cid: uuid.UUID, task: uuid.UUID, step: str) -> None:
    """Its heartbeats are stored and its state saves applied, under its own task id."""
    api.send_heartbeat(cid, task, "working", "plan", current_activity=step)
    api.flush()
    wait_for(lambda: supervisor_activity(task) == (cid, step), what=f"heartbeat {step!r} stored")
    saved = api.save_supervisor_state(cid, task, state_version=1, state="working", phase="plan")
    assert saved.applied and saved.task_id == task
    assert task_row(task) is None


def other_contract(api: ContractsAPI) -> uuid.UUID:
    cid = uuid.UUID(str(api.create_contract("taker", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    return cid


REPORTS = {
    "started": ("started", {"taskName": "w"}),
    "started as supervisor": ("started", {"taskName": "supervisor", "isSupervisor": True}),
    "completed": ("completed", {"taskName": "w", "success": True}),
}


def test_the_http_front_refuses_another_owners_supervisor_task_id_without_naming_it(
    worker: WorkerProcess, client: TestClient, make_caller: Any
) -> None:
    alice_token, _ = make_caller(role="supervisor")
    bob_token, _ = make_caller(role="supervisor")
    alice, bob = ContractsAPI(alice_token), ContractsAPI(bob_token)
    theirs, task = heartbeating_supervisor(alice)
    mine = other_contract(bob)

    for what, (kind, body) in REPORTS.items():
        resp = client.post(
            f"{CONTRACTS}/{mine}/tasks/{task}/{kind}",
            json=body,
            headers={"Authorization": f"Bearer {bob_token}"},
        )
        assert resp.status_code == 400, (what, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "VALIDATION_FAILED", (what, error)
        assert f"Task {task} {STRANGER}" in error["message"], (what, error)
        assert "supervisor" not in error["message"] and "another contract" not in error["message"], what
        assert (error["details"]["field"], error["details"]["taskId"]) == ("taskId", str(task)), (what, error)

    assert "task_spawned" not in event_types(mine)
    assert_supervisor_keeps_working(alice, theirs, task, "after the refused reports")


def test_the_api_module_refuses_the_owners_own_supervisor_task_id_on_another_contract_saying_why(
    worker: WorkerProcess, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    holder, task = heartbeating_supervisor(api)
    other = other_contract(api)

    attempts = {
        "started": lambda: api.report_task_started(other, task, "w"),
        "started as supervisor": lambda: api.report_task_started(other, task, "s", is_supervisor=True),
        "completed": lambda: api.report_task_completed(other, task, "w", success=True),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ValidationFailed) as refused:
            attempt()
        assert refused.value.message.startswith(f"Task {task} {EXPLAINED}"), (what, refused.value.message)
        details = refused.value.details
        assert (details["field"], details["taskId"]) == ("taskId", str(task)), what

    assert "task_spawned" not in event_types(other)
    assert_supervisor_keeps_working(api, holder, task, "after the refused reports")


def events_naming(contract_id: uuid.UUID, task: uuid.UUID) -> list[str]:
    with unit_of_work() as uow:
        events = uow.session.scalars(select(ContractEvent).where(ContractEvent.contract_id == contract_id))
        return [e.type for e in events if str(task) in str(e.payload)]


def refused_letter(message_id: str) -> DeadLetter | None:
    with unit_of_work() as uow:
        letters = uow.session.scalars(select(DeadLetter).where(DeadLetter.raw_body.contains(message_id)))
        return letters.first()


@pytest.mark.parametrize("same_owner", [False, True], ids=["another owner", "the same owner"])
@pytest.mark.parametrize(
    ("task_name", "fields"),
    [
        (TaskName.TASK_STARTED, {"taskName": "w", "isSupervisor": False}),
        (TaskName.TASK_STARTED, {"taskName": "supervisor", "isSupervisor": True}),
        (TaskName.TASK_COMPLETED, {"taskName": "w", "success": True}),
    ],
    ids=["started", "started as supervisor", "completed"],
)
def test_a_worker_refuses_and_parks_a_report_naming_another_contracts_supervisor_that_got_past_the_fronts(
    worker: WorkerProcess, make_caller: Any, same_owner: bool, task_name: TaskName, fields: dict[str, Any]
) -> None:
    owner_token, owner = make_caller(role="supervisor")
    sender_token, sender = (owner_token, owner) if same_owner else make_caller(role="supervisor")
    holder_api, sender_api = ContractsAPI(owner_token), ContractsAPI(sender_token)
    holder, task = heartbeating_supervisor(holder_api)
    other = other_contract(sender_api)
    # A report of the sender's applied just before: its principal is in the worker's cache, so
    # a task-completed report takes its Core path (`agent_reports.task_completed_now`).
    warm = sender_api.report_task_started(other, uuid.uuid4(), "warm-up")
    wait_for(lambda: sender_api.message_status(warm).status == "applied", what="the warm-up report")

    # Straight onto the broker, as a message sent before the fronts checked this would be.
    message_id = f"past-the-front-{uuid.uuid4()}"
    send_task(
        task_name.value,
        {
            "messageId": message_id,
            "principalId": str(sender.principal_id),
            "contractId": str(other),
            "taskId": str(task),
            **fields,
        },
    )
    letter = wait_for(lambda: refused_letter(message_id), what="the report parked as a dead letter")
    assert letter.task_name == task_name.value

    status = sender_api.message_status(message_id)
    assert status.status == "refused" and status.error is not None
    assert status.error.code == "VALIDATION_FAILED"
    expected = f"Task {task} {EXPLAINED}" if same_owner else f"Task {task} {STRANGER}"
    assert status.error.message.startswith(expected), status.error.message
    assert events_naming(other, task) == []
    assert_supervisor_keeps_working(holder_api, holder, task, "after the parked report")
