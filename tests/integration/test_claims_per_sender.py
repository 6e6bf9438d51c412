"""A message id is its sender's: the worker's once-only claim names the sender.

Each daemon chooses its own message ids, so two senders may use one id on one contract, and
they are two reports. Acceptance refuses a report under an id another sender used on the
contract, but a report reaches a worker by other routes too (a replayed dead letter, a
resend, a message queued before that refusal), so here every report is delivered straight to
the worker's task in this process (`Task.run`: the worker's own code, no acceptance, no
broker), as such a route delivers it. Every kind of report that claims its message id is
checked, and a task-completed report on both of its paths: the Core path a worker takes when
the sender is in its principal cache, and the unit of work it takes otherwise.

- Two senders, one message id, one contract: both reports are applied, each receipt `applied`
  with its own event.
- The same sender's report delivered again: nothing more (applied once).
- A claim made before claims named a sender (migration 0017 keeps such a claim under the nil
  principal, `CLAIMED_BEFORE_SENDERS`) still stops every sender of its id on its contract:
  that message was applied, by a sender no one can tell any more.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Task
from sqlalchemy import select

from app.api import ContractsAPI
from app.auth import Caller, check_principal, forget_cached_principals
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.domain.records import EventType
from app.models import CLAIMED_BEFORE_SENDERS, ContractEvent, MessageOutcome, ProcessedMessage, utcnow
from tests.integration.helpers import no_send
from workers.contracts import (
    mark_deliverable,
    task_completed,
    task_started,
    worktree_created,
    worktree_removed,
)

pytestmark = pytest.mark.integration

MESSAGE_ID = "daemon-7:report-1"

# Each kind of report that claims its message id: its worker task, the fields of the n-th
# sender's report (two different reports), and the event that shows it was applied.
REPORTS: dict[str, tuple[Task, Callable[[int], dict[str, Any]], EventType]] = {
    "task started": (
        task_started,
        lambda n: {"taskId": str(uuid.uuid4()), "taskName": f"build {n}", "isSupervisor": False},
        EventType.TASK_SPAWNED,
    ),
    "task completed": (
        task_completed,
        lambda n: {"taskId": str(uuid.uuid4()), "taskName": f"build {n}", "success": True},
        EventType.TASK_COMPLETED,
    ),
    "deliverable marked": (
        mark_deliverable,
        lambda n: {"deliverableId": ("plan-document", "task-breakdown")[n]},
        EventType.DELIVERABLE_COMPLETED,
    ),
    "worktree created": (worktree_created, lambda n: {"path": f"/srv/wt/{n}"}, EventType.WORKTREE_CREATED),
    "worktree removed": (worktree_removed, lambda n: {"path": f"/srv/wt/{n}"}, EventType.WORKTREE_REMOVED),
}

# (report, the worker's path): a task-completed report takes the Core path when its sender is
# in the worker's principal cache, the unit of work otherwise; every other report, the unit of work.
CASES = [*((kind, "unit of work") for kind in REPORTS), ("task completed", "core")]


def deliver(path: str, kind: str, sender: Caller, contract_id: uuid.UUID, fields: dict[str, Any]) -> None:
    """Run the report's worker task as a worker runs a delivered message, on the path named."""
    if path == "core":
        with unit_of_work() as uow:  # as a running worker's cache holds a sender it has heard from
            check_principal(uow.session, sender.principal_id)
    else:
        forget_cached_principals()
    worker_task = REPORTS[kind][0]
    worker_task.run(
        {
            "messageId": MESSAGE_ID,
            "principalId": str(sender.principal_id),
            "contractId": str(contract_id),
            **fields,
        }
    )


def events_of(contract_id: uuid.UUID, type_: EventType) -> list[int]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(ContractEvent.id).where(
                    ContractEvent.contract_id == contract_id, ContractEvent.type == type_.value
                )
            )
        )


def receipts(contract_id: uuid.UUID) -> dict[uuid.UUID, tuple[str, list[int]]]:
    """Each sender's receipt for MESSAGE_ID on the contract: (status, event ids)."""
    with unit_of_work() as uow:
        rows = uow.session.scalars(
            select(MessageOutcome).where(
                MessageOutcome.contract_id == contract_id, MessageOutcome.message_id == MESSAGE_ID
            )
        )
        return {row.principal_id: (row.status, list(row.event_ids or [])) for row in rows}


def claims(contract_id: uuid.UUID) -> set[tuple[uuid.UUID, str]]:
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(ProcessedMessage.principal_id, ProcessedMessage.message_id).where(
                ProcessedMessage.contract_id == contract_id
            )
        )
        return {(principal_id, message_id) for principal_id, message_id in rows}


@pytest.fixture
def two_senders(make_caller: Any) -> tuple[Caller, Caller, uuid.UUID]:
    """Two principals of one owner (two daemons, say) and an active contract of that owner."""
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    _, first = make_caller(owner=owner, role="supervisor")
    _, second = make_caller(owner=owner, role="supervisor")
    api = ContractsAPI(caller=first, sender=no_send)
    contract_id = uuid.UUID(str(api.create_contract("two senders", "simple").id))
    api.change_status(contract_id, Status.ACTIVE)
    return first, second, contract_id


@pytest.mark.parametrize(("kind", "path"), CASES)
def test_two_senders_reports_under_one_message_id_are_both_applied_each_once(
    two_senders: tuple[Caller, Caller, uuid.UUID], kind: str, path: str
) -> None:
    first, second, contract_id = two_senders
    fields, event = REPORTS[kind][1], REPORTS[kind][2]
    reports = {first.principal_id: fields(0), second.principal_id: fields(1)}
    for sender in (first, second):
        deliver(path, kind, sender, contract_id, reports[sender.principal_id])

    applied = events_of(contract_id, event)
    assert len(applied) == 2, f"{kind}: each sender's report is applied"
    assert receipts(contract_id) == {
        first.principal_id: ("applied", [applied[0]]),
        second.principal_id: ("applied", [applied[1]]),
    }
    assert claims(contract_id) == {(first.principal_id, MESSAGE_ID), (second.principal_id, MESSAGE_ID)}

    # Each delivered again (a redelivery, a resend): nothing more, the receipts unchanged.
    for sender in (second, first):
        deliver(path, kind, sender, contract_id, reports[sender.principal_id])
    assert events_of(contract_id, event) == applied
    assert receipts(contract_id) == {
        first.principal_id: ("applied", [applied[0]]),
        second.principal_id: ("applied", [applied[1]]),
    }


@pytest.mark.parametrize(("kind", "path"), CASES)
def test_a_claim_from_before_claims_named_a_sender_stops_every_sender_of_its_id(
    two_senders: tuple[Caller, Caller, uuid.UUID], kind: str, path: str
) -> None:
    first, second, contract_id = two_senders
    fields, event = REPORTS[kind][1], REPORTS[kind][2]
    with unit_of_work() as uow:  # what migration 0017 left of a claim whose sender it could not tell
        uow.session.add(
            ProcessedMessage(
                contract_id=contract_id,
                principal_id=CLAIMED_BEFORE_SENDERS,
                message_id=MESSAGE_ID,
                kind="task_completed",
                processed_at=utcnow(),
            )
        )
    for n, sender in enumerate((first, second)):
        deliver(path, kind, sender, contract_id, fields(n))

    assert events_of(contract_id, event) == [], f"{kind}: the old message is not applied again"
    assert claims(contract_id) == {(CLAIMED_BEFORE_SENDERS, MESSAGE_ID)}
    # A new id is each sender's own, as every id claimed since.
    deliver(path, kind, first, contract_id, {**fields(0), "messageId": "daemon-7:report-2"})
    assert len(events_of(contract_id, event)) == 1
