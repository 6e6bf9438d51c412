"""Refusals that name the real problem, over HTTP and the monitor's WebSocket (each seen
failing first):

- a contract's name and a task's name with a control character or a bidirectional control
  (U+202E) were taken and shown as sent; they are refused naming the field, the code point
  and what a name may hold;
- a heartbeat's, a save's and a restoration's daemonId and host with a bidi control were
  taken; a daemonId or host query parameter of a newline or tab alone was called "blank";
- a message time without a time zone was "not a valid datetime" (and so was every other time:
  the strict body took none), `wait=nan` "should be less than or equal to 25", a NUL in an
  answer "must be a string, a list of strings or a boolean", a non-string WebSocket token
  "send an auth message first", and a gzip body "not UTF-8 text".
"""

from __future__ import annotations

import gzip
import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from app.domain.reported_text import CONTRACT_NAME_RULE, TASK_NAME_RULE
from app.http import create_app
from tests.integration.helpers import heartbeat_body as heartbeat
from tests.integration.helpers import no_send

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

pytestmark = pytest.mark.integration

CONTRACTS = "/api/v1/contracts"
HEARTBEATS = "/api/v1/supervisors/heartbeats"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(sender=no_send), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def headers(make_caller: Any) -> dict[str, str]:
    token, _ = make_caller(role="supervisor")
    return {"Authorization": f"Bearer {token}"}


def new_contract(client: TestClient, headers: dict[str, str]) -> str:
    resp = client.post(CONTRACTS, json={"name": "precise", "contractType": "simple"}, headers=headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def only_problem(resp: Any, status: int = 422) -> dict[str, Any]:
    """The one problem of an INVALID_REQUEST, in the error shape every refusal has."""
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == "INVALID_REQUEST", error
    (problem,) = error["details"]["problems"]
    assert f"{problem['field']}: {problem['problem']}" in error["message"]
    return dict(problem)


def validation_failed(resp: Any, field: str) -> str:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", field), error
    return str(error["message"])


# --- names ------------------------------------------------------------------------------------

NAME_CHARACTERS = [
    ("\u202e", "a bidirectional control (found U+202E)"),
    ("\u2066", "a bidirectional control (found U+2066)"),
    ("\u200f", "a bidirectional control (found U+200F)"),
    ("\u061c", "a bidirectional control (found U+061C)"),
    ("\x1b", "a control character (found U+001B)"),
    ("\n", "a control character (found U+000A)"),
    ("\x9b", "a control character (found U+009B)"),
    ("\x00", "a NUL character (found U+0000)"),
]


@pytest.mark.parametrize(("char", "found"), NAME_CHARACTERS, ids=lambda v: repr(v))
def test_a_contract_name_that_would_not_read_as_stored_is_refused_naming_the_character(
    client: TestClient, headers: dict[str, str], char: str, found: str
) -> None:
    before = client.get(CONTRACTS, headers=headers).json()["contracts"]
    resp = client.post(
        CONTRACTS, json={"name": f"invoice{char}fdp.exe", "contractType": "simple"}, headers=headers
    )
    problem = only_problem(resp)
    assert (problem["field"], problem["in"], problem["type"]) == ("name", "body", "one_line_text")
    assert problem["problem"] == f"must not contain {found}: {CONTRACT_NAME_RULE}"
    assert client.get(CONTRACTS, headers=headers).json()["contracts"] == before


@pytest.mark.parametrize("report", ["started", "completed"])
@pytest.mark.parametrize(("char", "found"), NAME_CHARACTERS[:5], ids=lambda v: repr(v))
def test_a_task_name_that_would_not_read_as_stored_is_refused_naming_the_character(
    client: TestClient, headers: dict[str, str], report: str, char: str, found: str
) -> None:
    cid = new_contract(client, headers)
    body: dict[str, Any] = {"taskName": f"lint{char}"}
    if report == "completed":
        body["success"] = True
    resp = client.post(f"{CONTRACTS}/{cid}/tasks/{uuid.uuid4()}/{report}", json=body, headers=headers)
    problem = only_problem(resp)
    assert (problem["field"], problem["type"]) == ("taskName", "one_line_text")
    assert problem["problem"] == f"must not contain {found}: {TASK_NAME_RULE}"


def test_names_in_any_script_are_still_taken(client: TestClient, headers: dict[str, str]) -> None:
    for name in ("שלום", "مرحبا", "東京 / déjà vu", "👩\u200d👩\u200d👧"):
        resp = client.post(CONTRACTS, json={"name": name, "contractType": "simple"}, headers=headers)
        assert resp.status_code == 201, resp.text
        assert resp.json()["name"] == name
        started = client.post(
            f"{CONTRACTS}/{resp.json()['id']}/tasks/{uuid.uuid4()}/started",
            json={"taskName": name},
            headers=headers,
        )
        assert started.status_code == 202, started.text


# --- daemon ids and hosts ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["daemonId", "host"])
@pytest.mark.parametrize("bidi", ["\u202e", "\u2067", "\u200e"], ids=lambda v: f"U+{ord(v):04X}")
def test_a_heartbeat_daemon_id_or_host_with_a_bidi_control_is_refused_naming_it(
    client: TestClient, headers: dict[str, str], field: str, bidi: str
) -> None:
    cid = new_contract(client, headers)
    found = f"U+{ord(bidi):04X}"
    single = client.post(HEARTBEATS, json=heartbeat(cid, **{field: f"gpu{bidi}7"}), headers=headers)
    message = validation_failed(single, field)
    assert f"must not contain bidirectional controls (found {found})" in message
    assert "no bidirectional control (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069)" in message
    listed = client.post(
        HEARTBEATS, json=[heartbeat(cid, **{field: f"gpu{bidi}7"}), heartbeat(cid)], headers=headers
    )
    assert listed.status_code == 202 and (listed.json()["accepted"], listed.json()["refused"]) == (1, 1)
    assert listed.json()["results"][0]["field"] == field


@pytest.mark.parametrize(
    ("params", "field", "found"),
    [
        ({"daemonId": "gpu\u202e7"}, "daemonId", "bidirectional controls (found U+202E)"),
        ({"daemonId": "d-1", "host": "gpu\u2066-7"}, "host", "bidirectional controls (found U+2066)"),
        ({"daemonId": "\n"}, "daemonId", "NUL or control characters (found U+000A)"),
        ({"daemonId": "\t"}, "daemonId", "NUL or control characters (found U+0009)"),
        ({"daemonId": "d-1", "host": "\t"}, "host", "control characters or line separators (found U+0009)"),
        ({"daemonId": "d-1", "host": "\r\n"}, "host", "control characters or line separators (found U+000D)"),
    ],
)
def test_a_restorations_daemon_id_or_host_is_refused_for_the_character_it_holds_not_as_blank(
    client: TestClient, headers: dict[str, str], params: dict[str, str], field: str, found: str
) -> None:
    cid = new_contract(client, headers)
    resp = client.get(
        f"{CONTRACTS}/{cid}/supervisor/restoration",
        params={"taskId": str(uuid.uuid4()), **params},
        headers=headers,
    )
    message = validation_failed(resp, field)
    assert f"must not contain {found}" in message and "blank." not in message, message


@pytest.mark.parametrize(
    ("field", "value", "found"),
    [
        ("daemonId", "gpu\u202e7", "bidirectional controls (found U+202E)"),
        ("host", "gpu\u202e7", "bidirectional controls (found U+202E)"),
        ("daemonId", "\n", "NUL or control characters (found U+000A)"),
    ],
)
def test_a_saves_daemon_id_or_host_is_refused_for_the_character_it_holds(
    client: TestClient, headers: dict[str, str], field: str, value: str, found: str
) -> None:
    cid = new_contract(client, headers)
    body = {"taskId": str(uuid.uuid4()), "stateVersion": 1, "state": "working", "phase": "plan", field: value}
    resp = client.post(f"{CONTRACTS}/{cid}/supervisor/state", json=body, headers=headers)
    assert f"must not contain {found}" in validation_failed(resp, field)


# --- messages that named the wrong problem ----------------------------------------------------


def save_with_message_time(client: TestClient, headers: dict[str, str], cid: str, at: str) -> Any:
    body = {
        "taskId": str(uuid.uuid4()),
        "stateVersion": 1,
        "state": "working",
        "phase": "plan",
        "historyAppend": [{"role": "user", "content": "go ahead", "at": at}],
    }
    return client.post(f"{CONTRACTS}/{cid}/supervisor/state", json=body, headers=headers)


def test_a_message_time_without_a_time_zone_is_told_it_has_none(
    client: TestClient, headers: dict[str, str]
) -> None:
    cid = new_contract(client, headers)
    problem = only_problem(save_with_message_time(client, headers, cid, "2026-01-31T10:30:00"))
    assert (problem["field"], problem["type"]) == ("historyAppend[0].at", "datetime_form")
    assert problem["problem"].startswith("has no time zone")
    assert (
        "ISO 8601" in problem["problem"]
        and "Z or an offset from UTC (+HH:MM or -HH:MM)" in problem["problem"]
    )


def test_a_message_time_with_a_time_zone_is_saved_and_read_back_in_utc(
    client: TestClient, headers: dict[str, str]
) -> None:
    """The strict body refused every text for a datetime: no message time could be sent at all."""
    cid = new_contract(client, headers)
    resp = save_with_message_time(client, headers, cid, "2026-01-31T12:30:00+02:00")
    assert resp.status_code == 200, resp.text
    task = resp.json()["taskId"]
    history = client.get(f"{CONTRACTS}/{cid}/supervisor/history", params={"taskId": task}, headers=headers)
    assert history.status_code == 200, history.text
    assert history.json()["messages"][0]["at"] == "2026-01-31T10:30:00+00:00"


@pytest.mark.parametrize("wait", ["nan", "NaN", "inf", "-inf"])
def test_a_wait_that_is_not_a_finite_number_is_told_so(
    client: TestClient, headers: dict[str, str], wait: str
) -> None:
    resp = client.get("/api/v1/daemons/d-1/commands", params={"wait": wait}, headers=headers)
    problem = only_problem(resp)
    assert (problem["field"], problem["in"], problem["type"]) == ("wait", "query", "finite_number")
    assert problem["problem"] == f"'{wait}' is not a finite number of seconds from 0 to 25"


def test_a_finite_wait_out_of_range_is_still_told_its_bound(
    client: TestClient, headers: dict[str, str]
) -> None:
    problem = only_problem(client.get("/api/v1/daemons/d-1/commands", params={"wait": "26"}, headers=headers))
    assert (problem["field"], problem["type"]) == ("wait", "less_than_equal")


@pytest.mark.parametrize(
    ("answer", "where"), [("Postgre\x00SQL", ""), (["lint", "te\x00sts"], " (in item 1)")]
)
def test_a_nul_in_an_answer_is_named_not_called_the_wrong_shape(
    client: TestClient, make_caller: Any, answer: Any, where: str
) -> None:
    token, _ = make_caller(role="user")
    person = {"Authorization": f"Bearer {token}"}
    cid = new_contract(client, person)
    resp = client.post(
        f"{CONTRACTS}/{cid}/questions/{uuid.uuid4()}/answer", json={"answer": answer}, headers=person
    )
    problem = only_problem(resp)
    assert (problem["field"], problem["type"]) == ("answer", "nul_character")
    assert problem["problem"] == f"must not contain NUL (U+0000): PostgreSQL text cannot hold it{where}"


@pytest.mark.parametrize(("token", "sent"), [(5, "a number"), (None, "null"), (["mk_x"], "an array")])
def test_a_websocket_auth_message_whose_token_is_not_a_string_is_told_so(
    client: TestClient, token: Any, sent: str
) -> None:
    with client.websocket_connect(CONTRACTS + "/monitor") as ws:
        ws.send_json({"type": "auth", "token": token})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 4401
    assert closed.value.reason.startswith(f'the auth message\'s "token" must be a string, not {sent}')


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "br", "deflate, gzip"])
def test_a_compressed_body_is_refused_as_unsupported_media_not_as_bad_json(
    client: TestClient, headers: dict[str, str], encoding: str
) -> None:
    before = client.get(CONTRACTS, headers=headers).json()["contracts"]
    body = gzip.compress(json.dumps({"name": "zipped", "contractType": "simple"}).encode())
    resp = client.post(
        CONTRACTS,
        content=body,
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": encoding},
    )
    problem = only_problem(resp, 415)
    assert (problem["field"], problem["in"], problem["type"]) == (
        "Content-Encoding",
        "header",
        "content_encoding",
    )
    assert problem["given"] == encoding and problem["allowed"] == ["identity"]
    assert "not accepted" in problem["problem"] and "content encoding" in problem["problem"]
    assert client.get(CONTRACTS, headers=headers).json()["contracts"] == before


def test_an_identity_encoded_body_is_taken(client: TestClient, headers: dict[str, str]) -> None:
    resp = client.post(
        CONTRACTS,
        content=json.dumps({"name": "plain", "contractType": "simple"}).encode(),
        headers={**headers, "Content-Type": "application/json", "Content-Encoding": "identity"},
    )
    assert resp.status_code == 201, resp.text


# --- the API module holds names to the same rule ----------------------------------------------


@pytest.mark.parametrize("bad", ["report\u202efdp.exe", "two\nlines", "bell\x07", "del\x7f"])
def test_the_api_module_refuses_the_names_the_http_front_refuses(make_caller: Any, bad: str) -> None:
    """A Python daemon or the CLI reaches the same rule as a request would: nothing shown later
    can hold a forged line or a reversed name, whichever front it came through."""
    from app.api import ContractsAPI
    from app.domain.errors import ValidationFailed
    from app.domain.lifecycle import Status

    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    with pytest.raises(ValidationFailed) as refused:
        api.create_contract(bad, "simple")
    assert refused.value.details["field"] == "name" and CONTRACT_NAME_RULE in str(refused.value)

    cid = uuid.UUID(str(api.create_contract("plain name", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    for report in (
        lambda: api.report_task_started(cid, uuid.uuid4(), bad),
        lambda: api.report_task_completed(cid, uuid.uuid4(), bad, success=True),
    ):
        with pytest.raises(ValidationFailed) as refused:
            report()
        assert refused.value.details["field"] == "taskName" and TASK_NAME_RULE in str(refused.value)


def test_the_api_module_refuses_an_id_that_is_not_a_uuid_naming_it(make_caller: Any) -> None:
    """A Python caller's bad id is its mistake, named: not a database error about a cast."""
    from app.api import ContractsAPI
    from app.domain.errors import ValidationFailed
    from app.domain.lifecycle import Status

    _, caller = make_caller(role="supervisor")
    api = ContractsAPI(caller=caller, sender=no_send)
    cid = uuid.UUID(str(api.create_contract("ids", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    for call, field in (
        (lambda: api.get_contract("zzz"), "contractId"),  # type: ignore[arg-type]
        (lambda: api.report_task_started(cid, "not-a-uuid", "t"), "taskId"),  # type: ignore[arg-type]
        (lambda: api.report_task_completed("nope", uuid.uuid4(), "t", success=True), "contractId"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValidationFailed) as refused:
            call()
        assert refused.value.details["field"] == field and "is not a UUID" in str(refused.value)
    # An id as text is an id.
    assert str(api.get_contract(str(cid)).id) == str(cid)  # type: ignore[arg-type]
    api.report_task_started(str(cid), str(uuid.uuid4()), "text ids")  # type: ignore[arg-type]
