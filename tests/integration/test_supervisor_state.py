"""Supervisor persistent state over HTTP and the API module, restart and sync: PostgreSQL, Redis
and a real `celery worker` (it applies task reports, ingests heartbeats and publishes daemon
commands to each daemon's broker queue, which the tests read as a daemon does)."""

from __future__ import annotations

import re
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from app.api import ContractsAPI
from app.broker import daemon_queue, get_celery
from app.db import unit_of_work
from app.domain.errors import HistoryGap, StaleState, SupervisorFenced, ValidationFailed
from app.domain.incarnations import MAX_INCARNATION
from app.domain.lifecycle import Status
from app.http import create_app
from app.models import (
    ContractTask,
    ConversationMessage,
    DaemonCommand,
    Supervisor,
    SupervisorHeartbeat,
    SupervisorStateRow,
    utcnow,
)
from tests.integration.helpers import event_types
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("state"), queues="contracts,heartbeats,sweeps", concurrency=2)
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


class Owner:
    """One owner's tokens: its daemon (a supervisor), a person (a user), and the daemon's API."""

    def __init__(self, make_caller: Any) -> None:
        self.daemon_token, caller = make_caller(role="supervisor")
        self.owner = caller.owner_id
        self.person_token = make_caller(owner=self.owner, role="user")[0]
        self.api = ContractsAPI(self.daemon_token)
        self.person = ContractsAPI(self.person_token)

    def headers(self, role: str = "supervisor") -> dict[str, str]:
        token = self.daemon_token if role == "supervisor" else self.person_token
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def owner(make_caller: Any, worker: WorkerProcess) -> Owner:
    return Owner(make_caller)


def message(i: int, role: str = "assistant") -> dict[str, Any]:
    return {"role": role, "content": f"message {i}"}


def body(task: uuid.UUID, version: int, **over: Any) -> dict[str, Any]:
    return {
        "taskId": str(task),
        "stateVersion": version,
        "state": "working",
        "phase": "plan",
        "currentActivity": f"step {version}",
        "spawnedTaskIds": [],
        "waitingOnTaskIds": [],
        **over,
    }


def stored_messages(task: uuid.UUID) -> list[str]:
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(ConversationMessage.seq, ConversationMessage.message)
            .where(ConversationMessage.task_id == task)
            .order_by(ConversationMessage.seq)
        ).all()
    assert [seq for seq, _ in rows] == list(range(len(rows))), "history positions have a gap"
    return [m["content"] for _, m in rows]


def state_row(task: uuid.UUID) -> SupervisorStateRow | None:
    with unit_of_work() as uow:
        return uow.session.get(SupervisorStateRow, task)


def commands_for(owner: Owner, daemon_id: str | None, command: str, count: int = 1) -> list[dict[str, Any]]:
    """Read the owner's daemon's own broker queue (as the daemon does) until `count` `command`s
    arrived."""
    got: list[dict[str, Any]] = []

    def arrived() -> list[dict[str, Any]] | None:
        with get_celery().connection_for_read() as conn:
            queue = daemon_queue(owner.owner, daemon_id)(conn.default_channel)
            while (received := queue.get(no_ack=True)) is not None:
                body = received.decode()
                if body["command"] == command:
                    got.append(body)
        return got if len(got) >= count else None

    return wait_for(arrived, what=f"{count} {command} command(s) on the queue of daemon {daemon_id}")


# --- saving -----------------------------------------------------------------------------------


def test_a_save_its_resend_and_an_older_save_leave_the_newest_state_and_one_history(
    owner: Owner, client: TestClient
) -> None:
    cid = owner.api.create_contract("state", "simple").id
    task = uuid.uuid4()
    url = f"{BASE}/{cid}/supervisor/state"
    first = client.post(
        url, json=body(task, 1, historyAppend=[message(0), message(1)]), headers=owner.headers()
    )
    assert first.status_code == 200, first.text
    assert first.json() | {"savedAt": None} == {
        "taskId": str(task),
        "incarnation": 1,
        "stateVersion": 1,
        "applied": True,
        "historyLength": 2,
        "checkpoint": None,
        "savedAt": None,
    }
    newer = body(task, 2, state="waiting_for_user", historyAppend=[message(2)])
    assert client.post(url, json=newer, headers=owner.headers()).json()["historyLength"] == 3
    # The answer was lost; the daemon sends the same save again: one save, one append.
    again = client.post(url, json=newer, headers=owner.headers())
    assert again.status_code == 200 and again.json()["applied"] is False
    assert (again.json()["stateVersion"], again.json()["historyLength"]) == (2, 3)
    # Other content under the stored version is not a resend: refused, naming what differs.
    reused = client.post(
        url, json={**newer, "progress": 80, "historyAppend": [message(7)]}, headers=owner.headers()
    )
    assert reused.status_code == 409, reused.text
    assert reused.json()["error"]["code"] == "STATE_VERSION_REUSED"
    assert reused.json()["error"]["details"] == {
        "taskId": str(task),
        "incarnation": 1,
        "stateVersion": 2,
        "differs": ["progress", "history"],
    }
    # A save older than the stored one is refused and writes nothing.
    older = client.post(
        url, json=body(task, 1, state="failed", historyAppend=[message(99)]), headers=owner.headers()
    )
    assert older.status_code == 409, older.text
    assert older.json()["error"]["code"] == "STALE_STATE"
    assert older.json()["error"]["details"] | {"taskId": None} == {
        "taskId": None,
        "incarnation": 1,
        "stateVersion": 1,
        "storedIncarnation": 1,
        "storedStateVersion": 2,
    }
    assert stored_messages(task) == ["message 0", "message 1", "message 2"]
    row = state_row(task)
    assert row is not None and (row.state, row.state_version, row.history_length) == (
        "waiting_for_user",
        2,
        3,
    )
    # Events only where something a person cares about changed: the first save and the state change.
    assert event_types(cid).count("supervisor_state_saved") == 2

    read = client.get(f"{url}?taskId={task}", headers=owner.headers("user")).json()
    assert (read["state"], read["stateVersion"], read["historyLength"], read["currentIncarnation"]) == (
        "waiting_for_user",
        2,
        3,
        1,
    )
    assert client.get(url, headers=owner.headers("user")).json()["taskId"] == str(task)  # the only one
    page = client.get(f"{BASE}/{cid}/supervisor/history?from=1&limit=5", headers=owner.headers("user")).json()
    assert (page["from"], page["historyLength"], page["missing"], page["malformed"]) == (1, 3, [], [])
    assert [(m["seq"], m["content"]) for m in page["messages"]] == [(1, "message 1"), (2, "message 2")]


def test_history_goes_in_increments_a_gap_is_refused_and_a_compacted_tail_is_rewritten(owner: Owner) -> None:
    api = owner.api
    cid = api.create_contract("history", "simple").id
    task = uuid.uuid4()
    for version, start in enumerate(range(0, 600, 200), start=1):  # three saves of the most one carries
        saved = api.save_supervisor_state(
            cid,
            task,
            state_version=version,
            state="working",
            phase="plan",
            history_from=start,
            history_append=[message(i) for i in range(start, start + 200)],
        )
        assert saved.history_length == start + 200
    with pytest.raises(ValidationFailed) as too_many:
        api.save_supervisor_state(
            cid, task, state_version=9, state="working", phase="plan", history_append=[message(0)] * 201
        )
    assert (too_many.value.details["field"], too_many.value.details["limit"]) == ("historyAppend", 200)
    with pytest.raises(HistoryGap) as gap:
        api.save_supervisor_state(
            cid,
            task,
            state_version=4,
            state="working",
            phase="plan",
            history_from=601,
            history_append=[message(601)],
        )
    assert (gap.value.details["historyFrom"], gap.value.details["storedLength"]) == (601, 600)
    # The daemon compacted its conversation: everything after message 9 becomes one summary.
    compacted = api.save_supervisor_state(
        cid,
        task,
        state_version=4,
        state="working",
        phase="plan",
        history_from=10,
        history_append=[{"role": "system", "content": "summary of 590 messages"}],
    )
    assert compacted.history_length == 11
    contents = stored_messages(task)
    assert contents[:10] == [f"message {i}" for i in range(10)] and contents[10:] == [
        "summary of 590 messages"
    ]
    page = api.supervisor_history(cid, task, start=5, limit=1000)
    assert [m.seq for m in page.messages] == list(range(5, 11))


def test_a_supervisor_or_an_admin_saves_a_user_may_not_and_a_stranger_sees_nothing(
    owner: Owner, client: TestClient, make_caller: Any
) -> None:
    cid = owner.api.create_contract("who saves", "simple").id
    url = f"{BASE}/{cid}/supervisor/state"
    refused = client.post(url, json=body(uuid.uuid4(), 1), headers=owner.headers("user"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    assert refused.json()["error"]["details"]["allowedRoles"] == ["supervisor", "admin"]
    assert "operator" not in refused.json()["error"]["message"], "the daemon saves, not an operator"
    admin = {"Authorization": f"Bearer {make_caller(role='admin')[0]}"}
    assert client.post(url, json=body(uuid.uuid4(), 1), headers=admin).status_code == 200
    stranger = {"Authorization": f"Bearer {make_caller(role='supervisor')[0]}"}
    for method, path in (("POST", "state"), ("GET", "state"), ("GET", "history"), ("GET", "restoration")):
        resp = client.request(
            method, f"{BASE}/{cid}/supervisor/{path}", json=body(uuid.uuid4(), 1), headers=stranger
        )
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "CONTRACT_NOT_FOUND", (
            path,
            resp.text,
        )
    empty = owner.api.create_contract("nothing saved", "simple").id
    missing = client.get(f"{BASE}/{empty}/supervisor/state", headers=owner.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SUPERVISOR_NOT_FOUND"


def test_bad_input_is_refused_naming_the_field_never_a_server_error(owner: Owner, client: TestClient) -> None:
    cid = owner.api.create_contract("bad input", "simple").id
    url = f"{BASE}/{cid}/supervisor/state"
    task = uuid.uuid4()
    cases = {
        "state": body(task, 1, state="dreaming"),
        "stateVersion": body(task, -1),
        "historyAppend": body(task, 1, historyAppend=[message(i) for i in range(201)]),
        "historyAppend[0].role": body(task, 1, historyAppend=[{"role": "robot", "content": "x"}]),
        "historyAppend[0].content": body(task, 1, historyAppend=[{"role": "user", "content": "x" * 65_537}]),
        "waitingOnTaskIds[0]": body(task, 1, waitingOnTaskIds=["nope"]),
        "checkpoint.id": body(task, 1, checkpoint={"note": "no id"}),
        "surprise": body(task, 1, surprise=True),
    }
    for field, sent in cases.items():
        resp = client.post(url, json=sent, headers=owner.headers())
        assert resp.status_code in (400, 422), (field, resp.text)
        problems = resp.json()["error"]["details"].get("problems") or [resp.json()["error"]["details"]]
        assert any(p["field"] == field for p in problems), (field, problems)
    # A message time without a time zone is a schema problem like any other: 422, naming the field.
    naive = body(task, 1, historyAppend=[{**message(0), "at": "2026-01-31T10:30:00"}])
    resp = client.post(url, json=naive, headers=owner.headers())
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "INVALID_REQUEST"), resp.text
    assert [p["field"] for p in resp.json()["error"]["details"]["problems"]] == ["historyAppend[0].at"]
    restart = client.post(
        f"{BASE}/{cid}/supervisor/restart", json={"reason": "r" * 2001}, headers=owner.headers("user")
    )
    assert restart.status_code == 422, restart.text
    (problem,) = restart.json()["error"]["details"]["problems"]
    assert (problem["field"], problem["problem"]) == (
        "reason",
        "must be at most 2000 characters (this one has 2001)",
    )
    for query in ("historyLimit=0", "historyLimit=1001", "taskId=nope", "daemonId="):
        assert (
            client.get(f"{BASE}/{cid}/supervisor/restoration?{query}", headers=owner.headers()).status_code
            == 422
        )
    assert (
        client.get(f"{BASE}/{cid}/supervisor/history?limit=1001", headers=owner.headers()).status_code == 422
    )
    with pytest.raises(ValidationFailed) as long_id:  # the API module judges what the HTTP schema does
        owner.api.restore_supervisor(cid, task, daemon_id="d" * 201)
    assert (long_id.value.details["field"], long_id.value.details["limit"]) == ("daemonId", 200)
    with pytest.raises(ValidationFailed) as paging:
        owner.api.supervisor_history(cid, task, limit=0)
    assert paging.value.details["field"] == "limit"
    assert state_row(task) is None


def test_two_first_saves_at_once_are_one_insert_and_one_duplicate(owner: Owner) -> None:
    cid = owner.api.create_contract("race", "simple").id
    task = uuid.uuid4()
    go = threading.Barrier(4)
    answers: list[bool] = []

    def save() -> None:
        go.wait()
        saved = owner.api.save_supervisor_state(
            cid, task, state_version=1, state="working", phase="plan", history_append=[message(0)]
        )
        answers.append(saved.applied)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False, False, False, True]
    assert stored_messages(task) == ["message 0"]


# --- restart and sync -------------------------------------------------------------------------


def test_a_restart_fences_the_running_incarnation_and_reaches_the_daemons_queue(
    owner: Owner, client: TestClient
) -> None:
    cid = owner.api.create_contract("restart", "simple").id
    task = uuid.uuid4()
    daemon = f"restart-{uuid.uuid4().hex[:8]}"
    owner.api.send_heartbeat(cid, task, "working", "plan", daemon_id=daemon, host="gpu-1")
    owner.api.flush()
    wait_for(lambda: _supervisor(task), what="the heartbeat ingested")
    owner.api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", daemon_id=daemon
    )
    url = f"{BASE}/{cid}/supervisor/restart"

    by_daemon = client.post(url, headers=owner.headers())
    assert by_daemon.status_code == 403 and by_daemon.json()["error"]["code"] == "FORBIDDEN"
    before = _scrape(client)
    resp = client.post(
        url, json={"reason": "stuck on a tool call", "incarnation": 1}, headers=owner.headers("user")
    )
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert (answer["requested"], answer["taskId"], answer["incarnation"], answer["previousIncarnation"]) == (
        True,
        str(task),
        2,
        1,
    )
    # The answer was lost; the person clicks again naming the incarnation they meant: one restart.
    retry = client.post(url, json={"incarnation": 1}, headers=owner.headers("user"))
    assert retry.status_code == 202 and retry.json() == answer

    (command,) = commands_for(owner, daemon, "restart_supervisor")
    assert command["commandId"] == answer["commandId"]
    assert command["payload"] | {"daemonId": None} == {
        "taskId": str(task),
        "newIncarnation": 2,
        "previousIncarnation": 1,
        "reason": "stuck on a tool call",
        "daemonId": None,
        "host": "gpu-1",
    }
    sup = _supervisor(task)
    assert sup is not None and (sup.incarnation, sup.alive, sup.state) == (2, False, "interrupted")
    with pytest.raises(SupervisorFenced):
        owner.api.save_supervisor_state(
            cid, task, state_version=2, state="working", phase="plan", incarnation=1
        )
    saved = owner.api.save_supervisor_state(
        cid, task, state_version=0, state="initializing", phase="plan", incarnation=2
    )
    assert saved.applied and saved.incarnation == 2  # the new incarnation counts afresh
    assert event_types(cid).count("supervisor_restart_requested") == 1
    after = _scrape(client)
    assert after.get("supervisor_restarts_total", 0) - before.get("supervisor_restarts_total", 0) == 1

    nobody = owner.api.create_contract("no supervisor", "simple").id
    missing = client.post(f"{BASE}/{nobody}/supervisor/restart", headers=owner.headers("user"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SUPERVISOR_NOT_FOUND"


def test_a_restart_past_the_last_incarnation_is_refused_naming_the_limit_and_changes_nothing(
    owner: Owner, client: TestClient
) -> None:
    """It answered 202 with incarnation 2147483648, which no heartbeat or save could name (on
    PostgreSQL the column overflowed: 500). Now 409 INCARNATION_NOT_ISSUED says the limit and
    what the operator can do; no incarnation is issued and no command is sent."""
    cid = owner.api.create_contract("the last incarnation", "simple").id
    task = uuid.uuid4()
    owner.api.send_heartbeat(cid, task, "working", "plan", daemon_id="d-last", host="gpu-1")
    owner.api.flush()
    wait_for(lambda: _supervisor(task), what="the heartbeat ingested")
    with unit_of_work() as uow:  # as though every incarnation but the last had been issued
        uow.session.execute(
            update(Supervisor).where(Supervisor.task_id == task).values(incarnation=MAX_INCARNATION)
        )
    url = f"{BASE}/{cid}/supervisor/restart"

    refused = client.post(url, json={"incarnation": MAX_INCARNATION}, headers=owner.headers("user"))
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "INCARNATION_NOT_ISSUED"
    assert {k: error["details"][k] for k in ("incarnation", "currentIncarnation", "maxIncarnation")} == {
        "incarnation": 2147483648,
        "currentIncarnation": 2147483647,
        "maxIncarnation": 2147483647,
    }
    assert "2147483647 is the highest incarnation there is" in error["message"]
    assert "start the contract's supervisor under a new task id" in error["message"]
    sup = _supervisor(task)
    assert sup is not None and (sup.incarnation, sup.alive, sup.state) == (MAX_INCARNATION, True, "working")
    assert "supervisor_restart_requested" not in event_types(cid)
    with unit_of_work() as uow:
        assert (
            uow.session.scalar(
                select(func.count()).select_from(DaemonCommand).where(DaemonCommand.contract_id == cid)
            )
            == 0
        )
    # The incarnation in force goes on: its saves are taken.
    saved = owner.api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", incarnation=MAX_INCARNATION
    )
    assert saved.applied and saved.incarnation == MAX_INCARNATION


def test_a_sync_asks_the_daemon_and_answers_with_the_stored_state(owner: Owner, client: TestClient) -> None:
    cid = owner.api.create_contract("sync", "simple").id
    task = uuid.uuid4()
    daemon = f"sync-{uuid.uuid4().hex[:8]}"
    url = f"{BASE}/{cid}/supervisor/sync"
    owner.api.send_heartbeat(cid, task, "working", "plan", daemon_id=daemon)
    owner.api.flush()
    wait_for(lambda: _supervisor(task), what="the heartbeat ingested")
    nothing_saved = client.post(url, headers=owner.headers("user"))
    assert nothing_saved.status_code == 202 and nothing_saved.json()["storedState"] is None
    owner.api.save_supervisor_state(
        cid, task, state_version=7, state="working", phase="plan", history_append=[message(0)],
        checkpoint={"id": "cp-7"},
    )  # fmt: skip
    resp = client.post(url, headers=owner.headers("user"))
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["storedState"] | {"savedAt": None} == {
        "taskId": str(task),
        "incarnation": 1,
        "stateVersion": 7,
        "state": "working",
        "phase": "plan",
        "currentActivity": "",
        "progress": 0,
        "historyLength": 1,
        "checkpointId": "cp-7",
        "savedAt": None,
    }
    commands = commands_for(owner, daemon, "sync_supervisor_state", count=2)
    assert [c["commandId"] for c in commands] == [nothing_saved.json()["commandId"], answer["commandId"]]
    assert commands[1]["payload"]["taskId"] == str(task)
    assert event_types(cid).count("supervisor_sync_requested") == 2


def test_the_feature_flag_off_answers_feature_disabled(
    owner: Owner, monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    from app.config import Settings

    cid = owner.api.create_contract("flag", "simple").id
    off = Settings(feature_flags={"supervisor_heartbeat": False})  # type: ignore[arg-type]
    monkeypatch.setattr("app.api.base.get_settings", lambda: off)
    for method, path in (
        ("POST", "state"),
        ("GET", "state"),
        ("GET", "history"),
        ("GET", "restoration"),
        ("POST", "restart"),
        ("POST", "sync"),
    ):
        sent = body(uuid.uuid4(), 1) if path == "state" else None
        resp = client.request(method, f"{BASE}/{cid}/supervisor/{path}", json=sent, headers=owner.headers())
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "FEATURE_DISABLED", (
            path,
            resp.text,
        )
    with unit_of_work() as uow:
        assert uow.session.scalar(select(func.count()).select_from(SupervisorStateRow).where(
            SupervisorStateRow.contract_id == cid)) == 0  # fmt: skip


# --- helpers ----------------------------------------------------------------------------------


def _supervisor(task: uuid.UUID) -> Supervisor | None:
    with unit_of_work() as uow:
        return uow.session.get(Supervisor, task)


def _scrape(client: TestClient) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_a_stale_save_through_the_api_module_names_the_stored_version(owner: Owner) -> None:
    cid = owner.api.create_contract("stale", "simple").id
    task = uuid.uuid4()
    owner.api.save_supervisor_state(cid, task, state_version=5, state="idle", phase="plan")
    with pytest.raises(StaleState) as stale:
        owner.api.save_supervisor_state(cid, task, state_version=4, state="working", phase="plan")
    assert stale.value.details["storedStateVersion"] == 5
    with unit_of_work() as uow:
        assert (
            uow.session.execute(
                text("SELECT state FROM supervisor_states WHERE task_id = :t"), {"t": task}
            ).scalar_one()
            == "idle"
        )


def test_a_state_save_or_restoration_naming_another_owners_ordinary_task_is_refused_without_a_hint(
    client: TestClient, owner: Owner, make_caller: Any
) -> None:
    """A task id belongs to one contract: a task reported started on one owner's contract cannot
    become another owner's supervisor by a state save or a restoration, and that owner reads
    only that the id cannot be used; the task's own contract may still save under it."""
    hers = uuid.UUID(str(owner.api.create_contract("hers", "simple").id))
    task = uuid.uuid4()
    owner.api.report_task_started(hers, task, "build")

    def recorded() -> bool:
        with unit_of_work() as uow:
            return uow.session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task)) == hers

    wait_for(recorded, what="the task-started report recorded")
    bob = Owner(make_caller)
    his = uuid.UUID(str(bob.api.create_contract("his", "simple").id))
    saved = client.post(f"{BASE}/{his}/supervisor/state", json=body(task, 1), headers=bob.headers())
    assert saved.status_code == 400, saved.text
    error = saved.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", "taskId")
    assert f"Task {task} cannot be used on this contract" in error["message"]
    assert "another contract" not in error["message"] and "supervisor" not in error["message"]
    with pytest.raises(ValidationFailed, match="cannot be used on this contract"):
        bob.api.restore_supervisor(his, task)
    assert state_row(task) is None

    mine = client.post(f"{BASE}/{hers}/supervisor/state", json=body(task, 1), headers=owner.headers())
    assert mine.status_code == 200, mine.text
    row = state_row(task)
    assert row is not None and row.contract_id == hers


def test_a_closed_contract_is_refused_in_one_shape_by_a_heartbeat_a_save_a_claim_a_restart_and_a_sync(
    owner: Owner, client: TestClient
) -> None:
    """A heartbeat's refusal named the closed contract by `field` (contractId), a state save's by
    `status`: one condition, two shapes. Each now carries both: the contract's status, and the
    field that chose the contract (a heartbeat's contractId, else the path's id)."""
    cid = uuid.UUID(str(owner.api.create_contract("closed", "simple").id))
    task = uuid.uuid4()
    owner.person.change_status(cid, Status.FAILED, reason="abandoned")
    beat = {
        "taskId": str(task),
        "contractId": str(cid),
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }
    answers = {
        "heartbeat": client.post("/api/v1/supervisors/heartbeats", json=beat, headers=owner.headers()),
        "save": client.post(f"{BASE}/{cid}/supervisor/state", json=body(task, 1), headers=owner.headers()),
        "claim": client.get(
            f"{BASE}/{cid}/supervisor/restoration?taskId={task}&daemonId=d-late", headers=owner.headers()
        ),
        "restart": client.post(f"{BASE}/{cid}/supervisor/restart", headers=owner.headers("user")),
        "sync": client.post(f"{BASE}/{cid}/supervisor/sync", headers=owner.headers("user")),
    }
    for what, resp in answers.items():
        assert resp.status_code == 400, (what, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "VALIDATION_FAILED", (what, error)
        field = "contractId" if what == "heartbeat" else "id"
        assert error["details"] == {"missing": [], "status": "failed", "field": field}, (what, error)
        assert error["message"].startswith("The contract is 'failed': no more supervisor "), (what, error)
    with pytest.raises(ValidationFailed) as sent:  # the API module's refusal is the HTTP one
        owner.api.send_heartbeat(cid, task, "working", "plan")
    assert sent.value.details == answers["heartbeat"].json()["error"]["details"]
    with pytest.raises(ValidationFailed) as saved:
        owner.api.save_supervisor_state(cid, task, state_version=1, state="working", phase="plan")
    assert saved.value.details == answers["save"].json()["error"]["details"]


def test_a_status_read_after_only_fenced_heartbeats_says_they_were_fenced_and_what_to_do(
    owner: Owner, client: TestClient
) -> None:
    """A first heartbeat naming incarnation 5 (none was ever issued) is stored, fenced, and
    starts no supervisor. The status read answered "none has sent a heartbeat", which sent the
    operator looking for a silent daemon; it still answers SUPERVISOR_NOT_FOUND, saying what was
    received and how to start the supervisor."""
    cid = uuid.UUID(str(owner.api.create_contract("fenced only", "simple").id))
    task = uuid.uuid4()
    status_url = f"{BASE}/{cid}/supervisor/status"
    silent = client.get(status_url, headers=owner.headers("user")).json()["error"]
    assert silent["details"] == {"contractId": str(cid)} and "none has sent a heartbeat" in silent["message"]
    for _ in range(3):
        owner.api.send_heartbeat(cid, task, "working", "plan", incarnation=5, daemon_id="d-5")
        owner.api.flush()
    wait_for(lambda: _heartbeats_of(cid) == 3, what="three fenced heartbeats stored")
    assert _supervisor(task) is None

    for resp in (
        client.get(status_url, headers=owner.headers("user")),
        client.post(f"{BASE}/{cid}/supervisor/sync", headers=owner.headers("user")),
    ):
        assert resp.status_code == 404, resp.text
        error = resp.json()["error"]
        assert error["code"] == "SUPERVISOR_NOT_FOUND"
        message = error["message"]
        assert "none has sent a heartbeat" not in message
        assert f"Contract {cid} has no supervisor: the 3 heartbeats received for it since " in message
        assert "were all fenced, so none started one" in message
        assert f"Task {task} named incarnation 5 from daemon d-5 (3 heartbeats" in message
        assert "Start the supervisor with no incarnation or incarnation 1, then retry" in message
        details = error["details"]
        assert (details["contractId"], details["fencedHeartbeats"]) == (str(cid), 3)
        (source,) = details["fenced"]
        assert source | {"firstReceivedAt": None, "lastReceivedAt": None} == {
            "taskId": str(task),
            "incarnation": 5,
            "daemonId": "d-5",
            "heartbeats": 3,
            "firstReceivedAt": None,
            "lastReceivedAt": None,
        }
        assert details["firstReceivedAt"] == source["firstReceivedAt"] <= source["lastReceivedAt"]
        assert details["lastReceivedAt"] == source["lastReceivedAt"]

    # What the message says to do starts the supervisor.
    owner.api.send_heartbeat(cid, task, "working", "plan", daemon_id="d-5")
    owner.api.flush()
    wait_for(lambda: _supervisor(task), what="the supervisor started")
    started = client.get(status_url, headers=owner.headers("user"))
    assert started.status_code == 200 and started.json()["incarnation"] == 1, started.text


def _heartbeats_of(cid: uuid.UUID) -> int:
    with unit_of_work() as uow:
        return int(
            uow.session.scalar(
                select(func.count())
                .select_from(SupervisorHeartbeat)
                .where(SupervisorHeartbeat.contract_id == cid)
            )
            or 0
        )
