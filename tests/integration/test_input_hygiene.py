"""Input a hostile reviewer found taken, or answered in the wrong words, at the HTTP front and
in the API module (each seen failing first; the CLI's token owners and names are in
`tests/unit/test_token_input.py`):

- a task name of blanks alone (" ") was accepted in every task report (started, started as
  supervisor, completed); it is VALIDATION_FAILED naming `taskName`, by the contract name's rule;
- a daemon id of "." or ".." was taken in heartbeats, reports, the feed's and queue's paths and
  the restoration's query, where it reads as a path segment; it is refused saying so;
- the API module's `events` and `supervisor_heartbeats` handed any `limit` and `after` to the
  database; they have the HTTP endpoints' bounds and answer VALIDATION_FAILED outside them;
- a body of valid JSON that is no object (`"x"`, `null`, `5`) was told to use
  Content-Type: application/json, which it did; it is told what it sent (its JSON type);
- `GET /api/v1/messages/{id}` answered `unknown` for an id no report could carry; it is 400
  VALIDATION_FAILED naming the messageId rule, and so is the resend and the API module.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from app.api import ContractsAPI
from app.domain.daemon_ids import daemon_id_problem
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.domain.message_ids import MESSAGE_ID_RULE
from app.domain.reported_text import CONTRACT_NAME_RULE, TASK_NAME_RULE
from tests.integration.helpers import heartbeat_body as heartbeat
from tests.integration.helpers import no_send

pytestmark = pytest.mark.integration

CONTRACTS = "/api/v1/contracts"
HEARTBEATS = "/api/v1/supervisors/heartbeats"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_contract(client: Any, token: str) -> str:
    resp = client.post(CONTRACTS, json={"name": "hygiene", "contractType": "simple"}, headers=auth(token))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def refused(resp: Any, field: str, status: int = 400) -> dict[str, Any]:
    """The VALIDATION_FAILED error of `resp`, naming `field`."""
    assert resp.status_code == status, resp.text
    error = dict(resp.json()["error"])
    assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", field), error
    return error


# --- 1. a task name of blanks alone -----------------------------------------------------------

TASK_REPORTS: list[tuple[str, dict[str, Any]]] = [
    ("started", {}),
    ("started", {"isSupervisor": True}),
    ("completed", {"success": True}),
]
BLANK_NAMES = [" ", "   ", "\u3000", "\u200b"]


@pytest.mark.parametrize("name", BLANK_NAMES, ids=repr)
@pytest.mark.parametrize(("report", "extra"), TASK_REPORTS, ids=["started", "supervisor", "completed"])
def test_a_task_report_naming_its_task_with_blanks_alone_is_refused_naming_task_name(
    client: Any, make_caller: Any, report: str, extra: dict[str, Any], name: str
) -> None:
    token, _ = make_caller(role="supervisor")
    cid = new_contract(client, token)
    resp = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/{report}",
        json={"taskName": name, **extra},
        headers=auth(token),
    )
    error = refused(resp, "taskName")
    assert error["message"] == f"taskName must not be blank: {TASK_NAME_RULE}"
    # Nothing was accepted: the contract is still `created` (a supervisor start would activate it).
    assert client.get(f"{CONTRACTS}/{cid}", headers=auth(token)).json()["status"] == "created"


def test_the_api_module_refuses_a_task_name_of_blanks_alone_in_every_task_report(make_caller: Any) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("blank task names", "simple").id
    reports: list[Callable[[], object]] = [
        lambda: api.report_task_started(cid, uuid.uuid4(), " "),
        lambda: api.report_task_started(cid, uuid.uuid4(), " ", is_supervisor=True),
        lambda: api.report_task_completed(cid, uuid.uuid4(), "\u200b", success=False),
    ]
    for report in reports:
        with pytest.raises(ValidationFailed) as caught:
            report()
        assert caught.value.details["field"] == "taskName"
        assert caught.value.message == f"taskName must not be blank: {TASK_NAME_RULE}"


@pytest.mark.parametrize("name", [" ", "\u200b"], ids=repr)
def test_a_contract_name_of_blanks_alone_is_refused_by_the_same_rule(
    client: Any, make_caller: Any, name: str
) -> None:
    """The contract's own check was `strip()`: a zero-width space alone made a nameless contract."""
    token, caller = make_caller(role="supervisor")
    resp = client.post(CONTRACTS, json={"name": name, "contractType": "simple"}, headers=auth(token))
    assert refused(resp, "name")["message"] == f"name must not be blank: {CONTRACT_NAME_RULE}"
    with pytest.raises(ValidationFailed) as caught:
        ContractsAPI(caller=caller, sender=no_send).create_contract(name, "simple")
    assert caught.value.details["field"] == "name"


# --- 2. daemon ids "." and ".." ---------------------------------------------------------------


@pytest.mark.parametrize("daemon_id", [".", ".."])
def test_a_daemon_id_of_dot_or_dot_dot_is_refused_wherever_a_request_names_a_daemon(
    client: Any, make_caller: Any, daemon_id: str
) -> None:
    token, caller = make_caller(role="supervisor")
    person, _ = make_caller(owner=caller.owner_id, role="user")
    cid = new_contract(client, token)
    problem = daemon_id_problem(daemon_id)
    assert problem is not None and "path" in problem
    expected = f"daemonId {problem}."

    single = client.post(HEARTBEATS, json=heartbeat(cid, daemonId=daemon_id), headers=auth(token))
    assert refused(single, "daemonId")["message"] == f"The heartbeat is not valid: daemonId: {problem}."
    listed = client.post(HEARTBEATS, json=[heartbeat(cid, daemonId=daemon_id)], headers=auth(token))
    assert listed.status_code == 202, listed.text
    (result,) = listed.json()["results"]
    assert (result["status"], result["field"]) == ("refused", "daemonId")
    assert result["message"] == f"The heartbeat is not valid: daemonId: {problem}."

    for path, body in (
        (f"{CONTRACTS}/{cid}/worktrees", {"path": "/srv/w/1", "daemonId": daemon_id}),
        (f"{CONTRACTS}/{cid}/worktrees/removed", {"path": "/srv/w/1", "daemonId": daemon_id}),
        (f"{CONTRACTS}/{cid}/questions", {"question": "Which?", "type": "free_text", "daemonId": daemon_id}),
        (
            f"{CONTRACTS}/{cid}/supervisor/state",
            {
                "taskId": str(uuid.uuid4()),
                "stateVersion": 1,
                "state": "working",
                "phase": "plan",
                "daemonId": daemon_id,
            },
        ),
    ):
        error = refused(client.post(path, json=body, headers=auth(token)), "daemonId")
        assert problem in error["message"] or error["details"].get("problem") == problem, (path, error)

    # In a path, percent-encoded so that no client or proxy folds it away first.
    encoded = daemon_id.replace(".", "%2E")
    for path in (f"/api/v1/daemons/{encoded}/commands", f"/api/v1/daemons/{encoded}/queue"):
        assert refused(client.get(path, headers=auth(token)), "daemonId")["message"] == expected
    restoration = client.get(
        f"{CONTRACTS}/{cid}/supervisor/restoration", params={"daemonId": daemon_id}, headers=auth(person)
    )
    assert refused(restoration, "daemonId")["message"] == expected


@pytest.mark.parametrize("daemon_id", [".", ".."])
def test_the_api_module_refuses_a_daemon_id_of_dot_or_dot_dot(make_caller: Any, daemon_id: str) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("dot daemons", "simple").id
    calls: list[Callable[[], object]] = [
        lambda: api.send_heartbeat(cid, uuid.uuid4(), "working", "plan", daemon_id=daemon_id),
        lambda: api.report_worktree_created(cid, "/srv/w/2", daemon_id=daemon_id),
        lambda: api.report_worktree_removed(cid, "/srv/w/2", daemon_id=daemon_id),
        lambda: api.ask_question(cid, "Which?", "free_text", daemon_id=daemon_id),
        lambda: api.daemon_commands(daemon_id),
        lambda: api.daemon_queue(daemon_id),
        lambda: api.restore_supervisor(cid, daemon_id=daemon_id),
    ]
    for call in calls:
        with pytest.raises(ValidationFailed) as caught:
            call()
        assert caught.value.details["field"] == "daemonId"
        assert "reads as" in caught.value.message


def test_a_daemon_id_with_dots_among_other_characters_is_still_a_daemon(
    client: Any, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    for daemon_id in ("...", "gpu-7.local", "a..b"):
        resp = client.get(f"/api/v1/daemons/{daemon_id}/queue", headers=auth(token))
        assert resp.status_code == 200, resp.text
        assert resp.json()["daemonId"] == daemon_id


# --- 3. the API module's pages have the HTTP endpoints' bounds --------------------------------


@pytest.mark.parametrize(
    ("arguments", "field", "limit"),
    [
        ({"limit": -1}, "limit", 500),
        ({"limit": 0}, "limit", 500),
        ({"limit": 501}, "limit", 500),
        ({"limit": 10**30}, "limit", 500),
        ({"after": -1}, "after", 2**63 - 1),
        ({"after": 2**63}, "after", 2**63 - 1),
    ],
    ids=["limit-negative", "limit-zero", "limit-501", "limit-huge", "after-negative", "after-past-bigint"],
)
def test_the_api_modules_events_refuses_a_limit_or_after_outside_the_http_bounds(
    client: Any, make_caller: Any, arguments: dict[str, int], field: str, limit: int
) -> None:
    token, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("event pages", "simple").id
    with pytest.raises(ValidationFailed) as caught:
        api.events(cid, **arguments)
    assert caught.value.details == {"missing": [], "field": field, "limit": limit}
    assert (
        caught.value.message
        == f"{field} is a whole number from {int(field == 'limit')} to {limit} (got {arguments[field]})."
    )
    # The HTTP endpoint refuses the same values.
    query = {field: str(arguments[field])}
    assert client.get(f"{CONTRACTS}/{cid}/events", params=query, headers=auth(token)).status_code == 422


def test_the_api_modules_events_takes_the_http_bounds_themselves(make_caller: Any) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("event bounds", "simple").id
    assert [e.type for e in api.events(cid, after=0, limit=500).events] == ["contract_created"]
    assert api.events(cid, after=2**63 - 1, limit=1).events == []


@pytest.mark.parametrize("limit", [-1, 0, 1001, 10**30])
def test_the_api_modules_supervisor_heartbeats_refuses_a_limit_outside_the_http_bounds(
    client: Any, make_caller: Any, limit: int
) -> None:
    token, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("heartbeat pages", "simple").id
    with pytest.raises(ValidationFailed) as caught:
        api.supervisor_heartbeats(cid, limit)
    assert caught.value.details == {"missing": [], "field": "limit", "limit": 1000}
    assert caught.value.message == f"limit is a whole number from 1 to 1000 (got {limit})."
    resp = client.get(
        f"{CONTRACTS}/{cid}/supervisor/heartbeats", params={"limit": str(limit)}, headers=auth(token)
    )
    assert resp.status_code == 422, resp.text
    assert api.supervisor_heartbeats(cid, 1000).heartbeats == []


# --- 4. a body of valid JSON that is not an object --------------------------------------------

BODIES = [('"x"', "string", "a JSON string"), ("null", "null", "JSON null"), ("5", "number", "a JSON number")]
BODIES += [("true", "boolean", "a JSON boolean")]


@pytest.mark.parametrize(("raw", "kind", "named"), [*BODIES, ("[1]", "array", "a JSON array")], ids=str)
@pytest.mark.parametrize(
    "path",
    [
        CONTRACTS,
        CONTRACTS + "/{cid}/status",
        CONTRACTS + "/{cid}/tasks/{task}/started",
        CONTRACTS + "/{cid}/worktrees",
        CONTRACTS + "/{cid}/questions",
        CONTRACTS + "/{cid}/supervisor/state",
        CONTRACTS + "/batch",
    ],
)
def test_a_body_of_json_that_is_no_object_is_told_it_must_be_one_and_what_it_is(
    client: Any, make_caller: Any, path: str, raw: str, kind: str, named: str
) -> None:
    token, _ = make_caller(role="admin")
    url = path.format(cid=new_contract(client, token), task=uuid.uuid4())
    resp = client.post(url, content=raw, headers={**auth(token), "Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert (
        error["message"]
        == f"The request does not match the API schema: body: must be a JSON object, not {named}."
    )
    (problem,) = error["details"]["problems"]
    assert (problem["field"], problem["jsonType"], problem["allowed"]) == ("body", kind, ["object"])
    assert "Content-Type" not in error["message"]


@pytest.mark.parametrize(("raw", "kind", "named"), BODIES, ids=str)
def test_a_heartbeat_body_of_json_that_is_no_object_or_list_is_told_what_it_is(
    client: Any, make_caller: Any, raw: str, kind: str, named: str
) -> None:
    token, _ = make_caller(role="supervisor")
    resp = client.post(HEARTBEATS, content=raw, headers={**auth(token), "Content-Type": "application/json"})
    error = refused(resp, "body")
    assert error["message"] == (
        f"The body must be one heartbeat (a JSON object) or a list of up to 1000 of them, not {named}."
    )
    assert (error["details"]["jsonType"], error["details"]["allowed"]) == (kind, ["object", "array"])


def test_a_body_sent_without_a_json_content_type_is_still_told_to_send_one(
    client: Any, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    plain = {**auth(token), "Content-Type": "text/plain"}
    resp = client.post(CONTRACTS, content='{"name": "n", "contractType": "simple"}', headers=plain)
    assert resp.status_code == 422, resp.text
    assert "sent with Content-Type: application/json" in resp.json()["error"]["message"]
    resp = client.post(HEARTBEATS, content="[]", headers=plain)
    assert (
        "with Content-Type: application/json (this request's Content-Type: text/plain)"
        in (refused(resp, "body")["message"])
    )


# --- 5. a message id no report could carry ----------------------------------------------------

BAD_MESSAGE_IDS = [("a%20b", "U+0020"), ("abc!", "U+0021"), ("%C3%A9t%C3%A9", "U+00E9"), ("%00", "U+0000")]


@pytest.mark.parametrize(("sent", "found"), BAD_MESSAGE_IDS, ids=str)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_message_lookup_or_resend_by_an_id_no_report_could_carry_is_refused_naming_the_rule(
    client: Any, make_caller: Any, method: str, sent: str, found: str
) -> None:
    token, _ = make_caller(role="supervisor")
    path = f"/api/v1/messages/{sent}" + ("/resend" if method == "POST" else "")
    error = refused(client.request(method, path, headers=auth(token)), "messageId")
    assert error["message"] == f"messageId must not contain {found}: {MESSAGE_ID_RULE}."


def test_a_message_id_longer_than_a_report_could_send_is_refused_with_its_length(
    client: Any, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    error = refused(client.get(f"/api/v1/messages/{'x' * 201}", headers=auth(token)), "messageId")
    assert error["message"] == f"messageId has 201 characters: {MESSAGE_ID_RULE}."
    assert (error["details"]["length"], error["details"]["limit"]) == (201, 200)


def test_a_report_is_refused_in_the_same_words_as_the_lookup(client: Any, make_caller: Any) -> None:
    token, _ = make_caller(role="supervisor")
    cid = new_contract(client, token)
    resp = client.post(
        f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/started",
        json={"taskName": "t", "messageId": "a b"},
        headers=auth(token),
    )
    assert refused(resp, "messageId")["message"] == f"messageId must not contain U+0020: {MESSAGE_ID_RULE}."


def test_a_well_formed_id_never_sent_still_answers_unknown(client: Any, make_caller: Any) -> None:
    token, caller = make_caller(role="supervisor")
    resp = client.get("/api/v1/messages/never-sent-1", headers=auth(token))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "unknown"
    assert ContractsAPI(caller=caller, sender=no_send).message_status(uuid.uuid4()).status == "unknown"


def test_the_api_module_refuses_a_message_id_no_report_could_carry(make_caller: Any) -> None:
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    for call in (lambda: api.message_status("a b"), lambda: api.resend("a/b")):
        with pytest.raises(ValidationFailed) as caught:
            call()
        assert caught.value.details["field"] == "messageId"
        assert caught.value.message.endswith(f": {MESSAGE_ID_RULE}.")
    # Neither a string nor a UUID: refused for its type, not read as the text it would print as.
    for wrong in (5, 1.5, None, b"abc"):
        with pytest.raises(ValidationFailed) as caught:
            api.message_status(wrong)  # type: ignore[arg-type]
        assert caught.value.details["field"] == "messageId"
        assert "must be a string" in caught.value.message
    # The module's reports still take (and make) ids by the same rule.
    cid = api.create_contract("message ids", "simple").id
    api.change_status(cid, Status.ACTIVE)
    sent = api.report_task_started(cid, uuid.uuid4(), "t", message_id="daemon-7:report@1")
    assert api.message_status(sent).status == "pending"


NOT_STORABLE = "which is not a character and cannot be stored"


@pytest.mark.parametrize(
    ("call", "field", "message"),
    [
        (lambda api, cid: api.report_task_started(cid, uuid.uuid4(), "a\ud800b"), "taskName",
         f"taskName holds a lone UTF-16 surrogate (U+D800), {NOT_STORABLE}"),
        (lambda api, cid: api.report_task_started(cid, uuid.uuid4(), "x" * 501), "taskName",
         "taskName must be 1 to 500 characters (got 501)"),
        (lambda api, cid: api.report_task_started(cid, uuid.uuid4(), 5), "taskName",
         "taskName must be a string, not int"),
        (lambda api, cid: api.report_task_started(cid, uuid.uuid4(), "t", is_supervisor="no"), "isSupervisor",
         "isSupervisor must be True or False, not 'no'"),
        (lambda api, cid: api.report_task_completed(cid, uuid.uuid4(), "t", success="false"), "success",
         "success must be True or False, not 'false'"),
        (lambda api, cid: api.report_task_completed(cid, uuid.uuid4(), "t", success=None), "success",
         "success must be True or False, not None"),
        (lambda api, cid: api.mark_deliverable(cid, 5), "deliverableId",
         "deliverableId must be a string, not int"),
        (lambda api, cid: api.mark_deliverable(cid, "pl\ud800"), "deliverableId",
         f"deliverableId holds a lone UTF-16 surrogate (U+D800), {NOT_STORABLE}"),
        (lambda api, cid: api.mark_deliverable(cid, "d" * 201), "deliverableId",
         "deliverableId must be 1 to 200 characters (got 201)"),
    ],
    ids=["surrogate-name", "long-name", "int-name", "str-supervisor", "str-success", "none-success",
         "int-deliverable", "surrogate-deliverable", "long-deliverable"],
)  # fmt: skip
def test_the_api_module_refuses_at_once_what_its_worker_would_refuse_later(
    make_caller: Any, call: Callable[[Any, Any], object], field: str, message: str
) -> None:
    """Each of these got a message id and was refused by the worker afterwards (or raised the
    database encoder's DataError); a flag given as the string "no" was taken for True."""
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("arguments checked at once", "simple").id
    with pytest.raises(ValidationFailed) as caught:
        call(api, cid)
    assert (caught.value.details["field"], caught.value.message) == (field, message)


@pytest.mark.parametrize(
    ("read", "field", "value", "high"),
    [
        ("list_batches", "limit", 0, 100),
        ("list_batches", "limit", 101, 100),
        ("questions", "limit", 0, 500),
        ("questions", "limit", 501, 500),
        ("deletions", "limit", -1, 500),
        ("deletions", "limit", 10**30, 500),
        ("deletions", "before", 0, 2**62),
    ],
)
def test_the_api_modules_other_pages_refuse_what_their_http_endpoints_refuse(
    make_caller: Any, read: str, field: str, value: int, high: int
) -> None:
    """A page size out of bounds was clamped (questions) or handed to the database as it was."""
    _, caller = make_caller(role="admin")
    api = ContractsAPI(caller=caller, sender=no_send)
    calls = {
        "list_batches": lambda: api.list_batches(value),
        "questions": lambda: api.questions(api.create_contract("pages", "simple").id, limit=value),
        "deletions": lambda: api.deletions(**{field: value}),
    }
    with pytest.raises(ValidationFailed) as caught:
        calls[read]()
    assert caught.value.details["field"] == field and caught.value.details["limit"] == high
    assert f"(got {value})" in caught.value.message


def test_the_api_modules_reads_refuse_ids_and_flags_of_the_wrong_type_naming_them(make_caller: Any) -> None:
    """A batch id or question cursor that is not a UUID was a raw StatementError (or, as 5, no
    rows); an `open_` of "no" or 0 was ignored and every question listed."""
    _, caller = make_caller(role="admin")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = api.create_contract("typed reads", "simple").id
    calls = [
        ("batchId", lambda: api.deletions(batch_id=5)),  # type: ignore[arg-type]
        ("batchId", lambda: api.deletions(batch_id="not-a-uuid")),  # type: ignore[arg-type]
        ("after", lambda: api.questions(cid, after=5)),  # type: ignore[arg-type]
        ("open", lambda: api.questions(cid, open_="no")),  # type: ignore[arg-type]
        ("open", lambda: api.questions(cid, open_=0)),  # type: ignore[arg-type]
    ]
    for field, call in calls:
        with pytest.raises(ValidationFailed) as caught:
            call()
        assert caught.value.details["field"] == field
    # The text of a UUID is a UUID, as everywhere in the module.
    assert api.deletions(batch_id=str(uuid.uuid4())).deletions == []  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed) as unknown:  # a cursor as text is read as the cursor
        api.questions(cid, after=str(uuid.uuid4()))  # type: ignore[arg-type]
    assert "nextAfter" in unknown.value.message


def test_send_heartbeat_takes_none_as_no_pending_task_and_refuses_other_wrong_values(
    make_caller: Any,
) -> None:
    """As over HTTP: null pending tasks are none; 5 is refused naming pendingTaskIds; a
    timestamp of 0 or "" is refused, not replaced by the current time."""
    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = uuid.UUID(str(api.create_contract("typed heartbeats", "simple").id))
    api.send_heartbeat(cid, uuid.uuid4(), "working", "plan", pending_task_ids=None)  # type: ignore[arg-type]
    for field, extra in (
        ("pendingTaskIds", {"pending_task_ids": 5}),
        ("timestamp", {"timestamp": 0}),
        ("timestamp", {"timestamp": ""}),
    ):
        with pytest.raises(ValidationFailed) as caught:
            api.send_heartbeat(cid, uuid.uuid4(), "working", "plan", **extra)  # type: ignore[arg-type]
        assert caught.value.details["field"] == field
    api.flush()
