"""The HTTP front against the real PostgreSQL: every rule checked through `/api/v1/...`.

The app under test records what it would enqueue instead of sending it to the broker, so a
Celery worker another test module started cannot act on these contracts behind the
assertions' back (auto-advance would add events and bump versions). One test sends through
the real Celery sender to show the daemon-facing endpoints enqueue onto Redis.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update
from starlette.convertors import UUIDConvertor

from app import heartbeats
from app.db import get_engine, unit_of_work
from app.domain.errors import ContractError
from app.domain.lifecycle import ALLOWED, Status
from app.domain.uuids import UUID_FORM
from app.heartbeat_messages import message_of
from app.http import ERROR_STATUS, STATUS_BY_ERROR, create_app
from app.models import Contract, ContractTask, utcnow
from app.schemas import ErrorCode

with warnings.catch_warnings():
    # starlette 1.x asks for `httpx2`; the pinned `httpx` still works and is what is installed.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
Sent = list[tuple[str, dict[str, Any], float | None]]


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sent() -> Sent:
    return []


@pytest.fixture(scope="module")
def http_app(sent: Sent) -> Any:
    def record(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        sent.append((task, payload, countdown))
        return uuid.uuid4().hex

    return create_app(sender=record)


@pytest.fixture(scope="module")
def client(http_app: Any) -> Iterator[TestClient]:
    with TestClient(http_app) as c:
        yield c


def assert_error(resp: Any, status_code: int, code: str) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "details"}}; returns the details."""
    assert resp.status_code == status_code, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return dict(body["error"]["details"])


class Actor:
    """One principal talking HTTP: thin helpers so each test reads as the rule it checks."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        kwargs: dict[str, Any] = {"headers": self.headers, "params": params or None}
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, path, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200, **params: Any) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def create(self, **fields: Any) -> str:
        body = {"name": "http test", "contractType": "simple", "autoCompleteEnabled": False, **fields}
        return str(self.ok("POST", BASE, body, expect=201)["id"])

    def status(self, cid: str, target: str, **fields: Any) -> Any:
        return self.call("POST", f"{BASE}/{cid}/status", {"targetStatus": target, **fields})

    def phase(self, cid: str, phase: str, **fields: Any) -> Any:
        return self.call("POST", f"{BASE}/{cid}/phase", {"phase": phase, **fields})

    def deliver(self, cid: str, deliverable: str) -> Any:
        return self.call("POST", f"{BASE}/{cid}/deliverables/{deliverable}/complete")

    def get(self, cid: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"{BASE}/{cid}"))

    def events(self, cid: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.ok("GET", f"{BASE}/{cid}/events", **params)["events"])

    def active(self, **fields: Any) -> str:
        cid = self.create(**fields)
        assert self.status(cid, "active").status_code == 200
        return cid


@pytest.fixture
def actor(client: TestClient, make_caller: Any) -> Any:
    """actor(owner=None, role="user") → a new principal's Actor."""

    def make(owner: str | None = None, role: str = "user") -> Actor:
        token, _ = make_caller(owner, role)
        return Actor(client, token)

    return make


def set_last_activity(cid: str, ago: timedelta) -> None:
    with unit_of_work() as uow:
        uow.session.execute(
            update(Contract).where(Contract.id == uuid.UUID(cid)).values(last_activity_at=utcnow() - ago)
        )


# How to reach each status over HTTP, one table move at a time.
ROUTE_TO: dict[Status, list[tuple[str, dict[str, str]]]] = {
    Status.CREATED: [],
    Status.ACTIVE: [("active", {})],
    Status.WAITING_FOR_INPUT: [("active", {}), ("waiting_for_input", {})],
    Status.PAUSED: [("active", {}), ("paused", {})],
    Status.BLOCKED: [("active", {}), ("blocked", {"blocker": "CI is down"})],
    Status.COMPLETING: [("active", {}), ("completing", {})],
    Status.COMPLETED: [("active", {}), ("completing", {}), ("completed", {})],
    Status.FAILED: [("active", {}), ("failed", {"reason": "daemon lost its disk"})],
    Status.ARCHIVED: [("active", {}), ("completing", {}), ("completed", {}), ("archived", {})],
}


# A one-phase contract whose gate asks for nothing: its terminal gate is met from the start,
# so `completing` (guarded by "final phase, all deliverables met") is reachable by hand.
DONE_ON_ARRIVAL = {"phases": [{"id": "only", "deliverables": [{"id": "notes", "required": False}]}]}


def contract_in(user: Actor, status: Status) -> str:
    needs_completion = status in (Status.COMPLETING, Status.COMPLETED, Status.ARCHIVED)
    cid = user.create(
        **({"contractType": "custom", "phaseConfig": DONE_ON_ARRIVAL} if needs_completion else {})
    )
    for target, fields in ROUTE_TO[status]:
        resp = user.status(cid, target, **fields)
        assert resp.status_code == 200, resp.text
    assert user.get(cid)["status"] == status.value
    return cid


# --- phase changes: version, guard, gate ------------------------------------------------


def test_twenty_concurrent_phase_changes_with_one_version_admit_exactly_one(
    actor: Any, http_app: Any
) -> None:
    user = actor()
    cid = user.active()
    assert user.deliver(cid, "plan-document").status_code == 200
    version = user.get(cid)["version"]

    barrier = threading.Barrier(20)
    results: list[Any] = [None] * 20

    def attempt(i: int) -> None:
        own_client = TestClient(http_app)  # each thread its own client, each call its own request
        barrier.wait()
        results[i] = own_client.post(
            f"{BASE}/{cid}/phase",
            json={"phase": "execute", "expectedVersion": version},
            headers=user.headers,
        )

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    codes = [r.status_code for r in results]
    assert codes.count(200) == 1, codes
    assert codes.count(409) == 19, codes
    for resp in results:
        if resp.status_code == 409:
            details = assert_error(resp, 409, "VERSION_CONFLICT")
            assert details == {"expected": version, "actual": version + 1, "currentPhase": "execute"}
    winner = next(r for r in results if r.status_code == 200).json()
    assert (winner["phase"], winner["version"]) == ("execute", version + 1)
    assert [e["type"] for e in user.events(cid)].count("phase_changed") == 1


def test_phase_guard_stops_a_supervisor_until_a_person_confirms_the_change(actor: Any) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    user = actor(owner)
    supervisor = actor(owner, "supervisor")
    cid = user.active(phaseGuard=True)
    assert supervisor.deliver(cid, "plan-document").status_code == 200
    version = user.get(cid)["version"]

    for confirmed in (False, True):  # a supervisor's confirmation does not count
        details = assert_error(
            supervisor.phase(cid, "execute", confirmed=confirmed), 409, "PHASE_GUARD_REQUIRED"
        )
        assert details["currentPhase"] == "plan"
        assert details["nextPhase"] == "execute"
        assert [d["id"] for d in details["deliverables"]] == ["plan-document", "task-breakdown"]
        assert details["mayConfirm"] == ["user", "admin"]
        assert user.get(cid)["version"] == version  # refused: nothing moved

    moved = user.phase(cid, "execute", confirmed=True, expectedVersion=version)
    assert moved.status_code == 200, moved.text
    assert (moved.json()["phase"], moved.json()["version"]) == ("execute", version + 1)
    changed = [e for e in user.events(cid) if e["type"] == "phase_changed"]
    assert [e["payload"]["confirmed"] for e in changed] == [True]


def test_unmet_gate_refuses_a_phase_change_unless_forced(actor: Any) -> None:
    user = actor()
    cid = user.active()

    details = assert_error(user.phase(cid, "execute"), 400, "VALIDATION_FAILED")
    assert details["missing"] and any("plan-document" in m for m in details["missing"])
    assert user.get(cid)["phase"] == "plan"

    forced = user.phase(cid, "execute", force=True)
    assert forced.status_code == 200, forced.text
    assert forced.json()["phase"] == "execute"
    changed = [e for e in user.events(cid) if e["type"] == "phase_changed"]
    assert [e["payload"]["forced"] for e in changed] == [True]


def test_unknown_phase_is_a_validation_failure_naming_the_phases(actor: Any) -> None:
    user = actor()
    cid = user.active()
    details = assert_error(user.phase(cid, "deploy", force=True), 400, "VALIDATION_FAILED")
    assert details["validPhases"] == ["plan", "execute"]


# --- progress on the contract itself ----------------------------------------------------


def add_tasks(cid: str, phase: str, *statuses: str) -> None:
    with unit_of_work() as uow:
        for i, status in enumerate(statuses):
            uow.session.add(
                ContractTask(
                    id=uuid.uuid4(), contract_id=uuid.UUID(cid), name=f"t{i}", status=status, phase=phase
                )
            )


@contextmanager
def progress_queries() -> Iterator[list[str]]:
    """The statements that read deliverables or tasks while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "contract_deliverables" in statement or "contract_tasks" in statement:
            seen.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_contract_shows_its_current_phases_deliverables_and_task_counts(actor: Any) -> None:
    user = actor()
    cid = user.active()
    fresh = user.get(cid)
    assert fresh["deliverables"] == [
        {
            "id": "plan-document",
            "name": "Plan document",
            "required": True,
            "completed": False,
            "completedAt": None,
        },
        {
            "id": "task-breakdown",
            "name": "Task breakdown",
            "required": False,
            "completed": False,
            "completedAt": None,
        },
    ]
    assert fresh["tasks"] == {"total": 0, "running": 0, "done": 0, "failed": 0}

    marked = user.deliver(cid, "plan-document").json()["contract"]
    assert [d["completed"] for d in marked["deliverables"]] == [True, False]
    add_tasks(cid, "plan", "running", "done", "done", "failed")
    add_tasks(cid, "execute", "running")  # another phase's task is not this phase's progress
    now = user.get(cid)
    assert now["deliverables"][0]["completedAt"] is not None
    assert now["tasks"] == {"total": 4, "running": 1, "done": 2, "failed": 1}

    moved = user.phase(cid, "execute").json()
    assert moved["phase"] == "execute"
    assert [d["id"] for d in moved["deliverables"]] == ["pull-request", "execution-notes"]
    assert not any(d["completed"] for d in moved["deliverables"])
    assert moved["tasks"] == {"total": 1, "running": 1, "done": 0, "failed": 0}
    listed = next(c for c in user.ok("GET", BASE, limit=500)["contracts"] if c["id"] == cid)
    assert listed == user.get(cid)


def test_progress_costs_two_queries_for_one_contract_and_for_a_whole_page(actor: Any) -> None:
    user = actor()
    made = [user.create(name=f"p{i}") for i in range(6)]
    for cid in made:
        add_tasks(cid, "plan", "running")
    with progress_queries() as one:
        user.get(made[0])
    with progress_queries() as page_of_two:
        assert len(user.ok("GET", BASE, limit=2)["contracts"]) == 2
    with progress_queries() as page_of_six:
        listed = user.ok("GET", BASE, limit=6)["contracts"]
    assert all(c["tasks"]["running"] == 1 for c in listed)
    assert len(one) == 2 and len(page_of_two) == 2 and len(page_of_six) == 2


# --- deliverables -----------------------------------------------------------------------


def test_only_a_phase_deliverable_can_be_completed_and_twice_counts_once(actor: Any) -> None:
    user = actor()
    cid = user.active()

    details = assert_error(user.deliver(cid, "pull-request"), 400, "INVALID_DELIVERABLE")
    assert details == {
        "deliverableId": "pull-request",
        "phase": "plan",
        "validIds": ["plan-document", "task-breakdown"],
    }

    first = user.deliver(cid, "plan-document")
    assert first.status_code == 200, first.text
    assert first.json()["alreadyComplete"] is False
    again = user.deliver(cid, "plan-document")
    assert again.status_code == 200 and again.json()["alreadyComplete"] is True
    assert [e["type"] for e in user.events(cid)].count("deliverable_completed") == 1

    readiness = user.ok("GET", f"{BASE}/{cid}/phase-readiness")
    assert (readiness["phase"], readiness["ready"], readiness["missing"]) == ("plan", True, [])
    assert readiness["autoAdvanceEnabled"] is False  # this contract has auto-complete off


def test_a_deliverable_of_a_named_phase_is_validated_against_that_phase(actor: Any) -> None:
    user = actor()
    cid = user.active()
    resp = user.call("POST", f"{BASE}/{cid}/deliverables/pull-request/complete", {"phase": "execute"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["phase"] == "execute"
    details = assert_error(
        user.call("POST", f"{BASE}/{cid}/deliverables/plan-document/complete", {"phase": "execute"}),
        400,
        "INVALID_DELIVERABLE",
    )
    assert details["validIds"] == ["pull-request", "execution-notes"]


# --- ownership and authentication -------------------------------------------------------

CROSS_OWNER_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "", None),
    ("POST", "/status", {"targetStatus": "paused"}),
    ("POST", "/phase", {"phase": "execute", "force": True}),
    ("POST", "/deliverables/plan-document/complete", None),
    ("GET", "/events", None),
    ("POST", "/tasks/{task}/completed", {"taskName": "build", "success": True}),
    ("POST", "/tasks/{task}/started", {"taskName": "build", "isSupervisor": True}),
    ("POST", "/worktrees", {"path": "/srv/wt/1"}),
    ("GET", "/phase-readiness", None),
    ("POST", "/check-completion", None),
    ("PUT", "/auto-complete", {"enabled": True}),
]


@pytest.mark.parametrize(("method", "suffix", "body"), CROSS_OWNER_CALLS, ids=lambda v: str(v))
def test_another_owners_contract_answers_exactly_like_a_missing_one(
    actor: Any, sent: Sent, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    owner = actor()
    cid = owner.active()
    owner.deliver(cid, "plan-document")
    before, history = owner.get(cid), owner.events(cid)
    sent_before = len(sent)
    path = suffix.replace("{task}", str(uuid.uuid4()))

    for stranger in (actor(), actor(role="supervisor")):
        theirs = stranger.call(method, f"{BASE}/{cid}{path}", body)
        missing_id = str(uuid.uuid4())
        missing = stranger.call(method, f"{BASE}/{missing_id}{path}", body)
        d1 = assert_error(theirs, 404, "CONTRACT_NOT_FOUND")
        d2 = assert_error(missing, 404, "CONTRACT_NOT_FOUND")
        assert d1 == {"contractId": cid} and d2 == {"contractId": missing_id}
        assert theirs.json()["error"]["message"].replace(cid, "X") == missing.json()["error"][
            "message"
        ].replace(missing_id, "X")

    assert owner.get(cid) == before
    assert owner.events(cid) == history
    assert sent[sent_before:] == []  # nothing was enqueued on the stranger's behalf


def test_an_admin_sees_and_acts_on_every_owners_contracts(actor: Any) -> None:
    owner = actor()
    cid = owner.create()
    admin = actor(role="admin")
    assert admin.get(cid)["id"] == cid
    listed = admin.ok("GET", BASE, limit=500)["contracts"]
    assert cid in {c["id"] for c in listed}
    assert admin.status(cid, "active").status_code == 200
    assert admin.events(cid)[-1]["type"] == "status_changed"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer mk_not-a-real-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no-token", "unknown-token", "not-bearer"],
)
def test_calls_without_a_valid_bearer_token_answer_401(client: TestClient, headers: dict[str, str]) -> None:
    cid = uuid.uuid4()
    calls = [
        client.get(BASE, headers=headers),
        client.get(f"{BASE}/{cid}", headers=headers),
        client.post(BASE, json={"name": "x", "contractType": "simple"}, headers=headers),
        client.post(f"{BASE}/{cid}/status", json={"targetStatus": "active"}, headers=headers),
        # A body that would be a 400 or 422 still answers 401: strangers learn nothing.
        client.post(
            f"{BASE}/{cid}/phase",
            content=b"{not json",
            headers={**headers, "Content-Type": "application/json"},
        ),
        client.post(f"{BASE}/{cid}/phase", json={"nope": 1}, headers=headers),
        client.get(f"{BASE}/not-a-uuid", headers=headers),
        client.get("/api/v1/whoami", headers=headers),
    ]
    for resp in calls:
        assert_error(resp, 401, "UNAUTHENTICATED")
        assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("role", ["user", "supervisor", "admin"])
def test_whoami_names_the_tokens_principal_its_owner_and_its_role(
    client: TestClient, make_caller: Any, role: str
) -> None:
    token, caller = make_caller(None, role)
    resp = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"principalId": str(caller.principal_id), "ownerId": caller.owner_id, "role": role}


def test_health_and_schema_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/openapi.json").status_code == 200


# --- the status transition table --------------------------------------------------------


def test_every_move_off_the_transition_table_is_invalid_transition_with_allowed_targets(actor: Any) -> None:
    user = actor()
    checked = 0
    for current in Status:
        cid = contract_in(user, current)
        allowed = sorted(s.value for s in ALLOWED[current])
        for target in Status:
            if target in ALLOWED[current]:
                continue
            details = assert_error(
                user.status(cid, target.value, reason="because", blocker="something"),
                400,
                "INVALID_TRANSITION",
            )
            assert details == {
                "currentStatus": current.value,
                "targetStatus": target.value,
                "allowedTargets": allowed,
            }
            checked += 1
        assert user.get(cid)["status"] == current.value  # every refusal left it alone
    assert checked == sum(len(Status) - len(ALLOWED[s]) for s in Status)


def test_status_change_answers_the_seed_change_status_response(actor: Any) -> None:
    user = actor()
    cid = user.create()
    resp = user.status(cid, "active")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {k: body[k] for k in ("success", "previousStatus", "newStatus", "rejectionReason")} == {
        "success": True,
        "previousStatus": "created",
        "newStatus": "active",
        "rejectionReason": None,
    }
    assert body["contract"]["status"] == "active"
    blocked = user.status(cid, "blocked")
    assert assert_error(blocked, 400, "VALIDATION_FAILED")["missing"] == ["blocker"]


# --- bad input: always the caller's 4xx, in the error shape -----------------------------


def test_malformed_json_is_a_400_invalid_request(actor: Any) -> None:
    user = actor()
    cid = user.active()
    resp = user.client.post(
        f"{BASE}/{cid}/phase",
        content=b'{"phase": "execute",',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    details = assert_error(resp, 400, "INVALID_REQUEST")
    assert details["problems"][0]["type"] == "json_invalid"


def test_unknown_field_is_a_422_listing_the_known_fields(actor: Any) -> None:
    user = actor()
    cid = user.active()
    details = assert_error(user.phase(cid, "execute", expected_versoin=1), 422, "INVALID_REQUEST")
    (problem,) = details["problems"]
    assert problem["field"] == "expected_versoin" and problem["type"] == "extra_forbidden"
    assert problem["allowed"] == ["phase", "expectedVersion", "confirmed", "force"]


def test_wrong_types_are_a_422_naming_each_field(actor: Any) -> None:
    user = actor()
    cid = user.active()
    details = assert_error(
        user.phase(cid, "execute", expectedVersion="3", force="yes"), 422, "INVALID_REQUEST"
    )
    assert sorted(p["field"] for p in details["problems"]) == ["expectedVersion", "force"]
    nested = assert_error(
        user.call("POST", BASE, {"name": 5, "contractType": ["simple"]}), 422, "INVALID_REQUEST"
    )
    assert sorted(p["field"] for p in nested["problems"]) == ["contractType", "name"]
    missing = assert_error(user.call("POST", f"{BASE}/{cid}/status", {}), 422, "INVALID_REQUEST")
    assert missing["problems"] == [
        {"field": "targetStatus", "in": "body", "type": "missing", "problem": "is required"}
    ]


def test_unknown_status_is_a_422_naming_the_allowed_statuses(actor: Any) -> None:
    user = actor()
    cid = user.create()
    every = [s.value for s in Status]
    details = assert_error(user.status(cid, "done"), 422, "INVALID_REQUEST")
    (problem,) = details["problems"]
    assert (problem["field"], problem["given"], problem["allowed"]) == ("targetStatus", "done", every)

    listed = assert_error(user.call("GET", BASE, status="active,finished"), 422, "INVALID_REQUEST")
    (problem,) = listed["problems"]
    assert (problem["field"], problem["in"], problem["given"], problem["allowed"]) == (
        "status",
        "query",
        "finished",
        every,
    )


def test_a_contract_id_that_is_not_a_uuid_is_no_endpoint(actor: Any) -> None:
    """Contract ids match only UUIDs, so `/dashboard` or `/batch` can never be taken for one."""
    user = actor()
    for segment in ("42", "not-a-uuid", "dashboards"):
        assert_error(user.call("GET", f"{BASE}/{segment}"), 404, "NOT_FOUND")
    # `/batch` is an endpoint of its own (admin only), never a contract id.
    assert_error(user.call("GET", f"{BASE}/batch"), 403, "FORBIDDEN")
    assert "UUID" in user.call("GET", f"{BASE}/42").json()["error"]["message"]


def test_a_404_for_an_id_that_is_not_a_uuid_names_that_id(actor: Any) -> None:
    user = actor()
    cid = user.call("POST", BASE, {"name": "ids", "contractType": "simple"}).json()["id"]
    question = user.call("GET", f"{BASE}/{cid}/questions/not-a-uuid").json()["error"]
    assert question["code"] == "NOT_FOUND" and question["details"] == {"field": "questionId"}
    assert "Question ids are UUIDs" in question["message"] and "Contract" not in question["message"]
    contract = user.call("GET", f"{BASE}/not-a-uuid/questions").json()["error"]
    assert "Contract ids are UUIDs" in contract["message"] and contract["details"] == {"field": "id"}
    unknown = user.call("GET", f"{BASE}/{cid}/no-such-thing").json()["error"]
    assert unknown["code"] == "NOT_FOUND" and "UUID" not in unknown["message"]


def test_an_id_in_another_spelling_than_a_heartbeats_is_refused_on_every_path_naming_it_and_the_form(
    actor: Any, http_app: Any
) -> None:
    """Heartbeats take 32 ASCII hex digits, 8-4-4-4-12 or unhyphenated, either case (UUID_FORM).
    Starlette's path ids made each hyphen optional and pydantic's UUID read braces and urn:uuid:,
    so the same task or contract had spellings here that its heartbeats were refused for."""
    daemon = actor(role="supervisor")
    cid = daemon.create()
    task = uuid.uuid4()
    # A contract id in the path: no route, a 404 naming the id and the form.
    half = f"{cid[:8]}{cid[9:]}"  # one hyphen left out, the other three kept
    for path in (f"{BASE}/{half}", f"{BASE}/{half}/supervisor/state"):
        missing = daemon.call("GET", path).json()["error"]
        assert (missing["code"], missing["details"]) == ("NOT_FOUND", {"field": "id"}), missing
        assert missing["message"].endswith(f"Contract ids are UUIDs: {UUID_FORM}.")
    # A task id in the path, in a body and in a query: 422 naming the field, in the heartbeat's words.
    braces, urn = "{" + str(task) + "}", f"urn:uuid:{task}"
    save = {"taskId": str(task), "stateVersion": 1, "state": "working", "phase": "plan"}
    refused = {
        ("path", "taskId", urn): daemon.call(
            "POST", f"{BASE}/{cid}/tasks/{urn}/started", {"taskName": "build"}
        ),
        ("body", "taskId", braces): daemon.call(
            "POST", f"{BASE}/{cid}/supervisor/state", {**save, "taskId": braces}
        ),
        ("body", "spawnedTaskIds[0]", urn): daemon.call(
            "POST", f"{BASE}/{cid}/supervisor/state", {**save, "spawnedTaskIds": [urn]}
        ),
        ("query", "taskId", urn): daemon.call("GET", f"{BASE}/{cid}/supervisor/restoration", taskId=urn),
        ("query", "taskId", braces): daemon.call("GET", f"{BASE}/{cid}/supervisor/state", taskId=braces),
        ("body", "taskId", urn): actor().call("POST", f"{BASE}/{cid}/supervisor/restart", {"taskId": urn}),
        ("query", "contractIds", braces.replace(str(task), cid)): daemon.call(
            "GET", f"{BASE}/events/stream", contractIds=braces.replace(str(task), cid)
        ),
    }
    for (where, field, given), resp in refused.items():
        details = assert_error(resp, 422, "INVALID_REQUEST")
        (problem,) = details["problems"]
        assert (problem["in"], problem["field"], problem["given"]) == (where, field, given), problem
        assert problem["problem"] == f"'{given}' is not a UUID: {UUID_FORM}", problem
    # Either case, with or without hyphens, is the same id wherever it is sent.
    assert daemon.ok("GET", f"{BASE}/{uuid.UUID(cid).hex.upper()}")["id"] == cid
    started = daemon.call("POST", f"{BASE}/{cid}/tasks/{task.hex.upper()}/started", {"taskName": "build"})
    assert started.status_code == 202, started.text
    # One convertor routes every path id, so none of them is looser than the others.
    question = daemon.call("GET", f"{BASE}/{cid}/questions/{half}").json()["error"]
    assert (question["code"], question["details"]) == ("NOT_FOUND", {"field": "questionId"}), question
    assert question["message"].endswith(f"Question ids are UUIDs: {UUID_FORM}.")
    batch = actor(role="admin").call("GET", f"{BASE}/batch/{half}").json()["error"]
    assert batch["code"] == "NOT_FOUND" and batch["message"].startswith("No endpoint at GET"), batch

    def routes(found: list[Any]) -> Iterator[Any]:
        for route in found:
            included = getattr(route, "original_router", None)
            yield from routes(included.routes) if included is not None else [route]

    path_ids = [
        (route.path, convertor)
        for route in routes(http_app.routes)
        for name, convertor in getattr(route, "param_convertors", {}).items()
        if name in ("id", "questionId", "batchId")
    ]
    assert path_ids and not [found for found in path_ids if isinstance(found[1], UUIDConvertor)]


def test_a_405_names_the_methods_the_path_allows(actor: Any) -> None:
    user = actor()
    details = assert_error(user.call("DELETE", f"{BASE}/dashboard"), 405, "METHOD_NOT_ALLOWED")
    assert details == {"method": "DELETE", "allowed": ["GET"]}
    resp = user.call("PUT", f"{BASE}/dashboard")
    assert (
        resp.json()["error"]["message"] == "PUT is not allowed at /api/v1/contracts/dashboard; allowed: GET."
    )
    assert resp.headers["Allow"] == "GET"


@pytest.mark.parametrize("segment", ["dashboard", "batch", "monitor"])
def test_static_paths_beside_contract_ids_are_not_routed_to_the_contract_handler(
    http_app: Any, actor: Any, segment: str
) -> None:
    from starlette.routing import Match

    from app.http import contracts

    path = f"{BASE}/{segment}"
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    matched = [route for route in http_app.router.routes if route.matches(scope)[0] is Match.FULL]
    assert all(getattr(route, "endpoint", None) is not contracts.get_contract for route in matched)
    if segment == "batch":  # an admin-only endpoint of its own
        assert_error(actor().call("GET", path), 403, "FORBIDDEN")
    elif segment == "dashboard":  # an endpoint of its own (app.http.dashboard)
        assert actor().call("GET", path).status_code == 200
    else:
        assert_error(actor().call("GET", path), 404, "NOT_FOUND")


def test_ids_that_are_not_uuids_and_out_of_range_queries_are_422(actor: Any) -> None:
    user = actor()
    cid = user.create()
    task = assert_error(
        user.call("POST", f"{BASE}/{cid}/tasks/t-1/completed", {"taskName": "x", "success": True}),
        422,
        "INVALID_REQUEST",
    )
    assert task["problems"][0]["field"] == "taskId"
    for params in ({"limit": 0}, {"limit": 501}, {"threshold": "soon"}, {"stale": "maybe"}):
        assert_error(user.call("GET", BASE, **params), 422, "INVALID_REQUEST")
    assert_error(user.call("GET", BASE, cursor="bm90IGEgY3Vyc29y"), 400, "VALIDATION_FAILED")
    # A hand-made cursor with a naive timestamp decodes, then the database layer refuses it.
    naive = base64.urlsafe_b64encode(f"2024-01-01T00:00:00|{uuid.uuid4()}".encode()).decode()
    resp = user.call("GET", BASE, cursor=naive)
    assert resp.status_code == 400, resp.text


def test_a_value_too_long_to_store_is_a_400_not_a_500(actor: Any) -> None:
    user = actor()
    long_phase = "p" * 150  # the domain accepts it; the phase column holds 100 characters
    resp = user.call(
        "POST",
        BASE,
        {"name": "long", "contractType": "custom", "phaseConfig": {"phases": [{"id": long_phase}]}},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("INVALID_REQUEST", "VALIDATION_FAILED")


def test_unexpected_failures_are_a_500_that_leaks_nothing(make_caller: Any) -> None:
    def broken_sender(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        raise RuntimeError("redis password is hunter2")

    token, _ = make_caller()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sender=broken_sender), raise_server_exceptions=False) as broken:
        cid = broken.post(BASE, json={"name": "x", "contractType": "simple"}, headers=headers).json()["id"]
        resp = broken.post(
            f"{BASE}/{cid}/tasks/{uuid.uuid4()}/completed",
            json={"taskName": "x", "success": True},
            headers=headers,
        )
    details = assert_error(resp, 500, "INTERNAL_ERROR")
    assert set(details) == {"reference"}
    assert "hunter2" not in resp.text and "Traceback" not in resp.text and "RuntimeError" not in resp.text


def test_every_domain_error_code_has_an_http_status() -> None:
    def family(cls: type[ContractError]) -> list[type[ContractError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in family(sub))]

    codes = {cls.code for cls in family(ContractError) if cls is not ContractError}
    assert codes <= set(ERROR_STATUS), codes - set(ERROR_STATUS)
    assert codes <= {c.value for c in ErrorCode}, "every domain code is an ErrorCode on the wire"
    assert all(cls in STATUS_BY_ERROR for cls in family(ContractError))
    assert ERROR_STATUS == {
        "CONTRACT_NOT_FOUND": 404,
        "INVALID_TRANSITION": 400,
        "VERSION_CONFLICT": 409,
        "PHASE_GUARD_REQUIRED": 409,
        "INVALID_DELIVERABLE": 400,
        "SUPERVISOR_NOT_FOUND": 404,
        "SUPERVISOR_DEAD": 503,
        "VALIDATION_FAILED": 400,
        "FORBIDDEN": 403,
        "FEATURE_DISABLED": 503,
        "SUPERVISOR_FENCED": 409,
        "INCARNATION_NOT_ISSUED": 409,
        "STALE_STATE": 409,
        "STATE_VERSION_REUSED": 409,
        "HISTORY_GAP": 409,
        "QUESTION_NOT_FOUND": 404,
        "QUESTION_CLOSED": 409,
        "QUESTION_ID_REUSED": 409,
    }


# --- listing ----------------------------------------------------------------------------


def test_list_filters_by_status_phase_waiting_and_staleness(actor: Any) -> None:
    user = actor()
    created = contract_in(user, Status.CREATED)
    active = contract_in(user, Status.ACTIVE)
    paused = contract_in(user, Status.PAUSED)
    waiting = contract_in(user, Status.WAITING_FOR_INPUT)
    failed = contract_in(user, Status.FAILED)
    executing = user.active()
    assert user.phase(executing, "execute", force=True).status_code == 200
    set_last_activity(created, timedelta(hours=3))
    set_last_activity(active, timedelta(minutes=40))
    set_last_activity(failed, timedelta(days=2))  # old, but finished work is never stale

    def ids(**params: Any) -> set[str]:
        return {c["id"] for c in user.ok("GET", BASE, **params)["contracts"]}

    assert ids() == {created, active, paused, waiting, failed, executing}
    assert ids(status="active,paused") == {active, paused, executing}
    assert ids(status=" paused , failed ") == {paused, failed}
    assert ids(phase="execute") == {executing}
    assert ids(waiting="true") == {waiting}
    assert ids(stale="true") == {created, active}  # the configured 30 minutes
    assert ids(stale="true", threshold="1h") == {created}
    assert ids(threshold="30m") == {created, active}
    assert ids(stale="true", threshold="4h") == set()
    assert ids(stale="true", threshold="45s", status="active") == {active}
    assert_error(user.call("GET", BASE, stale="false", threshold="1h"), 422, "INVALID_REQUEST")


def test_supervised_lists_only_the_contracts_whose_supervisor_has_reported(
    actor: Any, make_caller: Any
) -> None:
    """Exactly the contracts whose `.../supervisor/status` answers: a reader (the dashboard
    page) asks only those, and meets no SUPERVISOR_NOT_FOUND."""
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    user = actor(owner)
    heard, silent = user.active(), user.active()
    _, daemon = make_caller(owner, "supervisor")
    beat = {
        "taskId": str(uuid.uuid4()),
        "contractId": heard,
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }
    heartbeats.ingest(message_of({daemon.principal_id: [beat]}))

    def ids(**params: Any) -> set[str]:
        return {c["id"] for c in user.ok("GET", BASE, **params)["contracts"]}

    assert ids() == {heard, silent}
    assert ids(supervised="true") == {heard}
    assert ids(supervised="true", status="paused") == set()
    assert user.ok("GET", f"{BASE}/{heard}/supervisor/status")["taskId"] == beat["taskId"]
    assert_error(user.call("GET", f"{BASE}/{silent}/supervisor/status"), 404, "SUPERVISOR_NOT_FOUND")
    # Another owner's supervised contract is not listed, as no other of its contracts is.
    assert {c["id"] for c in actor().ok("GET", BASE, supervised="true")["contracts"]} == set()


def test_pages_of_limit_and_cursor_return_every_contract_exactly_once(actor: Any) -> None:
    user = actor()
    made = [user.create(name=f"c{i}") for i in range(7)]
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = user.ok("GET", BASE, **params)
        pages += 1
        seen += [c["id"] for c in page["contracts"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    assert seen == list(reversed(made))  # newest first


# --- events -----------------------------------------------------------------------------


def test_events_are_exactly_the_state_changes_made_in_order_and_after_returns_only_later_ones(
    actor: Any,
) -> None:
    user = actor()
    cid = user.create()
    user.status(cid, "active")
    user.deliver(cid, "plan-document")
    user.deliver(cid, "plan-document")  # no change, so no event
    user.phase(cid, "execute")
    user.status(cid, "paused")
    user.phase(cid, "plan", force=True)  # refused while paused: no event
    user.status(cid, "active")

    events = user.events(cid)
    assert [(e["type"], e["payload"].get("newStatus") or e["payload"].get("newPhase")) for e in events] == [
        ("contract_created", None),
        ("status_changed", "active"),
        ("deliverable_completed", None),
        ("phase_changed", "execute"),
        ("status_changed", "paused"),
        ("status_changed", "active"),
    ]
    assert events[2]["payload"]["deliverableId"] == "plan-document"
    assert events[3]["payload"] == {
        "contractId": cid,
        "oldPhase": "plan",
        "newPhase": "execute",
        "version": 2,
        "forced": False,
        "confirmed": False,
    }
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e["contractId"] == cid for e in events)

    later = user.ok("GET", f"{BASE}/{cid}/events", after=ids[2])
    assert [e["id"] for e in later["events"]] == ids[3:]
    assert later["lastEventId"] == ids[-1]
    assert user.events(cid, after=ids[0], limit=2) == events[1:3]
    empty = user.ok("GET", f"{BASE}/{cid}/events", after=ids[-1])
    assert empty == {"events": [], "lastEventId": ids[-1]}


# --- completion, auto-complete ----------------------------------------------------------


def test_check_completion_reports_what_is_missing_and_auto_complete_toggles(actor: Any) -> None:
    user = actor()
    cid = user.active()
    check = user.ok("POST", f"{BASE}/{cid}/check-completion")
    assert check["ready"] is False and check["wouldComplete"] is False
    assert any("plan-document" in m for m in check["missing"])

    user.deliver(cid, "plan-document")
    assert user.ok("POST", f"{BASE}/{cid}/check-completion")["ready"] is True

    on = user.ok("PUT", f"{BASE}/{cid}/auto-complete", {"enabled": True})
    assert on["autoCompleteEnabled"] is True
    assert user.ok("PUT", f"{BASE}/{cid}/auto-complete", {"enabled": False})["autoCompleteEnabled"] is False
    assert [e["type"] for e in user.events(cid)].count("auto_complete_changed") == 2


# --- daemon-facing reports --------------------------------------------------------------


def take_from_broker(task_ids: list[str]) -> list[dict[str, Any]]:
    """Remove exactly these Celery messages from this run's Redis queue; returns task and payload.

    Taking them out keeps them from reaching a worker that a later test module starts.
    """
    import redis

    from app.config import get_settings
    from app.queues import Queue

    settings = get_settings()
    client = redis.Redis.from_url(settings.effective_broker_url)
    key = f"{settings.broker_key_prefix}{Queue.CONTRACTS.value}"
    taken: list[dict[str, Any]] = []
    try:
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"]["id"] in task_ids:
                client.lrem(key, 1, raw)
                args = json.loads(base64.b64decode(message["body"]))[0]
                taken.append(
                    {"id": message["headers"]["id"], "task": message["headers"]["task"], "payload": args[0]}
                )
    finally:
        client.close()
    return taken


def test_task_completed_is_accepted_with_a_message_id_and_enqueued(make_caller: Any) -> None:
    """Through the real Celery sender: the report sits on Redis and the caller has 202 at once."""
    from app.broker import send_task as _celery_send

    celery_ids: list[str] = []

    def celery_and_record(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        celery_ids.append(_celery_send(task, payload, countdown))
        return celery_ids[-1]

    token, caller = make_caller(role="supervisor")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sender=celery_and_record)) as daemon:
        cid = daemon.post(BASE, json={"name": "d", "contractType": "simple"}, headers=headers).json()["id"]
        task_id = str(uuid.uuid4())
        resp = daemon.post(
            f"{BASE}/{cid}/tasks/{task_id}/completed",
            json={"taskName": "implement", "success": True},
            headers=headers,
        )
        assert resp.status_code == 202, resp.text
        message_id = resp.json()["messageId"]
        uuid.UUID(message_id)

        chosen = daemon.post(
            f"{BASE}/{cid}/tasks/{task_id}/completed",
            json={"taskName": "implement", "success": True, "messageId": "daemon-7"},
            headers=headers,
        )
        assert (chosen.status_code, chosen.json()) == (202, {"messageId": "daemon-7"})
        started = daemon.post(
            f"{BASE}/{cid}/tasks/{uuid.uuid4()}/started",
            json={"taskName": "supervisor", "isSupervisor": True},
            headers=headers,
        )
        worktree = daemon.post(f"{BASE}/{cid}/worktrees", json={"path": "/srv/wt/a"}, headers=headers)
        assert started.status_code == 202 and worktree.status_code == 202

    on_redis = sorted(take_from_broker(celery_ids), key=lambda m: celery_ids.index(m["id"]))
    assert [m["task"] for m in on_redis] == [
        "contracts.task_completed",
        "contracts.task_completed",
        "contracts.task_started",
        "contracts.worktree_created",
    ]
    assert on_redis[0]["payload"] == {
        "messageId": message_id,
        "principalId": str(caller.principal_id),
        "contractId": cid,
        "taskId": task_id,
        "taskName": "implement",
        "success": True,
    }
    assert on_redis[1]["payload"]["messageId"] == "daemon-7"


# --- the published schema ---------------------------------------------------------------


def test_openapi_documents_the_request_bodies_and_bearer_auth(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    phase = components["ChangePhaseRequest"]
    assert set(phase["properties"]) == {"phase", "expectedVersion", "confirmed", "force"}
    assert phase["additionalProperties"] is False
    assert set(components["ChangeStatusRequest"]["properties"]) == {
        "targetStatus",
        "reason",
        "blocker",
        "waitingFor",
    }
    assert "ErrorBody" in components
    post = schema["paths"]["/api/v1/contracts/{id}/phase"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChangePhaseRequest")
    assert {"400", "401", "404", "409", "422"} <= set(post["responses"])
    assert any(s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values())
