"""What an attacker found, each now refused in the error shape (every test seen failing first).

- A message id names one report: reusing it for a different report is refused, not silently
  dropped or misreported as applied.
- A message id must be servable back by URL (`GET /api/v1/messages/{messageId}`).
- A task id names one task: `started` with another contract's task id is refused.
- Decisions a person was asked for (confirm or reject a completion, answer or set aside a
  wait) are refused to a supervisor; a supervisor may still report failure.
- A page of contracts leaves out each contract's own phaseConfig (up to 1 MiB each).
- Settings of a closed contract are not changed; HEAD /healthz answers.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from app.api import ContractsAPI
from app.http import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

CONTRACTS = "/api/v1/contracts"


def _no_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    return "kept"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(sender=_no_send), raise_server_exceptions=False) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_contract(client: TestClient, token: str, **body: Any) -> str:
    resp = client.post(
        CONTRACTS, json={"name": "attack", "contractType": "simple", **body}, headers=auth(token)
    )
    assert resp.status_code == 201, resp.text
    cid = str(resp.json()["id"])
    assert (
        client.post(
            f"{CONTRACTS}/{cid}/status", json={"targetStatus": "active"}, headers=auth(token)
        ).status_code
        == 200
    )
    return cid


def test_a_message_id_reused_for_another_report_is_refused(client: TestClient, make_caller: Any) -> None:
    token, _ = make_caller(role="supervisor")
    cid, other = new_contract(client, token), new_contract(client, token)
    task = str(uuid.uuid4())
    first = client.post(
        f"{CONTRACTS}/{cid}/tasks/{task}/started",
        json={"taskName": "w", "messageId": "dup-1"},
        headers=auth(token),
    )
    assert first.status_code == 202, first.text
    same_again = client.post(
        f"{CONTRACTS}/{cid}/tasks/{task}/started",
        json={"taskName": "w", "messageId": "dup-1"},
        headers=auth(token),
    )
    assert same_again.status_code == 202  # the same report resent: fine
    for path, body in [
        (f"{cid}/tasks/{task}/completed", {"taskName": "w", "success": True, "messageId": "dup-1"}),
        (f"{other}/tasks/{uuid.uuid4()}/started", {"taskName": "w", "messageId": "dup-1"}),
    ]:
        resp = client.post(f"{CONTRACTS}/{path}", json=body, headers=auth(token))
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "VALIDATION_FAILED" and "already used" in error["message"]


@pytest.mark.parametrize("message_id", ["a/b", " ", "tab\there", "x" * 201])
def test_a_message_id_that_could_not_be_asked_for_by_url_is_refused(
    client: TestClient, make_caller: Any, message_id: str
) -> None:
    token, _ = make_caller(role="supervisor")
    cid = new_contract(client, token)
    resp = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/started",
        json={"taskName": "w", "messageId": message_id},
        headers=auth(token),
    )
    assert resp.status_code in (400, 422), resp.text
    assert resp.json()["error"]["code"] in ("VALIDATION_FAILED", "INVALID_REQUEST")


def test_started_with_another_contracts_task_id_is_refused(client: TestClient, make_caller: Any) -> None:
    token, _ = make_caller(role="supervisor")
    first, second = new_contract(client, token), new_contract(client, token)
    task = str(uuid.uuid4())
    api = ContractsAPI(token, sender=_no_send)
    # Record the task on the first contract the way a worker would, in process.
    from app.agent_reports import record_task_started
    from app.db import unit_of_work
    from app.models import utcnow

    with unit_of_work() as uow:
        record_task_started(
            uow,
            api.caller,
            uuid.UUID(first),
            task_id=uuid.UUID(task),
            task_name="w",
            is_supervisor=False,
            now=utcnow(),
        )
    resp = client.post(
        f"{CONTRACTS}/{second}/tasks/{task}/started", json={"taskName": "w"}, headers=auth(token)
    )
    assert resp.status_code == 400, resp.text
    assert "another contract" in resp.json()["error"]["message"]


def completing(client: TestClient, token: str) -> str:
    cid = new_contract(client, token)
    for deliverable in ("plan-document", "pull-request"):
        if deliverable == "pull-request":
            resp = client.post(f"{CONTRACTS}/{cid}/phase", json={"phase": "execute"}, headers=auth(token))
            assert resp.status_code == 200, resp.text
        resp = client.post(f"{CONTRACTS}/{cid}/deliverables/{deliverable}/complete", headers=auth(token))
        assert resp.status_code == 200, resp.text
    resp = client.post(f"{CONTRACTS}/{cid}/status", json={"targetStatus": "completing"}, headers=auth(token))
    assert resp.status_code == 200, resp.text
    return cid


@pytest.mark.parametrize("target", ["completed", "active"])
def test_a_supervisor_cannot_decide_a_completion(client: TestClient, make_caller: Any, target: str) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    person, _ = make_caller(owner)
    supervisor, _ = make_caller(owner, role="supervisor")
    cid = completing(client, person)
    resp = client.post(f"{CONTRACTS}/{cid}/status", json={"targetStatus": target}, headers=auth(supervisor))
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "FORBIDDEN"
    failed = client.post(
        f"{CONTRACTS}/{cid}/status",
        json={"targetStatus": "failed", "reason": "disk gone"},
        headers=auth(supervisor),
    )
    assert failed.status_code == 200, failed.text  # failure is a fact, not a decision


@pytest.mark.parametrize("target", ["active", "paused"])
def test_a_supervisor_cannot_set_aside_what_a_contract_waits_for(
    client: TestClient, make_caller: Any, target: str
) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    person, _ = make_caller(owner)
    supervisor, _ = make_caller(owner, role="supervisor")
    cid = new_contract(client, person)
    waiting = client.post(
        f"{CONTRACTS}/{cid}/status", json={"targetStatus": "waiting_for_input"}, headers=auth(person)
    )
    assert waiting.status_code == 200, waiting.text
    body: dict[str, Any] = {"targetStatus": target}
    resp = client.post(f"{CONTRACTS}/{cid}/status", json=body, headers=auth(supervisor))
    assert resp.status_code == 403, resp.text
    assert client.post(f"{CONTRACTS}/{cid}/status", json=body, headers=auth(person)).status_code == 200


def test_a_page_of_contracts_leaves_out_their_own_phase_configs(client: TestClient, make_caller: Any) -> None:
    token, _ = make_caller()
    config = {
        "phases": [{"id": f"p{i}", "deliverables": [{"id": f"d{j}"} for j in range(50)]} for i in range(20)]
    }
    resp = client.post(
        CONTRACTS, json={"name": "big", "contractType": "own", "phaseConfig": config}, headers=auth(token)
    )
    assert resp.status_code == 201, resp.text
    cid = resp.json()["id"]
    page = client.get(CONTRACTS, headers=auth(token)).json()["contracts"]
    assert [c["phaseConfig"] for c in page if c["id"] == cid] == [None]
    assert client.get(f"{CONTRACTS}/{cid}", headers=auth(token)).json()["phaseConfig"] == config


def test_a_closed_contracts_auto_complete_is_not_changed(client: TestClient, make_caller: Any) -> None:
    token, _ = make_caller()
    cid = new_contract(client, token)
    client.post(
        f"{CONTRACTS}/{cid}/status", json={"targetStatus": "failed", "reason": "x"}, headers=auth(token)
    )
    resp = client.put(f"{CONTRACTS}/{cid}/auto-complete", json={"enabled": False}, headers=auth(token))
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_FAILED", resp.text


def test_head_healthz_answers(client: TestClient) -> None:
    assert client.head("/healthz").status_code == 200


def test_another_owners_task_id_is_refused_without_saying_it_exists(
    client: TestClient, make_caller: Any
) -> None:
    """Naming a stranger's task id says only that the id cannot be used here, never that it is
    another contract's task or supervisor; the owner of both contracts still reads why."""
    from app.agent_reports import record_task_started
    from app.db import unit_of_work
    from app.models import utcnow

    alice, alice_caller = make_caller(role="supervisor")
    bob, _ = make_caller(role="supervisor")
    theirs, mine, other_of_alice = (
        new_contract(client, alice),
        new_contract(client, bob),
        new_contract(client, alice),
    )
    task, supervisor = uuid.uuid4(), uuid.uuid4()
    with unit_of_work() as uow:
        record_task_started(
            uow,
            alice_caller,
            uuid.UUID(theirs),
            task_id=task,
            task_name="w",
            is_supervisor=False,
            now=utcnow(),
        )
    saved = client.post(
        f"{CONTRACTS}/{theirs}/supervisor/state",
        json={"taskId": str(supervisor), "stateVersion": 1, "state": "working", "phase": "plan"},
        headers=auth(alice),
    )
    assert saved.status_code == 200, saved.text

    attempts = {
        "started": ("POST", f"tasks/{task}/started", {"taskName": "w"}),
        "completed": ("POST", f"tasks/{task}/completed", {"taskName": "w", "success": True}),
        "question": ("POST", "questions", {"question": "Which?", "type": "free_text", "taskId": str(task)}),
        "state": (
            "POST",
            "supervisor/state",
            {"taskId": str(supervisor), "stateVersion": 1, "state": "working", "phase": "plan"},
        ),
    }
    for what, (method, path, body) in attempts.items():
        resp = client.request(method, f"{CONTRACTS}/{mine}/{path}", json=body, headers=auth(bob))
        assert resp.status_code == 400, (what, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "VALIDATION_FAILED", (what, error)
        assert "cannot be used on this contract" in error["message"], (what, error)
        assert "another contract" not in error["message"] and "supervisor of" not in error["message"], what
        assert error["details"]["field"] == "taskId", (what, error)

        own = client.request(method, f"{CONTRACTS}/{other_of_alice}/{path}", json=body, headers=auth(alice))
        assert own.status_code == 400, (what, own.text)
        assert "another contract" in own.json()["error"]["message"], (what, own.text)


def test_two_owners_starting_one_supervisor_task_id_at_once_refuse_the_later_as_foreign(make_caller) -> None:
    """The task row of one contract's uncommitted start holds the id; the other contract's start
    waits for it and is then refused as another contract's task (VALIDATION_FAILED), not broken
    by a duplicate key (an INTERNAL_ERROR with the driver's message)."""
    import threading

    from app import agent_reports
    from app.db import unit_of_work
    from app.domain.errors import ValidationFailed
    from app.models import utcnow

    (_, first_owner), (_, second_owner) = make_caller(role="supervisor"), make_caller(role="supervisor")
    first = uuid.UUID(
        str(ContractsAPI(caller=first_owner, sender=_no_send).create_contract("a", "simple").id)
    )
    second = uuid.UUID(
        str(ContractsAPI(caller=second_owner, sender=_no_send).create_contract("b", "simple").id)
    )
    task = uuid.uuid4()
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | None] = {}

    def start(caller: Any, contract_id: uuid.UUID, hold: bool) -> None:
        try:
            with unit_of_work(_no_send) as uow:
                agent_reports.record_task_started(
                    uow, caller, contract_id, task_id=task, task_name="s", is_supervisor=True, now=utcnow()
                )
                uow.session.flush()
                if hold:
                    holding.set()
                    release.wait(10)
            outcome[str(contract_id)] = None
        except BaseException as exc:
            outcome[str(contract_id)] = exc

    winner = threading.Thread(target=start, args=(first_owner, first, True))
    winner.start()
    assert holding.wait(10)
    loser = threading.Thread(target=start, args=(second_owner, second, False))
    loser.start()
    loser.join(0.5)  # it waits on the winner's uncommitted row
    release.set()
    winner.join(10)
    loser.join(10)
    assert outcome[str(first)] is None
    refused = outcome[str(second)]
    assert isinstance(refused, ValidationFailed), repr(refused)
    assert refused.details["taskId"] == str(task)
    assert ContractsAPI(caller=first_owner).get_contract(first).status == "active"
    assert ContractsAPI(caller=second_owner).get_contract(second).status == "created"


def test_the_schema_has_no_two_operations_with_one_id() -> None:
    """GET and HEAD of /healthz were one route, so FastAPI warned of a duplicate operation id
    the first time /openapi.json was built."""
    import warnings

    from app.http import create_app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schema = create_app().openapi()
    assert not [w for w in caught if "Duplicate Operation ID" in str(w.message)]
    ids = [
        op["operationId"] for path in schema["paths"].values() for op in path.values() if "operationId" in op
    ]
    assert len(ids) == len(set(ids))
