"""Limits on what a client may send: every request is bounded before it costs us anything.

Each test is named after the rule it checks. The rules (and their numbers) are those of
`app.http.limits` and `app.domain.phases`:

- a request body is at most 1 MiB, judged from Content-Length and while it streams in (413);
- JSON nests at most 32 levels, has no NaN/Infinity, no number a double cannot hold, and no
  lone UTF-16 surrogate (400, naming the limit or the problem);
- a phaseConfig is typed all the way down (a phase's `name` is a string, not a tree) and has
  at most 64 phases of at most 256 deliverables;
- query values that would overflow a date (a threshold, a forged cursor) are 4xx, never 500;
- a create the service refuses leaves no contract behind, so a retrying client cannot make
  duplicates.

They run against the real PostgreSQL (the integration conftest) and, for the JSON literals
SQLite used to store, against a migrated SQLite file too.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.auth import Role, create_token
from app.db import get_engine, migrate, unit_of_work
from app.http import create_app
from app.models import Contract
from tests.integration.helpers import no_send
from tests.integration.live_server import serve

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
MIB = 1024 * 1024


@pytest.fixture
def owner() -> tuple[str, dict[str, str]]:
    """A new owner and its headers: each test counts only its own contracts."""
    name = f"limits-{uuid.uuid4().hex[:8]}"
    with unit_of_work() as uow:
        token = create_token(uow.session, name, Role.USER)
    return name, {"Authorization": f"Bearer {token}"}


def contracts_of(owner: str) -> int:
    with unit_of_work() as uow:
        return int(uow.session.scalar(select(func.count()).where(Contract.owner_id == owner)) or 0)


def assert_error_shape(resp: Any, status_code: int) -> dict[str, Any]:
    assert resp.status_code == status_code, resp.text[:500]
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return dict(body["error"])


def nested(levels: int, leaf: Any = "x") -> Any:
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def with_phase_name(name: Any) -> dict[str, Any]:
    return {
        "name": "limits",
        "contractType": "custom",
        "phaseConfig": {"phases": [{"id": "only", "name": name, "deliverables": []}]},
    }


def post_raw(client: TestClient, headers: dict[str, str], path: str, raw: bytes | str) -> Any:
    content = raw.encode() if isinstance(raw, str) else raw
    return client.post(path, content=content, headers={**headers, "Content-Type": "application/json"})


# --- 1. nesting, size, and nothing committed that cannot be answered ----------------------


def test_a_phase_name_nested_250_levels_is_refused_and_list_pages_keep_answering(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    resp = client.post(BASE, json=with_phase_name(nested(250)), headers=headers)
    error = assert_error_shape(resp, 400)
    assert "32" in error["message"], error
    assert contracts_of(name) == 0
    assert client.get(BASE, headers=headers).status_code == 200


@pytest.mark.parametrize("levels", [300, 600])
def test_a_create_refused_for_its_nesting_leaves_no_contract_behind(
    client: TestClient, owner: tuple[str, dict[str, str]], levels: int
) -> None:
    name, headers = owner
    for _ in range(2):  # a client retrying after the refusal
        assert_error_shape(client.post(BASE, json=with_phase_name(nested(levels)), headers=headers), 400)
    assert contracts_of(name) == 0


def test_json_nested_deeper_than_32_levels_is_a_400_naming_the_limit_on_any_field(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    body = json.dumps({"name": "x", "contractType": "simple", "phaseConfig": nested(40)})
    error = assert_error_shape(post_raw(client, headers, BASE, body), 400)
    assert error["code"] == "INVALID_REQUEST"
    assert "32" in error["message"]
    assert error["details"]["problems"][0]["limit"] == 32


def test_json_may_nest_exactly_32_levels_and_the_33rd_is_named(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    at_limit = {"name": "x", "contractType": "simple", "phaseGuard": nested(31)}  # 32 levels
    assert_error_shape(client.post(BASE, json=at_limit, headers=headers), 422)  # the schema's turn
    over = {"name": "x", "contractType": "simple", "phaseGuard": nested(32)}
    error = assert_error_shape(client.post(BASE, json=over, headers=headers), 400)
    assert error["details"]["problems"][0]["field"] == "phaseGuard" + ".a" * 31


def test_json_nested_a_hundred_thousand_levels_is_a_400_not_a_crash(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    error = assert_error_shape(post_raw(client, headers, BASE, "[" * 100_000 + "]" * 100_000), 400)
    assert "32" in error["message"]


def test_a_phase_name_must_be_a_string(client: TestClient, owner: tuple[str, dict[str, str]]) -> None:
    name, headers = owner
    error = assert_error_shape(client.post(BASE, json=with_phase_name({"a": "b"}), headers=headers), 400)
    assert "phases[0].name" in error["message"]
    assert contracts_of(name) == 0


def test_a_body_over_one_mib_is_refused_from_its_content_length_before_it_is_read(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    body = json.dumps({"name": "x" * (MIB + 10), "contractType": "simple"})
    error = assert_error_shape(post_raw(client, headers, BASE, body), 413)
    assert error["details"]["limit"] == MIB
    assert "1 MiB" in error["message"]
    assert contracts_of(name) == 0


def test_a_streamed_body_over_one_mib_is_cut_off_while_it_is_read(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 64 * 1024
        yield b'", "contractType": "simple"}'

    resp = client.post(BASE, content=chunks(), headers={**headers, "Content-Type": "application/json"})
    assert_error_shape(resp, 413)


def test_twenty_thousand_deliverables_are_refused_naming_the_limit_quickly(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    name, headers = owner
    deliverables = [{"id": f"d{i}"} for i in range(20_000)]
    body = {
        "name": "x",
        "contractType": "custom",
        "phaseConfig": {"phases": [{"id": "p", "deliverables": deliverables}]},
    }
    started = time.monotonic()
    error = assert_error_shape(client.post(BASE, json=body, headers=headers), 400)
    assert time.monotonic() - started < 2.0
    assert "256" in error["message"]
    assert contracts_of(name) == 0


def test_the_largest_phase_config_allowed_is_created_read_and_listed(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    phases = [
        {"id": f"p{p}", "name": f"Phase {p}", "deliverables": [{"id": f"d{d}"} for d in range(256)]}
        for p in range(64)
    ]
    body = {"name": "big", "contractType": "custom", "phaseConfig": {"phases": phases}}
    made = client.post(BASE, json=body, headers=headers)
    assert made.status_code == 201, made.text[:500]
    cid = made.json()["id"]
    assert client.get(f"{BASE}/{cid}", headers=headers).status_code == 200
    page = client.get(BASE, headers=headers)
    assert page.status_code == 200 and [c["id"] for c in page.json()["contracts"]] == [cid]


def test_a_create_whose_answer_cannot_be_built_commits_nothing(
    client: TestClient, owner: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is built inside the transaction: if building it fails, the row is rolled back."""
    import app.api.contracts

    def broken_view(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the answer cannot be built")

    monkeypatch.setattr(app.api.contracts, "contract_view", broken_view)
    name, headers = owner
    assert_error_shape(client.post(BASE, json={"name": "x", "contractType": "simple"}, headers=headers), 500)
    assert contracts_of(name) == 0


# --- 2. lone surrogates -----------------------------------------------------------------

SURROGATE_BODIES = [
    (BASE, '{"name": "\\ud800", "contractType": "simple"}'),
    (BASE, '{"name": "' + "y" * 600 + '\\ud800", "contractType": "simple"}'),  # echoed by the 422
    (BASE, '{"name": "x", "contractType": "simple", "\\udfff": 1}'),  # in a key
    (BASE + "/{cid}/status", '{"targetStatus": "\\udc00"}'),
    (BASE + "/{cid}/phase", '{"phase": "\\ud83d"}'),
    (BASE + "/{cid}/tasks/{task}/started", '{"taskName": "\\ud800"}'),
    (BASE + "/{cid}/worktrees", '{"path": "/tmp/\\udbff"}'),
]


@pytest.mark.parametrize(("path", "raw"), SURROGATE_BODIES)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400_in_the_error_shape(
    client: TestClient, owner: tuple[str, dict[str, str]], path: str, raw: str
) -> None:
    _, headers = owner
    cid = client.post(BASE, json={"name": "s", "contractType": "simple"}, headers=headers).json()["id"]
    url = path.replace("{cid}", cid).replace("{task}", str(uuid.uuid4()))
    error = assert_error_shape(post_raw(client, headers, url, raw), 400)
    assert error["code"] == "INVALID_REQUEST"
    assert "surrogate" in error["message"]


RAW_SURROGATE = b"\xed\xa0\x80"  # what a lone \ud800 would be, encoded the way UTF-8 never does


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (BASE + "/{cid}/status", b'{"targetStatus": "paused", "reason": "r' + RAW_SURROGATE + b'"}'),
        (BASE + "/{cid}/status", b'{"targetStatus": "failed", "reason": "r' + RAW_SURROGATE + b'"}'),
        (BASE, b'{"name": "n' + RAW_SURROGATE + b'", "contractType": "simple"}'),
        ("/api/v1/supervisors/heartbeats", b'[{"taskId": "' + RAW_SURROGATE + b'"}]'),
    ],
)
def test_a_surrogate_sent_as_raw_bytes_is_a_400_and_nothing_is_recorded(
    client: TestClient, owner: tuple[str, dict[str, str]], path: str, raw: bytes
) -> None:
    """Not only the `\\ud800` escape: the bytes ED A0 80 are not UTF-8 either. Before, they
    passed, and a status change's reason made every later read of the contract's events a 500."""
    _, headers = owner
    cid = client.post(BASE, json={"name": "s", "contractType": "simple"}, headers=headers).json()["id"]
    assert client.post(f"{BASE}/{cid}/status", json={"targetStatus": "active"}, headers=headers).is_success
    error = assert_error_shape(post_raw(client, headers, path.replace("{cid}", cid), raw), 400)
    assert error["code"] == "INVALID_REQUEST"
    assert "UTF-8" in error["message"]
    assert client.get(f"{BASE}/{cid}", headers=headers).json()["status"] == "active"
    events = client.get(f"{BASE}/{cid}/events", headers=headers)
    assert events.status_code == 200, events.text


def test_a_body_with_a_utf8_byte_order_mark_is_still_judged(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    """A leading BOM is allowed, and the body behind it is checked like any other."""
    _, headers = owner
    dup = b"\xef\xbb\xbf" + b'{"name": "a", "name": "b", "contractType": "simple"}'
    error = assert_error_shape(post_raw(client, headers, BASE, dup), 400)
    assert "twice" in error["message"]


def test_a_surrogate_pair_is_one_character_and_is_accepted(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    resp = post_raw(client, headers, BASE, '{"name": "\\ud83d\\ude00", "contractType": "simple"}')
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "\U0001f600"


@pytest.fixture(scope="module")
def live_server() -> Iterator[int]:
    """The app under a real uvicorn on a free port: what TestClient cannot show (keep-alive)."""
    with serve(create_app(sender=no_send)) as base:
        yield int(base.rsplit(":", 1)[1])


def test_a_lone_surrogate_over_real_http_is_a_400_and_keeps_the_connection_alive(
    live_server: int, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    conn = http.client.HTTPConnection("127.0.0.1", live_server, timeout=10)
    try:
        for _ in range(2):  # the same connection, twice: the first must not have dropped it
            conn.request(
                "POST",
                BASE,
                body=b'{"name": "\\ud800", "contractType": "simple"}',
                headers={**headers, "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 400, body
            assert set(body["error"]) == {"code", "message", "details"}
            assert resp.getheader("connection", "").lower() != "close"
        conn.request("GET", BASE, headers=headers)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_body_over_one_mib_over_real_http_is_a_413(
    live_server: int, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    conn = http.client.HTTPConnection("127.0.0.1", live_server, timeout=10)
    try:
        body = b'{"name": "' + b"x" * (2 * MIB) + b'"}'
        conn.request("POST", BASE, body=body, headers={**headers, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["details"]["limit"] == MIB
    finally:
        conn.close()


# --- 3. overflows in queries ------------------------------------------------------------


@pytest.mark.parametrize("threshold", ["1000000d", "9999999999999999999s", "3651d"])
def test_a_threshold_beyond_ten_years_is_a_422_naming_the_limit(
    client: TestClient, owner: tuple[str, dict[str, str]], threshold: str
) -> None:
    _, headers = owner
    error = assert_error_shape(client.get(BASE, params={"threshold": threshold}, headers=headers), 422)
    assert error["details"]["problems"][0]["field"] == "threshold"
    assert "3650d" in error["message"]


def test_a_threshold_of_ten_years_is_accepted(client: TestClient, owner: tuple[str, dict[str, str]]) -> None:
    _, headers = owner
    assert client.get(BASE, params={"threshold": "3650d"}, headers=headers).status_code == 200


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("created", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_cursor_whose_time_overflows_in_utc_is_a_400_in_the_error_shape(
    client: TestClient, owner: tuple[str, dict[str, str]], created: str
) -> None:
    _, headers = owner
    cursor = cursor_of(f"{created}|{uuid.uuid4()}")
    error = assert_error_shape(client.get(BASE, params={"cursor": cursor}, headers=headers), 400)
    assert error["details"]["field"] == "cursor"


# --- 12a. NaN and Infinity --------------------------------------------------------------

NON_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e309", "-1e400"]


def _not_a_number_bodies(literal: str) -> list[str]:
    return [
        json.dumps(with_phase_name("PLACEHOLDER")).replace('"PLACEHOLDER"', literal),
        '{"name": "x", "contractType": "simple", "autoCompleteEnabled": ' + literal + "}",
    ]


@pytest.mark.parametrize("literal", NON_NUMBERS)
def test_nan_and_infinity_are_refused_with_400_on_postgresql(
    client: TestClient, owner: tuple[str, dict[str, str]], literal: str
) -> None:
    name, headers = owner
    for raw in _not_a_number_bodies(literal):
        error = assert_error_shape(post_raw(client, headers, BASE, raw), 400)
        assert "number" in error["message"], error
        assert "too long" not in error["message"]
    assert contracts_of(name) == 0


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    path: Path = tmp_path_factory.mktemp("sqlite") / "makima.db"
    url = f"sqlite:///{path}"
    migrate(url)
    engine = get_engine(url)
    with unit_of_work(engine=engine) as uow:
        token = create_token(uow.session, "sqlite-owner", Role.USER)
    with TestClient(create_app(engine=engine, sender=no_send), raise_server_exceptions=False) as c:
        yield c, {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("literal", NON_NUMBERS)
def test_nan_and_infinity_are_refused_with_400_on_sqlite(
    sqlite_client: tuple[TestClient, dict[str, str]], literal: str
) -> None:
    client, headers = sqlite_client
    for raw in _not_a_number_bodies(literal):
        assert_error_shape(post_raw(client, headers, BASE, raw), 400)
    assert client.get(BASE, headers=headers).json()["contracts"] == []


def test_a_number_with_more_digits_than_python_reads_is_a_400(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    raw = '{"name": "x", "contractType": "simple", "autoCompleteEnabled": ' + "9" * 5000 + "}"
    error = assert_error_shape(post_raw(client, headers, BASE, raw), 400)
    assert error["code"] == "INVALID_REQUEST"


def test_a_key_sent_twice_in_one_object_is_a_400_naming_the_key_and_nothing_is_created(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    raw = '{"name": "first", "contractType": "simple", "name": "second"}'
    error = assert_error_shape(post_raw(client, headers, BASE, raw), 400)
    assert error["code"] == "INVALID_REQUEST"
    problem = error["details"]["problems"][0]
    assert problem["type"] == "json_duplicate_key" and "'name'" in problem["problem"]
    assert client.get(BASE, headers=headers).json()["contracts"] == []


# --- who learns what --------------------------------------------------------------------


def test_a_stranger_sending_a_rejected_body_learns_only_that_it_is_unauthenticated(
    client: TestClient,
) -> None:
    raw = '{"name": "\\ud800", "contractType": "simple"}'
    error = assert_error_shape(post_raw(client, {"Authorization": "Bearer nope"}, BASE, raw), 401)
    assert error["code"] == "UNAUTHENTICATED"


# --- a body is parsed once ------------------------------------------------------------------


def test_a_judged_body_reaches_the_handler_without_being_parsed_again(
    client: TestClient, owner: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limits parse a JSON body to judge it; FastAPI is handed that value, not the bytes
    to parse a second time. Starlette's `Request.json` is the only way FastAPI parses a body."""
    import starlette.requests

    parsed_by_starlette: list[bytes] = []
    real_loads = json.loads

    class CountingJSON:
        @staticmethod
        def loads(text: Any, *args: Any, **kwargs: Any) -> Any:
            parsed_by_starlette.append(text)
            return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(starlette.requests, "json", CountingJSON)
    name, headers = owner
    resp = client.post(BASE, json={"name": "parsed once", "contractType": "simple"}, headers=headers)
    assert resp.status_code == 201, resp.text
    assert resp.json()["name"] == "parsed once"
    assert parsed_by_starlette == []
    assert contracts_of(name) == 1


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_body_in_another_unicode_encoding_is_refused_not_read_past_the_rules(
    client: TestClient, owner: tuple[str, dict[str, str]], encoding: str
) -> None:
    """Without a byte-order mark, UTF-16 and UTF-32 text of ASCII is valid UTF-8 (NULs and
    all) and not JSON: refused, where FastAPI would have read it its own way and taken a
    duplicate key the rules refuse in UTF-8."""
    name, headers = owner
    raw = '{"name": "a", "name": "b", "contractType": "simple"}'.encode(encoding)
    error = assert_error_shape(post_raw(client, headers, BASE, raw), 400)
    assert error["details"]["problems"][0]["type"] == "json_invalid"
    assert "UTF-8" in error["message"]
    assert contracts_of(name) == 0


def test_a_body_that_is_not_json_is_refused_naming_the_position(
    client: TestClient, owner: tuple[str, dict[str, str]]
) -> None:
    _, headers = owner
    error = assert_error_shape(post_raw(client, headers, BASE, '{"name": "broken",'), 400)
    problem = error["details"]["problems"][0]
    assert (problem["type"], problem["position"]) == ("json_invalid", 18), error


# --- a stranger's body is never read; a body must arrive in time ----------------------------


def _raw_exchange(port: int, head: bytes, wait: float = 5) -> bytes:
    """Send `head` (a request line, headers, maybe part of a body) and read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 5:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("path", [BASE, "/api/v1/supervisors/heartbeats", "/api/v1/no-such-endpoint"])
def test_without_a_token_the_answer_is_401_before_a_byte_of_the_body_is_sent(
    live_server: int, path: str
) -> None:
    """A megabyte declared and none sent: answered at once (the body is never awaited, so no
    buffer is held for a stranger), and with 401, whatever the path under /api/v1."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {MIB}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = _raw_exchange(live_server, head)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 4


def test_a_body_that_trickles_in_past_the_deadline_is_a_408(
    live_server: int, owner: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.http import limits

    monkeypatch.setattr(limits, "BODY_READ_SECONDS", 1)
    _, headers = owner
    head = (
        f"POST {BASE} HTTP/1.1\r\nHost: x\r\nAuthorization: {headers['Authorization']}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name": '
    ).encode()
    answer = _raw_exchange(live_server, head)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_too_slow" in answer


def test_a_malformed_body_from_a_stranger_on_any_api_path_is_a_401(client: TestClient) -> None:
    for path in ("/api/v1/supervisors/heartbeats", "/api/v1/daemons", "/api/v1/whoami"):
        resp = client.post(path, content=b"{", headers={"Content-Type": "application/json"})
        assert resp.status_code == 401, (path, resp.text)
