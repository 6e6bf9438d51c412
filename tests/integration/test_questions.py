"""Questions a supervisor asks a person, end to end: HTTP → PostgreSQL → real worker → Redis.

A supervisor (a daemon acting for the owner) asks; a person of the owner answers; the answer
reaches the asking daemon as an `answer_question` command on its queue in this run's Redis
keyspace, published by a real `celery worker` from the command outbox. The contract waits for
input while any question it waits on is open and returns to `active` with the last answer.
The HTTP app sends through the real Celery sender, so every follow-up (a supervisor's start,
the command publishing, heartbeats) goes the way production sends it.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.api import ContractsAPI
from app.auth import Role, create_token
from app.broker import daemon_queue
from app.config import get_settings
from app.db import unit_of_work
from app.domain.questions import MAX_CONTEXT, MAX_OPTION, MAX_OPTIONS, MAX_QUESTION
from app.http import create_app
from app.models import DaemonCommand, Supervisor
from app.question_reads import MAX_PAGE, QUESTION_PAGE_BYTES
from tests.integration.helpers import contract_row, event_types
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("questions"), queues="contracts,heartbeats,sweeps", concurrency=2
    )
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:  # the real Celery sender
        yield c


@dataclass
class Actor:
    client: TestClient
    token: str

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is None:
            return self.client.request(method, path, headers=headers, params=params)
        return self.client.request(method, path, headers=headers, params=params, json=body)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200, **params: Any) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == expect, resp.text
        return resp.json()


def actor(client: TestClient, owner: str, role: str) -> Actor:
    with unit_of_work() as uow:
        return Actor(client, create_token(uow.session, owner, Role(role), name=f"questions-{role}"))


@dataclass
class Team:
    """One owner's person and supervisor, an operator, and an active contract of the owner."""

    person: Actor
    supervisor: Actor
    admin: Actor
    cid: str
    supervisor_task: str
    owner: str

    def ask(self, expect: int = 201, **fields: Any) -> Any:
        body = {"question": "Which database?", "type": "free_text", **fields}
        return self.supervisor.ok("POST", f"{BASE}/{self.cid}/questions", body, expect=expect)

    def answer(self, question_id: str, answer: Any, who: Actor | None = None, expect: int = 200) -> Any:
        path = f"{BASE}/{self.cid}/questions/{question_id}/answer"
        return (who or self.person).ok("POST", path, {"answer": answer}, expect=expect)

    def contract(self) -> Any:
        return self.person.ok("GET", f"{BASE}/{self.cid}")

    def open_ids(self) -> list[str]:
        page = self.person.ok("GET", f"{BASE}/{self.cid}/questions", open="true")
        return [q["id"] for q in page["questions"]]


@pytest.fixture
def team(client: TestClient) -> Team:
    owner = f"questions-{uuid.uuid4().hex[:8]}"
    person, supervisor = actor(client, owner, "user"), actor(client, owner, "supervisor")
    admin = actor(client, f"operators-{uuid.uuid4().hex[:6]}", "admin")
    cid = supervisor.ok("POST", BASE, {"name": "ask a person", "contractType": "simple"}, expect=201)["id"]
    task = str(uuid.uuid4())
    supervisor.ok(
        "POST",
        f"{BASE}/{cid}/tasks/{task}/started",
        {"taskName": "supervisor", "isSupervisor": True},
        expect=202,
    )
    wait_for(lambda: contract_row(uuid.UUID(cid)).status == "active", what="supervisor start → active")
    return Team(person, supervisor, admin, cid, task, owner)


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    return dict(error["details"])


def commands(cid: str) -> list[DaemonCommand]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(DaemonCommand)
                .where(
                    DaemonCommand.contract_id == uuid.UUID(cid), DaemonCommand.command == "answer_question"
                )
                .order_by(DaemonCommand.id)
            )
        )


def queued_commands(owner: str, daemon_id: str | None, cid: str) -> list[dict[str, Any]]:
    """The daemon commands for contract `cid` waiting on owner `owner`'s daemon `daemon_id`'s
    queue in this run's Redis."""
    settings = get_settings()
    key = f"{settings.broker_key_prefix}{daemon_queue(owner, daemon_id).name}"
    client = redis.Redis.from_url(settings.effective_broker_url)
    try:
        bodies = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()
    found = []
    for message in bodies:
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        command = json.loads(body)
        if command["contractId"] == cid:
            found.append(command)
    return found


# --- the round trip ---------------------------------------------------------------------------------


def test_two_open_questions_answered_out_of_order_keep_the_contract_waiting_until_the_last(
    team: Team,
) -> None:
    # The supervisor's daemon is known from its heartbeats: answers with no daemon named go to it.
    ContractsAPI(team.supervisor.token).send_heartbeat(
        uuid.UUID(team.cid), uuid.UUID(team.supervisor_task), "working", "plan", daemon_id="daemon-hb"
    )
    ContractsAPI(team.supervisor.token).flush()
    wait_for(
        lambda: _daemon_of_supervisor(team.supervisor_task) == "daemon-hb",
        what="the supervisor's daemon heard",
    )

    first = team.ask(
        question="Which database?",
        type="single_choice",
        options=["PostgreSQL", "SQLite"],
        context="The service needs one for the event log.",
        taskId=team.supervisor_task,
        daemonId="daemon-q1",
    )
    assert (first["status"], first["answer"], first["options"]) == ("open", None, ["PostgreSQL", "SQLite"])
    assert (team.contract()["status"], team.contract()["waitingFor"]) == ("waiting_for_input", "question")
    second = team.ask(
        question="May I delete the old branch?", type="confirmation", taskId=team.supervisor_task
    )
    assert (team.contract()["status"], team.contract()["waitingFor"]) == ("waiting_for_input", "question")
    assert team.open_ids() == [first["id"], second["id"]]  # oldest first

    # The second answered first: the first is still open, so the contract still waits.
    later = team.answer(second["id"], True)
    assert later["question"]["status"] == "answered" and later["question"]["answer"] is True
    assert (later["contractStatus"], later["waitingFor"]) == ("waiting_for_input", "question")
    assert team.open_ids() == [first["id"]]

    last = team.answer(first["id"], "PostgreSQL")
    assert (last["contractStatus"], last["waitingFor"]) == ("active", None)
    assert team.contract()["status"] == "active"
    assert team.open_ids() == []
    answered = team.person.ok("GET", f"{BASE}/{team.cid}/questions", open="false")["questions"]
    assert [(q["id"], q["answer"]) for q in answered] == [(first["id"], "PostgreSQL"), (second["id"], True)]

    types = [t for t in event_types(uuid.UUID(team.cid)) if t.startswith("question") or t == "status_changed"]
    assert types == [
        "status_changed",  # created → active (the supervisor started)
        "question_asked",
        "status_changed",  # active → waiting_for_input
        "question_asked",
        "question_answered",
        "question_answered",
        "status_changed",  # waiting_for_input → active
    ]

    # Each answer is one command, on the queue of the daemon that should act on it.
    stored = commands(team.cid)
    assert [c.id for c in stored] == [later["commandId"], last["commandId"]]
    assert [c.daemon_id for c in stored] == ["daemon-hb", "daemon-q1"]
    on_q1 = wait_for(
        lambda: queued_commands(team.owner, "daemon-q1", team.cid), what="the answer on daemon-q1's queue"
    )
    on_hb = wait_for(
        lambda: queued_commands(team.owner, "daemon-hb", team.cid), what="the answer on daemon-hb's queue"
    )
    assert [(c["commandId"], c["command"]) for c in on_q1] == [(last["commandId"], "answer_question")]
    assert on_q1[0]["payload"] == {
        "questionId": first["id"],
        "taskId": team.supervisor_task,
        "question": "Which database?",
        "answer": "PostgreSQL",
        "answeredAt": last["question"]["answeredAt"],
    }
    assert [(c["commandId"], c["payload"]["answer"]) for c in on_hb] == [(later["commandId"], True)]


def _daemon_of_supervisor(task: str) -> str | None:
    with unit_of_work() as uow:
        row = uow.session.get(Supervisor, uuid.UUID(task))
        return row.daemon_id if row else None


# --- who may do what --------------------------------------------------------------------------------


def test_a_supervisor_may_not_answer_and_a_user_may_neither_ask_nor_withdraw(team: Team) -> None:
    asked = team.ask()
    before = event_types(uuid.UUID(team.cid))

    refused = team.supervisor.call(
        "POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": "PostgreSQL"}
    )
    details = assert_error(refused, 403, "FORBIDDEN")
    assert details == {"role": "supervisor", "allowedRoles": ["user", "admin"]}
    assert "a person decides" in refused.json()["error"]["message"]
    assert "operator" not in refused.json()["error"]["message"], (
        "a person of the owner answers, not an operator"
    )
    # Leaving the question's wait is a person's decision too, named in the same order.
    leave = team.supervisor.call("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "active"})
    assert assert_error(leave, 403, "FORBIDDEN") == {"role": "supervisor", "allowedRoles": ["user", "admin"]}
    assert "operator" not in leave.json()["error"]["message"]

    ask = team.person.call("POST", f"{BASE}/{team.cid}/questions", {"question": "Mine?", "type": "free_text"})
    assert assert_error(ask, 403, "FORBIDDEN") == {"role": "user", "allowedRoles": ["supervisor", "admin"]}
    withdraw = team.person.call("POST", f"{BASE}/{team.cid}/questions/{asked['id']}/cancel")
    assert assert_error(withdraw, 403, "FORBIDDEN")["allowedRoles"] == ["supervisor", "admin"]

    assert event_types(uuid.UUID(team.cid)) == before, "a refused call changed the contract"
    assert team.open_ids() == [asked["id"]]
    assert commands(team.cid) == []
    # An operator of another owner is both sides.
    assert team.answer(asked["id"], "PostgreSQL", who=team.admin)["question"]["answeredBy"] is not None


def test_another_owners_people_and_supervisors_find_no_contract(team: Team, client: TestClient) -> None:
    asked = team.ask()
    for role in ("user", "supervisor"):
        stranger = actor(client, f"strangers-{uuid.uuid4().hex[:8]}", role)
        calls = [
            ("GET", f"{BASE}/{team.cid}/questions", None),
            ("GET", f"{BASE}/{team.cid}/questions/{asked['id']}", None),
            ("POST", f"{BASE}/{team.cid}/questions", {"question": "Mine?", "type": "free_text"}),
            ("POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": "SQLite"}),
            ("POST", f"{BASE}/{team.cid}/questions/{asked['id']}/cancel", None),
        ]
        for method, path, body in calls:
            details = assert_error(stranger.call(method, path, body), 404, "CONTRACT_NOT_FOUND")
            assert details == {"contractId": team.cid}, (role, method, path)
        # Its own contract does not open another contract's question either.
        own = stranger.ok("POST", BASE, {"name": "theirs", "contractType": "simple"}, expect=201)["id"]
        details = assert_error(
            stranger.call("GET", f"{BASE}/{own}/questions/{asked['id']}"), 404, "QUESTION_NOT_FOUND"
        )
        assert details == {"contractId": own, "questionId": asked["id"]}
    assert team.open_ids() == [asked["id"]]


# --- one answer -------------------------------------------------------------------------------------


def test_answering_twice_is_one_answer_and_another_answer_is_question_closed(team: Team) -> None:
    asked = team.ask(question="Which checks?", type="multiple_choice", options=["lint", "types", "tests"])
    first = team.answer(asked["id"], ["tests", "lint"])
    assert first["question"]["answer"] == ["lint", "tests"]  # kept in the options' order
    again = team.answer(asked["id"], ["lint", "tests"])  # the same answer, in another order
    assert again == first
    assert event_types(uuid.UUID(team.cid)).count("question_answered") == 1
    assert len(commands(team.cid)) == 1

    other = team.person.call(
        "POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": ["types"]}
    )
    details = assert_error(other, 409, "QUESTION_CLOSED")
    assert (details["status"], details["answer"], details["answeredAt"]) == (
        "answered",
        ["lint", "tests"],
        first["question"]["answeredAt"],
    )
    withdrawn = team.supervisor.call("POST", f"{BASE}/{team.cid}/questions/{asked['id']}/cancel")
    assert assert_error(withdrawn, 409, "QUESTION_CLOSED")["status"] == "answered"
    assert len(commands(team.cid)) == 1


@pytest.mark.parametrize(
    ("kind", "options", "wrong", "allowed"),
    [
        ("free_text", None, "   ", None),
        ("free_text", None, "x" * 10_001, None),
        ("free_text", None, True, None),
        ("single_choice", ["staging", "production"], "qa", ["staging", "production"]),
        ("single_choice", ["staging", "production"], ["staging"], ["staging", "production"]),
        ("multiple_choice", ["lint", "tests"], [], ["lint", "tests"]),
        ("multiple_choice", ["lint", "tests"], ["lint", "lint"], ["lint", "tests"]),
        ("multiple_choice", ["lint", "tests"], ["lint", "docs"], ["lint", "tests"]),
        ("multiple_choice", ["lint", "tests"], "lint", ["lint", "tests"]),
        ("confirmation", None, "yes", None),
    ],
)
def test_an_answer_that_does_not_fit_the_question_is_refused_naming_what_is_allowed(
    team: Team, kind: str, options: list[str] | None, wrong: Any, allowed: list[str] | None
) -> None:
    asked = team.ask(question="Decide", type=kind, **({"options": options} if options else {}))
    resp = team.person.call("POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": wrong})
    details = assert_error(resp, 400, "VALIDATION_FAILED")
    assert (details["field"], details["type"]) == ("answer", kind)
    assert details.get("allowed") == allowed
    assert details["expected"] in resp.json()["error"]["message"]
    assert team.open_ids() == [asked["id"]]
    assert team.contract()["status"] == "waiting_for_input"


def test_an_answer_of_no_json_answer_type_is_an_invalid_request(team: Team) -> None:
    asked = team.ask(type="confirmation")
    for wrong in (1, None, {"value": True}, [1, 2]):
        resp = team.person.call(
            "POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": wrong}
        )
        assert_error(resp, 422, "INVALID_REQUEST")
    missing = team.person.call("POST", f"{BASE}/{team.cid}/questions/{uuid.uuid4()}/answer", {"answer": True})
    assert assert_error(missing, 404, "QUESTION_NOT_FOUND")["contractId"] == team.cid


# --- asking -----------------------------------------------------------------------------------------


def test_asking_again_with_the_same_id_is_the_same_question_and_other_content_is_refused(
    team: Team, client: TestClient
) -> None:
    question_id = str(uuid.uuid4())
    fields = {"questionId": question_id, "type": "single_choice", "options": ["yes", "no"]}
    first = team.ask(**fields)
    assert team.ask(expect=200, **fields) == first
    assert event_types(uuid.UUID(team.cid)).count("question_asked") == 1

    changed = team.supervisor.call(
        "POST",
        f"{BASE}/{team.cid}/questions",
        {"question": "Which database?", **fields, "options": ["no", "yes"], "context": "now"},
    )
    details = assert_error(changed, 409, "QUESTION_ID_REUSED")
    assert details == {"questionId": question_id, "differs": ["options", "context"]}

    # The id is taken on another contract too, without saying whose.
    stranger = actor(client, f"strangers-{uuid.uuid4().hex[:8]}", "supervisor")
    theirs = stranger.ok("POST", BASE, {"name": "theirs", "contractType": "simple"}, expect=201)["id"]
    elsewhere = stranger.call("POST", f"{BASE}/{theirs}/questions", {"question": "Which database?", **fields})
    assert assert_error(elsewhere, 409, "QUESTION_ID_REUSED") == {"questionId": question_id, "differs": []}
    assert team.open_ids() == [question_id]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"type": "single_choice"}, "options", "needs 2 to 20 options; it has 0"),
        ({"type": "multiple_choice", "options": ["a", "a"]}, "options", "repeats the option 'a'"),
        ({"type": "free_text", "options": ["a", "b"]}, "options", "takes no options"),
        ({"type": "confirmation", "question": "  "}, "question", "empty"),
    ],
)
def test_a_malformed_question_is_refused_and_nothing_is_recorded(
    team: Team, fields: dict[str, Any], field: str, words: str
) -> None:
    resp = team.supervisor.call("POST", f"{BASE}/{team.cid}/questions", {"question": "Decide", **fields})
    details = assert_error(resp, 400, "VALIDATION_FAILED")
    assert details["field"] == field and words in resp.json()["error"]["message"]
    assert "question_asked" not in event_types(uuid.UUID(team.cid))
    assert team.contract()["status"] == "active"


def test_a_daemon_id_the_command_feed_refuses_is_refused_in_its_words_and_nothing_is_recorded(
    team: Team,
) -> None:
    """The answer would be queued on that daemon's feed, which refuses an id holding a newline:
    asked, the question would wait for an answer no daemon can read."""
    resp = team.supervisor.call(
        "POST",
        f"{BASE}/{team.cid}/questions",
        {"question": "Decide", "type": "free_text", "daemonId": "gpu\n7"},
    )
    details = assert_error(resp, 400, "VALIDATION_FAILED")
    assert (details["field"], details["limit"]) == ("daemonId", 200)
    assert resp.json()["error"]["message"] == (
        "daemonId must not contain NUL or control characters (found U+000A): a daemon id is 1 to 200 "
        "characters, not blank, not '.' or '..', with no NUL or other control character (newline, tab, "
        "...), no line or paragraph separator (U+2028, U+2029), no bidirectional control (U+061C, "
        "U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and no U+FFFD."
    )
    assert "question_asked" not in event_types(uuid.UUID(team.cid))
    assert team.contract()["status"] == "active"


def test_a_non_ascii_daemon_id_the_command_feed_takes_is_where_the_answer_goes(team: Team) -> None:
    asked = team.ask(daemonId="démon-東京-7")
    assert asked["daemonId"] == "démon-東京-7"
    assert team.contract()["status"] == "waiting_for_input"
    team.answer(asked["id"], "PostgreSQL")
    assert [c.daemon_id for c in commands(team.cid)] == ["démon-東京-7"]


def test_schema_errors_in_a_question_name_the_field(team: Team) -> None:
    for body, field in [
        ({"question": "q", "type": "essay"}, "type"),
        ({"question": "q" * 4001, "type": "free_text"}, "question"),
        ({"question": "q", "type": "free_text", "questionId": "not-a-uuid"}, "questionId"),
        ({"question": "q", "type": "free_text", "urgent": True}, "urgent"),
    ]:
        resp = team.supervisor.call("POST", f"{BASE}/{team.cid}/questions", body)
        problems = assert_error(resp, 422, "INVALID_REQUEST")["problems"]
        assert problems[0]["field"] == field, problems


def test_an_answer_of_no_allowed_shape_names_the_field_and_the_shapes_it_takes(team: Team) -> None:
    asked = team.ask()
    for answer in (5, [5], {"pick": "PostgreSQL"}):
        resp = team.person.call(
            "POST", f"{BASE}/{team.cid}/questions/{asked['id']}/answer", {"answer": answer}
        )
        problems = assert_error(resp, 422, "INVALID_REQUEST")["problems"]
        assert [(p["field"], p["problem"], p["allowed"]) for p in problems] == [
            (
                "answer",
                "must be a string, a list of strings or a boolean",
                ["a string", "a list of strings", "a boolean"],
            )
        ], problems
    long = team.supervisor.call(
        "POST", f"{BASE}/{team.cid}/questions", {"question": "q" * 4001, "type": "free_text"}
    )
    (problem,) = assert_error(long, 422, "INVALID_REQUEST")["problems"]
    assert (problem["field"], problem["problem"], problem["limit"]) == (
        "question",
        "must be at most 4000 characters (this one has 4001)",
        4000,
    )


# --- the contract's status ----------------------------------------------------------------------------


def test_withdrawing_the_last_question_resumes_and_closing_the_contract_cancels_the_rest(team: Team) -> None:
    withdrawn = team.ask()
    outcome = team.supervisor.ok(
        "POST", f"{BASE}/{team.cid}/questions/{withdrawn['id']}/cancel", {"reason": "found it in the docs"}
    )
    assert (outcome["question"]["status"], outcome["contractStatus"], outcome["commandId"]) == (
        "cancelled",
        "active",
        None,
    )
    assert team.supervisor.ok("POST", f"{BASE}/{team.cid}/questions/{withdrawn['id']}/cancel") == outcome
    late = team.person.call("POST", f"{BASE}/{team.cid}/questions/{withdrawn['id']}/answer", {"answer": "ok"})
    assert assert_error(late, 409, "QUESTION_CLOSED")["status"] == "cancelled"

    left_open = team.ask(question="Still there?")
    team.person.ok("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "failed", "reason": "abandoned"})
    closed = team.person.ok("GET", f"{BASE}/{team.cid}/questions/{left_open['id']}")
    assert closed["status"] == "cancelled"
    events = team.person.ok("GET", f"{BASE}/{team.cid}/events")["events"]
    cancelled = [e["payload"] for e in events if e["type"] == "question_cancelled"]
    assert [(p["questionId"], p["reason"]) for p in cancelled] == [
        (withdrawn["id"], "found it in the docs"),
        (left_open["id"], "the contract is failed"),
    ]
    late = team.person.call(
        "POST", f"{BASE}/{team.cid}/questions/{left_open['id']}/answer", {"answer": "yes"}
    )
    assert assert_error(late, 409, "QUESTION_CLOSED")["status"] == "cancelled"
    refused = team.supervisor.call(
        "POST", f"{BASE}/{team.cid}/questions", {"question": "And now?", "type": "free_text"}
    )
    assert assert_error(refused, 400, "VALIDATION_FAILED")["status"] == "failed"


def test_a_paused_contract_keeps_its_status_when_asked_and_when_answered(team: Team) -> None:
    team.person.ok("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "paused", "reason": "holiday"})
    asked = team.ask()
    assert team.contract()["status"] == "paused"
    assert team.answer(asked["id"], "PostgreSQL")["contractStatus"] == "paused"
    assert event_types(uuid.UUID(team.cid))[-2:] == ["question_asked", "question_answered"]


def test_a_contract_waiting_for_a_phase_confirmation_keeps_waiting_for_it(team: Team) -> None:
    team.person.ok(
        "POST",
        f"{BASE}/{team.cid}/status",
        {"targetStatus": "waiting_for_input", "waitingFor": "phase_confirmation"},
    )
    asked = team.ask()
    answered = team.answer(asked["id"], "PostgreSQL")
    assert (answered["contractStatus"], answered["waitingFor"]) == ("waiting_for_input", "phase_confirmation")


def test_questions_are_read_a_page_at_a_time_oldest_first(team: Team) -> None:
    asked = [team.ask(question=f"Question {i}")["id"] for i in range(5)]
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = team.person.ok("GET", f"{BASE}/{team.cid}/questions", **params)
        seen += [q["id"] for q in page["questions"]]
        after = page["nextAfter"]
        if after is None:
            break
    assert seen == asked
    bad = team.person.call("GET", f"{BASE}/{team.cid}/questions", after=str(uuid.uuid4()))
    assert assert_error(bad, 400, "VALIDATION_FAILED")["field"] == "after"
    assert commands(team.cid) == []  # reading sends the daemons nothing


def largest_question(i: int) -> dict[str, Any]:
    """A question of the largest allowed size, in 4-byte UTF-8 characters: about 88 KB of JSON."""
    wide = "\U0001d11e"  # 𝄞, four bytes in UTF-8
    return {
        "question": f"{i:02d}" + wide * (MAX_QUESTION - 2),
        "type": "multiple_choice",
        "options": [f"{i:02d}{n:02d}" + wide * (MAX_OPTION - 4) for n in range(MAX_OPTIONS)],
        "context": wide * MAX_CONTEXT,
    }


def test_a_page_of_questions_is_bounded_by_size_and_its_cursor_reads_on(team: Team) -> None:
    """Fifty questions of the largest size are over 4 MiB: a page of up to 500 stops before the
    one that would pass the bound, and `nextAfter` reads on to the rest, none lost or repeated."""
    asked = [team.ask(**largest_question(i))["id"] for i in range(50)]
    seen: list[str] = []
    pages: list[Any] = []
    after: str | None = None
    while True:
        params = {"limit": MAX_PAGE, **({"after": after} if after else {})}
        resp = team.person.call("GET", f"{BASE}/{team.cid}/questions", **params)
        assert resp.status_code == 200, resp.text[:500]
        assert len(resp.content) <= QUESTION_PAGE_BYTES
        page = resp.json()
        pages.append(page)
        seen += [q["id"] for q in page["questions"]]
        after = page["nextAfter"]
        if after is None:
            break
    assert seen == asked
    assert len(pages) == 2 and 0 < len(pages[0]["questions"]) < 50
    assert (pages[0]["truncated"], pages[1]["truncated"]) == (True, False)
    assert pages[0]["nextAfter"] == pages[0]["questions"][-1]["id"]
    from_python = ContractsAPI(team.person.token).questions(uuid.UUID(team.cid), limit=MAX_PAGE)
    assert [str(q.id) for q in from_python.questions] == [q["id"] for q in pages[0]["questions"]]
    assert from_python.truncated and str(from_python.next_after) == pages[0]["nextAfter"]


def test_the_last_two_answers_given_at_once_resume_the_contract_once(team: Team) -> None:
    """Each answer locks the contract's row: whichever commits second sees no question left open."""
    asked = [team.ask(question=f"Question {i}")["id"] for i in range(2)]
    person = ContractsAPI(team.person.token)
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def answer(question_id: str) -> None:
        barrier.wait()
        outcomes.append(person.answer_question(uuid.UUID(team.cid), uuid.UUID(question_id), "yes"))

    threads = [threading.Thread(target=answer, args=(q,)) for q in asked]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(o.contract_status.value for o in outcomes) == ["active", "waiting_for_input"]
    assert team.contract()["status"] == "active"
    events = team.person.ok("GET", f"{BASE}/{team.cid}/events")["events"]
    resumed = [e for e in events if e["type"] == "status_changed" and e["payload"]["newStatus"] == "active"]
    assert len(resumed) == 2  # created → active when the supervisor started, then once after the answers
    assert len(commands(team.cid)) == 2


# --- a question asked while the contract was not running ------------------------------------------


def status_moves(team: Team) -> list[tuple[str, str]]:
    events = team.person.ok("GET", f"{BASE}/{team.cid}/events")["events"]
    moves = [e for e in events if e["type"] == "status_changed"]
    moves.sort(key=lambda e: e["id"])
    return [(e["payload"]["oldStatus"], e["payload"]["newStatus"]) for e in moves]


def waiting_on_dashboard(team: Team) -> list[str]:
    board = team.person.ok("GET", f"{BASE}/dashboard")
    return [w["waitingFor"] for w in board["waitingForInput"] if w["id"] == team.cid]


def test_a_question_asked_before_the_supervisor_started_is_surfaced_when_it_starts(
    client: TestClient,
) -> None:
    owner = f"questions-{uuid.uuid4().hex[:8]}"
    person, supervisor = actor(client, owner, "user"), actor(client, owner, "supervisor")
    cid = supervisor.ok("POST", BASE, {"name": "asked early", "contractType": "simple"}, expect=201)["id"]
    team = Team(person, supervisor, actor(client, "operators", "admin"), cid, str(uuid.uuid4()), owner)
    asked = team.ask()
    assert team.contract()["status"] == "created"

    supervisor.ok(
        "POST",
        f"{BASE}/{cid}/tasks/{team.supervisor_task}/started",
        {"taskName": "supervisor", "isSupervisor": True},
        expect=202,
    )
    wait_for(lambda: contract_row(uuid.UUID(cid)).status != "created", what="the supervisor's start")

    contract = team.contract()
    assert (contract["status"], contract["waitingFor"]) == ("waiting_for_input", "question")
    assert status_moves(team)[-2:] == [("created", "active"), ("active", "waiting_for_input")]
    assert waiting_on_dashboard(team) == ["question"]
    assert team.answer(asked["id"], "PostgreSQL")["contractStatus"] == "active"
    assert waiting_on_dashboard(team) == []


def test_a_question_asked_while_paused_is_surfaced_when_a_person_resumes(team: Team) -> None:
    team.person.ok("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "paused", "reason": "holiday"})
    asked = team.ask()
    assert team.contract()["status"] == "paused"

    resumed = team.person.ok("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "active"})

    assert (resumed["previousStatus"], resumed["newStatus"]) == ("paused", "waiting_for_input")
    assert resumed["contract"]["waitingFor"] == "question"
    assert status_moves(team)[-2:] == [("paused", "active"), ("active", "waiting_for_input")]
    assert waiting_on_dashboard(team) == ["question"]
    answered = team.answer(asked["id"], "PostgreSQL")
    assert (answered["contractStatus"], answered["waitingFor"]) == ("active", None)


def test_a_contract_the_input_timeout_paused_waits_again_for_its_question_when_resumed(team: Team) -> None:
    from sqlalchemy import update

    from app import sweeps
    from app.models import Contract, utcnow

    asked = team.ask()
    assert team.contract()["status"] == "waiting_for_input"
    with unit_of_work() as uow:  # as if the input timeout had passed
        uow.session.execute(
            update(Contract)
            .where(Contract.id == uuid.UUID(team.cid))
            .values(status_changed_at=utcnow() - sweeps.input_timeout(get_settings()) * 2)
        )
    sweeps.pause_timed_out_inputs(sweeps.Wiring())
    assert team.contract()["status"] == "paused"

    resumed = team.person.ok("POST", f"{BASE}/{team.cid}/status", {"targetStatus": "active"})

    assert (resumed["previousStatus"], resumed["newStatus"]) == ("paused", "waiting_for_input")
    assert resumed["contract"]["waitingFor"] == "question"
    assert waiting_on_dashboard(team) == ["question"]
    assert team.answer(asked["id"], "PostgreSQL")["contractStatus"] == "active"


def test_a_question_cannot_name_a_supervisor_another_owner_s_heartbeats_report(
    client: TestClient, team: Team
) -> None:
    """A task id is another contract's whether that contract knows it as a task or only as a
    supervisor heard by heartbeats: the question is refused, naming nothing of the other owner."""
    from app.models import utcnow

    mine = team
    stranger = actor(client, f"strangers-{uuid.uuid4().hex[:8]}", "supervisor")
    theirs = stranger.ok("POST", BASE, {"name": "theirs", "contractType": "simple"}, expect=201)["id"]
    heard = uuid.uuid4()
    now = utcnow()
    with unit_of_work() as uow:  # what a first heartbeat records: a supervisor, no task row
        uow.session.add(
            Supervisor(
                task_id=heard,
                contract_id=uuid.UUID(theirs),
                incarnation=1,
                version=1,
                state="working",
                phase="plan",
                current_activity="",
                progress=0,
                pending_task_ids=[],
                last_received_at=now,
                alive=True,
            )
        )
    refused = mine.supervisor.call(
        "POST",
        f"{BASE}/{mine.cid}/questions",
        {"question": "Which?", "type": "free_text", "taskId": str(heard)},
    )
    details = assert_error(refused, 400, "VALIDATION_FAILED")
    assert (details["field"], details["taskId"]) == ("taskId", str(heard))
    assert "cannot be used on this contract" in refused.json()["error"]["message"]
    assert mine.open_ids() == []
