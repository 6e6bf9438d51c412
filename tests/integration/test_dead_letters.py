"""Bad messages are kept, not lost: they land in `dead_letters` and the worker keeps going."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from kombu import Producer
from sqlalchemy import select

from app.api import ContractsAPI
from app.broker import send_task as send
from app.db import unit_of_work
from app.domain.errors import ContractNotFound
from app.models import DeadLetter
from app.queues import TaskName
from tests.integration.helpers import count_events, message_processed, new_contract
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for
from workers.celery_app import celery_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(tmp_path_factory.mktemp("dl-workers"), queues="contracts")
    w.wait_ready()
    yield w
    w.stop()


def dead_letter_where(**criteria: object) -> DeadLetter | None:
    with unit_of_work() as uow:
        query = select(DeadLetter)
        for column, value in criteria.items():
            query = query.where(getattr(DeadLetter, column) == value)
        return uow.session.scalars(query).first()


def publish_raw(body: bytes, headers: dict[str, object]) -> None:
    with celery_app.connection_for_write() as conn:
        Producer(conn).publish(
            body,
            exchange="makima",
            routing_key="contracts",
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
        )


def test_an_undecodable_message_is_parked_and_the_worker_keeps_consuming(
    worker: WorkerProcess, make_caller
) -> None:
    poison_id = str(uuid.uuid4())
    publish_raw(b"\xff{not json", {"task": "contracts.task_completed", "id": poison_id, "lang": "py"})
    row = wait_for(lambda: dead_letter_where(message_id=poison_id), what="poison parked")
    assert "does not decode" in row.error
    assert row.raw_body.endswith("{not json") and row.queue == "contracts"

    token, _ = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api)
    task = uuid.uuid4()
    done = api.report_task_completed(cid, task, "after the poison", success=True)
    wait_for(lambda: message_processed(done), what="next message processed")
    assert worker.proc.poll() is None


def test_a_message_for_no_known_task_is_parked(worker: WorkerProcess) -> None:
    task_id = str(uuid.uuid4())
    send_id = celery_app.send_task(
        "contracts.no_such_task", args=[{"x": 1}], task_id=task_id, queue="contracts"
    )
    assert send_id.id == task_id
    row = wait_for(lambda: dead_letter_where(message_id=task_id), what="unknown task parked")
    assert "no such task" in row.error and row.task_name == "contracts.no_such_task"


def test_a_message_that_fails_validation_is_parked_with_the_reason_and_not_retried(
    worker: WorkerProcess, make_caller
) -> None:
    _, caller = make_caller()
    task_id = send(
        "contracts.task_completed",
        {"messageId": "m-1", "principalId": str(caller.principal_id), "contractId": "not-a-uuid"},
    )
    row = wait_for(lambda: dead_letter_where(message_id=task_id), what="invalid message parked")
    assert "TaskCompleted message is not valid" in row.error
    assert "contractId" in row.error and "taskId" in row.error
    assert row.attempts == 1
    assert json.loads(row.raw_body)["args"][0]["contractId"] == "not-a-uuid"


def test_a_message_from_another_owner_is_parked_not_applied(worker: WorkerProcess, make_caller) -> None:
    owner_token, _ = make_caller()
    _, stranger = make_caller()
    cid = new_contract(ContractsAPI(owner_token))
    intruder = ContractsAPI(caller=stranger)
    task = uuid.uuid4()
    with pytest.raises(ContractNotFound):  # the API module refuses it at once...
        intruder.report_task_completed(cid, task, "not yours", success=True)
    # ...and a worker refuses it too when it reaches the broker some other way.
    message_id = str(uuid.uuid4())
    send(
        TaskName.TASK_COMPLETED,
        {
            "messageId": message_id,
            "principalId": str(stranger.principal_id),
            "contractId": str(cid),
            "taskId": str(task),
            "taskName": "not yours",
            "success": True,
        },
    )
    row = wait_for(
        lambda: next(
            (d for d in _all_dead_letters() if message_id in d.raw_body),
            None,
        ),
        what="cross-owner message parked",
    )
    assert row.error.startswith("CONTRACT_NOT_FOUND")
    assert count_events(cid, "task_completed") == 0
    refused = intruder.message_status(message_id)
    assert refused.status == "refused" and refused.error is not None
    assert refused.error.code == "CONTRACT_NOT_FOUND"


def test_a_report_the_worker_refuses_keeps_its_own_error_code(worker: WorkerProcess, make_caller) -> None:
    """An error whose constructor takes more than a message (INVALID_DELIVERABLE here) crosses
    Celery's failure handling as itself: its code reaches the message status and the dead
    letter, not the family's CONTRACT_ERROR."""
    token, _ = make_caller()
    api = ContractsAPI(token)
    cid = new_contract(api)
    message_id = api.mark_deliverable(cid, "pull-request")  # not a deliverable of the plan phase
    row = wait_for(
        lambda: next((d for d in _all_dead_letters() if message_id in d.raw_body), None),
        what="refused report parked",
    )
    assert row.error.startswith("INVALID_DELIVERABLE"), row.error
    refused = api.message_status(message_id)
    assert refused.status == "refused" and refused.error is not None
    assert refused.error.code == "INVALID_DELIVERABLE", refused.error


def _all_dead_letters() -> list[DeadLetter]:
    with unit_of_work() as uow:
        return list(uow.session.scalars(select(DeadLetter)))


def test_a_dead_letter_is_held_in_redis_while_the_database_is_down_and_drained_later() -> None:
    from sqlalchemy import create_engine

    from app.dead_letters import RejectedMessage
    from tests.isolation import PG_ADMIN_URL
    from workers.dead_letter import drain_pending, park

    # A database that does not exist: every connection attempt really fails.
    unreachable = create_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/makima_absent_{uuid.uuid4().hex[:8]}")
    message_id = f"outage-{uuid.uuid4()}"
    msg = RejectedMessage(
        queue="contracts",
        task_name="contracts.task_completed",
        message_id=message_id,
        headers={"task": "contracts.task_completed", "id": message_id},
        raw_body='{"args": [], "kwargs": {}}',
        content_type="application/json",
        content_encoding="utf-8",
        error="ValidationFailed: example",
    )
    park(msg, engine=unreachable)
    assert dead_letter_where(message_id=message_id) is None

    assert drain_pending() >= 1
    row = dead_letter_where(message_id=message_id)
    assert row is not None and row.error == "ValidationFailed: example"
    assert drain_pending() == 0
