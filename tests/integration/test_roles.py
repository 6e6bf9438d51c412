"""The README's role table ("Who may do what"), tested cell by cell over the real HTTP app.

Each cell is one request made with a real token of that role against a contract prepared by a
person of the owner: `user` and `supervisor` act on their own owner's contract, `admin`
(an operator) on another owner's. The expected answers live in `TABLE`; a test reads the
README's table and checks it says the same, so the documentation cannot drift from the rule.

The app records what it would enqueue instead of sending it, so no worker acts behind the
assertions' back.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app import heartbeats
from app.auth import Role, authenticate, create_token
from app.db import unit_of_work
from app.heartbeat_messages import message_of
from app.http import create_app
from app.models import utcnow

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
README = Path(__file__).resolve().parents[2] / "README.md"
ROLES = ("user", "supervisor", "admin")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    def record(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        return uuid.uuid4().hex

    with TestClient(create_app(sender=record)) as c:
        yield c


@dataclass
class Actor:
    client: TestClient
    token: str

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is None:
            return self.client.request(method, path, headers=headers)
        return self.client.request(method, path, headers=headers, json=body)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.call(method, path, body)
        assert resp.status_code == expect, resp.text
        return resp.json()


def new_actor(client: TestClient, owner: str, role: str) -> Actor:
    with unit_of_work() as uow:
        token = create_token(uow.session, owner, Role(role), name=f"roles-{role}")
    return Actor(client, token)


# --- preparing a contract (always by a person of the owner) ---------------------------------


def created(person: Actor, **fields: Any) -> str:
    body = {"name": "roles", "contractType": "simple", "autoCompleteEnabled": False, **fields}
    return str(person.ok("POST", BASE, body, expect=201)["id"])


def active(person: Actor, **fields: Any) -> str:
    cid = created(person, **fields)
    person.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": "active"})
    return cid


def ready_to_advance(person: Actor, **fields: Any) -> str:
    cid = active(person, **fields)
    person.ok("POST", f"{BASE}/{cid}/deliverables/plan-document/complete")
    return cid


def guarded_and_waiting(person: Actor) -> str:
    """Where automation leaves a guarded contract whose gate is met: waiting for a person."""
    cid = ready_to_advance(person, phaseGuard=True)
    person.ok(
        "POST",
        f"{BASE}/{cid}/status",
        {"targetStatus": "waiting_for_input", "waitingFor": "phase_confirmation"},
    )
    return cid


def waiting_on_a_question(person: Actor) -> str:
    cid = active(person)
    person.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": "waiting_for_input", "waitingFor": "question"})
    return cid


# The question each contract prepared by `asked` holds, by contract id (a question is asked by
# the owner's supervisor: a person answers questions, never asks them).
QUESTIONS: dict[str, str] = {}


def asked(person: Actor) -> str:
    cid = active(person)
    owner = person.ok("GET", f"{BASE}/{cid}")["ownerId"]
    supervisor = new_actor(person.client, owner, "supervisor")
    body = {"question": "Deploy on Friday?", "type": "confirmation"}
    QUESTIONS[cid] = supervisor.ok("POST", f"{BASE}/{cid}/questions", body, expect=201)["id"]
    return cid


def completing(person: Actor) -> str:
    cid = ready_to_advance(person)
    person.ok("POST", f"{BASE}/{cid}/phase", {"phase": "execute"})
    person.ok("POST", f"{BASE}/{cid}/deliverables/pull-request/complete")
    person.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": "completing"})
    return cid


# --- the operations: (prepare, act) → the response -------------------------------------------

Prepare = Callable[[Actor], str | None]
Act = Callable[[Actor, str | None], Any]


@dataclass(frozen=True)
class Operation:
    readme_row: str  # the README row's first cell, as written there
    prepare: Prepare
    act: Act


def _read(actor: Actor, cid: str | None) -> Any:
    one = actor.call("GET", f"{BASE}/{cid}")
    if one.status_code != 200:
        return one
    listed = actor.ok("GET", BASE, None)
    assert cid in [c["id"] for c in listed["contracts"]], "readable one by one but missing from the list"
    assert actor.call("GET", f"{BASE}/{cid}/events").status_code == 200
    return actor.call("GET", f"{BASE}/{cid}/phase-readiness")


def _read_questions(actor: Actor, cid: str | None) -> Any:
    listed = actor.call("GET", f"{BASE}/{cid}/questions")
    if listed.status_code != 200:
        return listed
    assert [q["id"] for q in listed.json()["questions"]] == [QUESTIONS[str(cid)]]
    return actor.call("GET", f"{BASE}/{cid}/questions/{QUESTIONS[str(cid)]}")


def _task_report(kind: str) -> Act:
    def act(actor: Actor, cid: str | None) -> Any:
        task = uuid.uuid4()
        if kind == "worktree":
            return actor.call("POST", f"{BASE}/{cid}/worktrees", {"path": f"/srv/wt/{task}"})
        if kind == "worktree-removed":
            return actor.call("POST", f"{BASE}/{cid}/worktrees/removed", {"path": f"/srv/wt/{task}"})
        body: dict[str, Any] = {"taskName": "implement"}
        if kind == "completed":
            body["success"] = True
        return actor.call("POST", f"{BASE}/{cid}/tasks/{task}/{kind}", body)

    return act


def _read_worktrees(actor: Actor, cid: str | None) -> Any:
    """A contract's worktrees, then the daemons, one daemon's command feed (owner-scoped) and
    where that daemon reads its queue."""
    listed = actor.call("GET", f"{BASE}/{cid}/worktrees")
    if listed.status_code != 200:
        return listed
    assert actor.call("GET", "/api/v1/daemons").status_code == 200
    assert actor.call("GET", "/api/v1/daemons/roles-daemon/queue").status_code == 200
    return actor.call("GET", "/api/v1/daemons/roles-daemon/commands")


# The supervisor each contract prepared by `with_a_supervisor` runs, by contract id.
SUPERVISORS: dict[str, str] = {}


def with_a_supervisor(person: Actor) -> str:
    """An active contract whose supervisor (a daemon of the owner) saved its state and is alive:
    its heartbeat is ingested here, as a worker would, since this app sends nothing."""
    cid = active(person)
    owner = person.ok("GET", f"{BASE}/{cid}")["ownerId"]
    daemon = new_actor(person.client, owner, "supervisor")
    task = SUPERVISORS[cid] = str(uuid.uuid4())
    state = {"taskId": task, "stateVersion": 1, "state": "working", "phase": "plan", "daemonId": "roles-d"}
    daemon.ok("POST", f"{BASE}/{cid}/supervisor/state", state)
    with unit_of_work() as uow:
        principal = authenticate(uow.session, daemon.token).principal_id
    beat = {
        "taskId": task,
        "contractId": cid,
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }
    heartbeats.ingest(message_of({principal: [beat]}))
    return cid


def _save_state(actor: Actor, cid: str | None) -> Any:
    body = {"taskId": SUPERVISORS[str(cid)], "stateVersion": 2, "state": "idle", "phase": "plan"}
    return actor.call("POST", f"{BASE}/{cid}/supervisor/state", body)


def _read_state(actor: Actor, cid: str | None) -> Any:
    """The stored state, a page of its history, then the restoration (a supervisor's claims)."""
    for path in ("state", "history"):
        resp = actor.call("GET", f"{BASE}/{cid}/supervisor/{path}")
        if resp.status_code != 200:
            return resp
    return actor.call("GET", f"{BASE}/{cid}/supervisor/restoration")


def _send_heartbeat(actor: Actor, cid: str | None) -> Any:
    """One heartbeat for the contract's supervisor, as its daemon sends them."""
    beat = {
        "taskId": SUPERVISORS.get(str(cid), str(uuid.uuid4())),
        "contractId": cid,
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }
    return actor.call("POST", "/api/v1/supervisors/heartbeats", beat)


def _read_status(actor: Actor, cid: str | None) -> Any:
    """The supervisor's status, then its recent heartbeats."""
    resp = actor.call("GET", f"{BASE}/{cid}/supervisor/status")
    if resp.status_code != 200:
        return resp
    return actor.call("GET", f"{BASE}/{cid}/supervisor/heartbeats")


OPERATIONS: dict[str, Operation] = {
    "create": Operation(
        "Create a contract",
        lambda person: None,
        lambda actor, _: actor.call("POST", BASE, {"name": "mine", "contractType": "simple"}),
    ),
    "read": Operation("Read and list contracts", created, _read),
    "change-status": Operation(
        "Change status",
        created,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/status", {"targetStatus": "active"}),
    ),
    "change-phase": Operation(
        "Change phase",
        ready_to_advance,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/phase", {"phase": "execute"}),
    ),
    "confirm-guarded-phase": Operation(
        "Confirm a guarded phase change",
        lambda person: ready_to_advance(person, phaseGuard=True),
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/phase", {"phase": "execute", "confirmed": True}),
    ),
    "answer-phase-confirmation": Operation(
        "Answer a `phase_confirmation` wait",
        guarded_and_waiting,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/phase", {"phase": "execute", "confirmed": True}),
    ),
    "decline-phase-confirmation": Operation(
        "Decline a `phase_confirmation` wait",
        guarded_and_waiting,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/status", {"targetStatus": "active"}),
    ),
    "set-aside-a-wait": Operation(
        "Leave any other wait (to `active` or `paused`)",
        waiting_on_a_question,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/status", {"targetStatus": "paused"}),
    ),
    "decide-completion": Operation(
        "Confirm or reject a completion",
        completing,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/status", {"targetStatus": "completed"}),
    ),
    "batch": Operation(
        "Batch operations",
        lambda person: None,
        lambda actor, _: actor.call(
            "POST", f"{BASE}/batch", {"operation": "pause_all", "reason": "roles", "dryRun": True}
        ),
    ),
    "mark-deliverable": Operation(
        "Mark a deliverable",
        active,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/deliverables/plan-document/complete"),
    ),
    "task-started": Operation("Task reports", active, _task_report("started")),
    "task-completed": Operation("Task reports", active, _task_report("completed")),
    "worktree-created": Operation("Task reports", active, _task_report("worktree")),
    "worktree-removed": Operation("Task reports", active, _task_report("worktree-removed")),
    "read-worktrees": Operation(
        "Read worktrees, daemons, a daemon's commands and its queue", active, _read_worktrees
    ),
    "cleanup-worktrees": Operation(
        "Clean up orphaned worktrees",
        lambda person: None,
        lambda actor, _: actor.call("POST", "/api/v1/worktrees/cleanup?dryRun=true"),
    ),
    "check-completion": Operation(
        "Check completion",
        active,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/check-completion"),
    ),
    "auto-complete": Operation(
        "Turn auto-complete on or off",
        created,
        lambda actor, cid: actor.call("PUT", f"{BASE}/{cid}/auto-complete", {"enabled": True}),
    ),
    "ask-question": Operation(
        "Ask a question",
        active,
        lambda actor, cid: actor.call(
            "POST", f"{BASE}/{cid}/questions", {"question": "Which database?", "type": "free_text"}
        ),
    ),
    "read-questions": Operation("Read a contract's questions", asked, _read_questions),
    "answer-question": Operation(
        "Answer a question",
        asked,
        lambda actor, cid: actor.call(
            "POST", f"{BASE}/{cid}/questions/{QUESTIONS[str(cid)]}/answer", {"answer": True}
        ),
    ),
    "withdraw-question": Operation(
        "Withdraw a question",
        asked,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/questions/{QUESTIONS[str(cid)]}/cancel"),
    ),
    "send-heartbeat": Operation("Send heartbeats", with_a_supervisor, _send_heartbeat),
    "read-supervisor-status": Operation(
        "Read a supervisor's status and heartbeats", with_a_supervisor, _read_status
    ),
    "save-state": Operation("Save a supervisor's state", with_a_supervisor, _save_state),
    "read-state": Operation(
        "Read a supervisor's state, history and restoration", with_a_supervisor, _read_state
    ),
    "restart-supervisor": Operation(
        "Restart a supervisor",
        with_a_supervisor,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/supervisor/restart", {"reason": "roles"}),
    ),
    "sync-supervisor": Operation(
        "Ask a supervisor to sync its state",
        with_a_supervisor,
        lambda actor, cid: actor.call("POST", f"{BASE}/{cid}/supervisor/sync"),
    ),
    "tokens": Operation(
        "Create, list, revoke tokens",
        lambda person: None,
        lambda actor, _: actor.call("GET", "/api/v1/tokens"),
    ),
}

# What each role gets: an HTTP status, and for refusals the error code.
ALLOWED = {
    "create": 201,
    "task-started": 202,
    "task-completed": 202,
    "worktree-created": 202,
    "worktree-removed": 202,
    "ask-question": 201,
    "restart-supervisor": 202,
    "sync-supervisor": 202,
    "send-heartbeat": 202,
}
PERSON_MUST_CONFIRM = (409, "PHASE_GUARD_REQUIRED")
NO_API = (404, "NOT_FOUND")  # tokens are an operator's CLI job on the server, for no API role

TABLE: dict[str, dict[str, tuple[int, str | None]]] = {
    op: {role: (ALLOWED.get(op, 200), None) for role in ROLES} for op in OPERATIONS
}
for _op in ("confirm-guarded-phase", "answer-phase-confirmation", "decline-phase-confirmation"):
    TABLE[_op]["supervisor"] = PERSON_MUST_CONFIRM
for _op in ("set-aside-a-wait", "decide-completion"):
    TABLE[_op]["supervisor"] = (403, "FORBIDDEN")
TABLE["batch"] = {"user": (403, "FORBIDDEN"), "supervisor": (403, "FORBIDDEN"), "admin": (200, None)}
TABLE["tokens"] = dict.fromkeys(ROLES, NO_API)
TABLE["cleanup-worktrees"] = {
    "user": (403, "FORBIDDEN"),
    "supervisor": (403, "FORBIDDEN"),
    "admin": (200, None),
}
# A question exists so that a person decides: supervisors ask and withdraw, people answer.
for _op in ("ask-question", "withdraw-question"):
    TABLE[_op]["user"] = (403, "FORBIDDEN")
TABLE["answer-question"]["supervisor"] = (403, "FORBIDDEN")
# A supervisor's state is the daemon's record of itself; restarting it is a person's decision.
TABLE["save-state"]["user"] = (403, "FORBIDDEN")
TABLE["restart-supervisor"]["supervisor"] = (403, "FORBIDDEN")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_each_role_may_do_what_the_role_table_says(client: TestClient, operation: str, role: str) -> None:
    """One cell: a person of the owner prepares the contract; the role under test acts on it.

    `admin` belongs to another owner (an operator), so its cells also show it reaches every owner.
    """
    owner = f"roles-{uuid.uuid4().hex[:8]}"
    person = new_actor(client, owner, "user")
    actor = new_actor(client, f"operators-{uuid.uuid4().hex[:6]}" if role == "admin" else owner, role)
    op = OPERATIONS[operation]
    cid = op.prepare(person)
    before = person.ok("GET", f"{BASE}/{cid}") if cid else None

    resp = op.act(actor, cid)

    expected_status, expected_code = TABLE[operation][role]
    assert resp.status_code == expected_status, resp.text
    if expected_code is not None:
        body = resp.json()
        assert body["error"]["code"] == expected_code, body
        if expected_code == "PHASE_GUARD_REQUIRED":
            assert "person" in body["error"]["message"], body
            assert body["error"]["details"]["mayConfirm"] == ["user", "admin"], body
            after = person.ok("GET", f"{BASE}/{cid}")
            assert after == before, "a refused confirmation changed the contract"


@pytest.mark.parametrize("role", ["user", "supervisor"])
@pytest.mark.parametrize(
    "operation", [op for op in OPERATIONS if op not in ("create", "tokens", "batch", "cleanup-worktrees")]
)
def test_a_user_or_supervisor_cannot_reach_another_owners_contract(
    client: TestClient, operation: str, role: str
) -> None:
    """Only admin crosses owners: anyone else finds another owner's contract missing (404)."""
    person = new_actor(client, f"roles-{uuid.uuid4().hex[:8]}", "user")
    stranger = new_actor(client, f"strangers-{uuid.uuid4().hex[:8]}", role)
    op = OPERATIONS[operation]
    resp = op.act(stranger, op.prepare(person))
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "CONTRACT_NOT_FOUND"


def test_a_persons_confirmation_returns_a_waiting_contract_to_active(client: TestClient) -> None:
    owner = f"roles-{uuid.uuid4().hex[:8]}"
    person = new_actor(client, owner, "user")
    supervisor = new_actor(client, owner, "supervisor")
    cid = guarded_and_waiting(person)

    refused = supervisor.call("POST", f"{BASE}/{cid}/phase", {"phase": "execute", "confirmed": True})
    assert refused.status_code == 409
    row = person.ok("GET", f"{BASE}/{cid}")
    assert (row["phase"], row["status"], row["waitingFor"]) == (
        "plan",
        "waiting_for_input",
        "phase_confirmation",
    )

    moved = person.ok("POST", f"{BASE}/{cid}/phase", {"phase": "execute", "confirmed": True})
    assert (moved["phase"], moved["status"], moved["waitingFor"]) == ("execute", "active", None)


# --- the README says the same ----------------------------------------------------------------


def readme_role_table() -> dict[str, dict[str, str]]:
    """The README's "Who may do what" table: row label → {role: cell text}."""
    text = README.read_text()
    section = text.split("## Who may do what", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip().strip("`") for cell in rows[0].strip("|").split("|")]
    assert header[1:] == list(ROLES), header
    table: dict[str, dict[str, str]] = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(ROLES, cells[1:], strict=True))
    return table


def test_the_readme_role_table_matches_the_tested_cells() -> None:
    table = readme_role_table()
    for operation, op in OPERATIONS.items():
        assert op.readme_row in table, f"README has no row '{op.readme_row}'"
        for role in ROLES:
            cell = table[op.readme_row][role].lower()
            _, code = TABLE[operation][role]
            if code == "NOT_FOUND":
                assert cell.startswith("no"), (op.readme_row, role, cell)
            elif code is not None:
                assert cell.startswith("no") and code in table[op.readme_row][role], (
                    op.readme_row,
                    role,
                    cell,
                )
            else:
                assert cell.startswith("yes"), (op.readme_row, role, cell)
