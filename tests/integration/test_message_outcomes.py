"""Every daemon report is accountable: refused at once when it can be judged, else findable.

The HTTP app and the API module here record what they would enqueue instead of sending it,
and the worker's tasks run in this process on what was recorded (`Task.apply`, which runs
the same trace, failure handler and dead-lettering as a worker), so each test sees exactly
one application of each message with no worker of another module in the way.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.api import ContractsAPI
from app.db import unit_of_work
from app.domain.errors import ContractNotFound, ValidationFailed
from app.domain.lifecycle import Status
from app.http import create_app
from app.models import ContractEvent, ContractWorktree, DeadLetter
from app.queues import TaskName

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

CONTRACTS = "/api/v1/contracts"
MESSAGES = "/api/v1/messages"


class Outbox:
    """A sender that keeps messages instead of publishing them, and runs them on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        self.sent.append((task, payload))
        return uuid.uuid4().hex

    def run_all(self) -> None:
        """Apply every kept report the way a worker would; follow-ups are dropped."""
        from workers import contracts as tasks

        by_name = {t.name: t for t in vars(tasks).values() if hasattr(t, "apply") and hasattr(t, "name")}
        reports = {str(n) for n in TaskName if str(n).startswith("contracts.")}
        pending, self.sent = self.sent, []
        for task, payload in pending:
            if task in reports and task in by_name:
                by_name[task].apply(args=[payload])


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def client(outbox: Outbox) -> Iterator[TestClient]:
    with TestClient(create_app(sender=outbox)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_of(resp: Any, status_code: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status_code, resp.text
    body = resp.json()["error"]
    assert body["code"] == code, body
    return dict(body)


def active_contract(api: ContractsAPI) -> uuid.UUID:
    cid = uuid.UUID(str(api.create_contract("accountable", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    return cid


def closed_contract(api: ContractsAPI, status: Status = Status.FAILED) -> uuid.UUID:
    cid = active_contract(api)
    api.change_status(cid, status, reason="closed for the test")
    return cid


# --- what the HTTP front can judge, it refuses at once ------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tasks/{task}/started", {"taskName": "late"}),
        ("/tasks/{task}/completed", {"taskName": "late", "success": True}),
        ("/worktrees", {"path": "/srv/wt/late"}),
    ],
)
def test_a_report_to_a_closed_contract_is_refused_at_once_naming_its_status(
    client: TestClient, outbox: Outbox, make_caller: Any, path: str, body: dict[str, Any]
) -> None:
    token, caller = make_caller(role="supervisor")
    cid = closed_contract(ContractsAPI(caller=caller, sender=outbox))
    outbox.sent.clear()
    resp = client.post(f"{CONTRACTS}/{cid}" + path.format(task=uuid.uuid4()), json=body, headers=auth(token))
    error = error_of(resp, 400, "VALIDATION_FAILED")
    assert error["details"]["status"] == "failed"
    assert "failed" in error["message"]
    assert outbox.sent == []


def test_a_report_to_an_unknown_contract_is_contract_not_found_at_once(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    resp = client.post(
        f"{CONTRACTS}/{uuid.uuid4()}/tasks/{uuid.uuid4()}/started",
        json={"taskName": "x"},
        headers=auth(token),
    )
    error_of(resp, 404, "CONTRACT_NOT_FOUND")
    assert outbox.sent == []


def test_a_completed_report_for_a_never_started_task_is_accepted_and_records_the_task(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    token, caller = make_caller(role="supervisor")
    cid = active_contract(ContractsAPI(caller=caller, sender=outbox))
    resp = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/completed",
        json={"taskName": "unannounced", "success": True},
        headers=auth(token),
    )
    assert resp.status_code == 202, resp.text
    outbox.run_all()
    status = client.get(f"{MESSAGES}/{resp.json()['messageId']}", headers=auth(token)).json()
    assert status["status"] == "applied", status


def test_a_completed_report_naming_another_contracts_task_is_refused_at_once(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    token, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    first, second, task = active_contract(api), active_contract(api), uuid.uuid4()
    api.report_task_started(first, task, "belongs to the first")
    outbox.run_all()
    resp = client.post(
        f"{CONTRACTS}/{second}/tasks/{task}/completed",
        json={"taskName": "stolen", "success": True},
        headers=auth(token),
    )
    assert error_of(resp, 400, "VALIDATION_FAILED")["details"]["taskId"] == str(task)


def test_the_api_module_refuses_a_closed_or_invisible_contract_like_the_http_front(
    outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    _, stranger = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    closed = closed_contract(api, Status.FAILED)
    with pytest.raises(ValidationFailed):
        api.report_worktree_created(closed, "/srv/wt/never-released")
    with pytest.raises(ValidationFailed):
        api.mark_deliverable(closed, "plan-document")
    with pytest.raises(ContractNotFound):
        ContractsAPI(caller=stranger, sender=outbox).report_task_started(
            active_contract(api), uuid.uuid4(), "x"
        )


# --- what only a worker can judge stays asynchronous, and accountable -----------------------------


def test_an_accepted_report_is_pending_then_applied_with_the_event_ids_it_produced(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    token, caller = make_caller(role="supervisor")
    cid = active_contract(ContractsAPI(caller=caller, sender=outbox))
    resp = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/started", json={"taskName": "implement"}, headers=auth(token)
    )
    message_id = resp.json()["messageId"]
    pending = client.get(f"{MESSAGES}/{message_id}", headers=auth(token)).json()
    assert pending["status"] == "pending" and pending["eventIds"] == [] and pending["error"] is None
    assert pending["contractId"] == str(cid) and pending["task"] == TaskName.TASK_STARTED

    outbox.run_all()
    applied = client.get(f"{MESSAGES}/{message_id}", headers=auth(token)).json()
    assert applied["status"] == "applied", applied
    with unit_of_work() as uow:
        spawned = uow.session.scalars(
            select(ContractEvent.id).where(
                ContractEvent.contract_id == cid, ContractEvent.type == "task_spawned"
            )
        ).all()
    assert applied["eventIds"] == list(spawned) and spawned


def test_a_report_a_worker_refuses_answers_refused_with_the_error_code_and_message(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    """The contract closes between acceptance and application: only the worker can judge."""
    token, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    cid = active_contract(api)
    message_id = api.report_worktree_created(cid, "/srv/wt/raced")
    api.change_status(cid, Status.FAILED, reason="closed while the report was queued")
    outbox.run_all()

    status = client.get(f"{MESSAGES}/{message_id}", headers=auth(token)).json()
    assert status["status"] == "refused", status
    assert status["error"]["code"] == "VALIDATION_FAILED"
    assert "failed" in status["error"]["message"]
    with unit_of_work() as uow:
        worktrees = select(ContractWorktree).where(ContractWorktree.contract_id == cid)
        assert uow.session.scalars(worktrees).all() == []


def test_the_api_module_takes_a_message_id_as_a_uuid_like_every_other_id(
    outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    sent = uuid.uuid4()
    api.report_task_started(active_contract(api), uuid.uuid4(), "mine", message_id=str(sent))
    assert api.message_status(sent).status == "pending"
    assert api.message_status(uuid.uuid4()).status == "unknown"  # not a pydantic error
    assert api.resend(sent).status == "pending"
    outbox.run_all()
    assert api.message_status(sent).status == "applied"


def test_another_principals_message_answers_unknown_exactly_like_a_missing_one(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    other_token, _ = make_caller(owner=caller.owner_id, role="user")
    message_id = ContractsAPI(caller=caller, sender=outbox).report_task_started(
        active_contract(ContractsAPI(caller=caller, sender=outbox)), uuid.uuid4(), "mine"
    )
    theirs = client.get(f"{MESSAGES}/{message_id}", headers=auth(other_token))
    missing = client.get(f"{MESSAGES}/{message_id}-nobody", headers=auth(other_token))
    assert theirs.status_code == missing.status_code == 200
    assert theirs.json() == {**missing.json(), "messageId": message_id}
    assert theirs.json()["status"] == "unknown"
    resend = client.post(f"{MESSAGES}/{message_id}/resend", headers=auth(other_token))
    assert resend.json()["status"] == "unknown"


def test_an_admin_sees_every_principals_messages(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    admin_token, _ = make_caller(role="admin")
    api = ContractsAPI(caller=caller, sender=outbox)
    message_id = api.report_task_started(active_contract(api), uuid.uuid4(), "seen by an admin")
    assert client.get(f"{MESSAGES}/{message_id}", headers=auth(admin_token)).json()["status"] == "pending"


def test_an_admin_names_the_sender_when_several_principals_used_one_message_id(
    outbox: Outbox, make_caller: Any
) -> None:
    """A message id is unique per sender: an admin's lookup never picks one of several."""
    senders = [make_caller(role="supervisor")[1] for _ in range(2)]
    _, admin = make_caller(role="admin")
    for caller in senders:
        api = ContractsAPI(caller=caller, sender=outbox)
        api.report_task_started(active_contract(api), uuid.uuid4(), "shared id", message_id="shared-1")
    as_admin = ContractsAPI(caller=admin, sender=outbox)

    with pytest.raises(ValidationFailed) as refused:
        as_admin.message_status("shared-1")
    assert refused.value.details["field"] == "principalId"
    assert sorted(refused.value.details["principalIds"]) == sorted(str(c.principal_id) for c in senders)
    assert "give principalId" in str(refused.value)
    with pytest.raises(ValidationFailed):
        as_admin.resend("shared-1")  # a resend would have sent whichever was picked

    for caller in senders:
        answer = as_admin.message_status("shared-1", principal_id=caller.principal_id)
        assert answer.status == "pending" and answer.principal_id == caller.principal_id
        as_text = as_admin.message_status("shared-1", principal_id=str(caller.principal_id))  # type: ignore[arg-type]
        assert as_text.principal_id == caller.principal_id  # as an answer's principalId reads
    with pytest.raises(ValidationFailed) as not_an_id:
        as_admin.message_status("shared-1", principal_id=5)  # type: ignore[arg-type]
    assert not_an_id.value.details["field"] == "principalId"
    outbox.sent.clear()
    resent = as_admin.resend("shared-1", principal_id=senders[1].principal_id)
    assert resent.resent and resent.principal_id == senders[1].principal_id
    assert [p["messageId"] for _, p in outbox.sent] == ["shared-1"]

    # A sender sees only its own, whatever principal it names.
    mine = ContractsAPI(caller=senders[0], sender=outbox)
    assert mine.message_status("shared-1").principal_id == senders[0].principal_id
    assert mine.message_status("shared-1", principal_id=senders[1].principal_id).status == "unknown"


def test_over_http_an_admin_gives_principal_id_for_a_message_id_several_principals_used(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    senders = [make_caller(role="supervisor")[1] for _ in range(2)]
    admin_token, _ = make_caller(role="admin")
    for caller in senders:
        api = ContractsAPI(caller=caller, sender=outbox)
        api.report_task_started(active_contract(api), uuid.uuid4(), "shared id", message_id="shared-3")

    refused = error_of(
        client.get(f"{MESSAGES}/shared-3", headers=auth(admin_token)), 400, "VALIDATION_FAILED"
    )
    assert refused["details"]["field"] == "principalId" and len(refused["details"]["principalIds"]) == 2
    error_of(client.post(f"{MESSAGES}/shared-3/resend", headers=auth(admin_token)), 400, "VALIDATION_FAILED")
    whose = str(senders[0].principal_id)
    found = client.get(f"{MESSAGES}/shared-3", params={"principalId": whose}, headers=auth(admin_token))
    assert found.status_code == 200 and found.json()["principalId"] == whose, found.text
    error_of(
        client.get(f"{MESSAGES}/shared-3", params={"principalId": "nobody"}, headers=auth(admin_token)),
        422,
        "INVALID_REQUEST",
    )


def test_a_message_id_another_sender_used_on_the_contract_is_refused_not_dropped(
    client: TestClient, outbox: Outbox, make_caller: Any
) -> None:
    """The worker claims ids per contract: the second sender's report would have been taken for
    a repeat, dropped, and its receipt marked applied. It is refused at once instead."""
    _, first = make_caller(role="supervisor")
    second_token, second = make_caller(owner=first.owner_id, role="user")
    api = ContractsAPI(caller=first, sender=outbox)
    cid = active_contract(api)
    other = active_contract(api)
    api.report_task_started(cid, uuid.uuid4(), "first sender", message_id="m-1")
    theirs = ContractsAPI(caller=second, sender=outbox)
    with pytest.raises(ValidationFailed) as refused:
        theirs.report_task_started(cid, uuid.uuid4(), "second sender", message_id="m-1")
    assert refused.value.details["field"] == "messageId" and "another sender" in str(refused.value)
    over_http = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/started",
        json={"taskName": "second sender", "messageId": "m-1"},
        headers=auth(second_token),
    )
    assert error_of(over_http, 400, "VALIDATION_FAILED")["details"]["field"] == "messageId"
    # The same id on another contract is another report; the first sender's resend still works.
    theirs.report_task_started(other, uuid.uuid4(), "elsewhere", message_id="m-1")
    assert api.resend("m-1").status == "pending"
    outbox.run_all()
    spawned = [e.payload for e in api.events(cid).events if e.type == "task_spawned"]
    assert [p["taskName"] for p in spawned] == ["first sender"], spawned
    assert theirs.message_status("m-1").status == "applied"


def test_an_admins_own_message_is_the_one_its_lookup_finds(outbox: Outbox, make_caller: Any) -> None:
    _, admin = make_caller(role="admin")
    _, other = make_caller(role="supervisor")
    for caller in (other, admin):
        api = ContractsAPI(caller=caller, sender=outbox)
        api.report_task_started(active_contract(api), uuid.uuid4(), "shared id", message_id="shared-2")
    assert (
        ContractsAPI(caller=admin, sender=outbox).message_status("shared-2").principal_id
        == admin.principal_id
    )


def test_resending_a_pending_message_sends_it_again_with_the_same_id_and_it_applies_once(
    outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    cid = active_contract(api)
    message_id = api.report_task_completed(cid, uuid.uuid4(), "lost by the broker", success=True)
    outbox.sent.clear()  # the broker lost it

    answer = api.resend(message_id)
    assert answer.status == "pending" and answer.resent
    assert [p["messageId"] for _, p in outbox.sent] == [message_id]
    outbox.sent.append(outbox.sent[0])  # and the lost copy turns up after all
    outbox.run_all()
    assert api.message_status(message_id).status == "applied"
    assert [e.type for e in api.events(cid).events].count("task_completed") == 1


def test_resending_an_applied_message_changes_nothing_and_answers_its_status(
    outbox: Outbox, make_caller: Any
) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    cid = active_contract(api)
    task = uuid.uuid4()
    message_id = api.report_task_completed(cid, task, "once", success=True)
    outbox.run_all()
    applied = api.message_status(message_id)

    again = api.resend(message_id)
    assert again.status == "applied" and not again.resent and again.event_ids == applied.event_ids
    assert api.report_task_completed(cid, task, "once", success=True, message_id=message_id) == message_id
    assert outbox.sent == []
    assert api.message_status(message_id) == applied


# --- refusals are dead letters a person can match to the sender, logged without noise ---------------


def test_dead_letters_list_shows_the_senders_message_id(outbox: Outbox, make_caller: Any) -> None:
    from app.cli.dead_letters import summary

    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    cid = active_contract(api)
    message_id = api.report_worktree_created(cid, "/srv/wt/refused", message_id=f"daemon-{uuid.uuid4()}")
    api.change_status(cid, Status.FAILED, reason="closed")
    outbox.run_all()
    with unit_of_work() as uow:
        rows = [summary(r) for r in uow.session.scalars(select(DeadLetter)).all()]
    assert message_id in [r["senderMessageId"] for r in rows]


def test_an_expected_refusal_is_logged_as_a_warning_without_a_traceback(
    outbox: Outbox, make_caller: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=outbox)
    cid = active_contract(api)
    message_id = api.report_worktree_created(cid, "/srv/wt/quiet")
    api.change_status(cid, Status.FAILED, reason="closed")
    with caplog.at_level(logging.INFO):
        outbox.run_all()
    assert any("VALIDATION_FAILED" in r.getMessage() for r in caplog.records), caplog.text
    assert all(r.levelno <= logging.WARNING for r in caplog.records), caplog.text
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in caplog.records), caplog.text
    assert any(r.levelno == logging.WARNING and message_id in r.getMessage() for r in caplog.records)
