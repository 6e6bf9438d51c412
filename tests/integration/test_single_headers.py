"""A request may carry `Authorization`, `Idempotency-Key`, `Last-Event-ID`, `Content-Type` and
`Content-Length` at most once
(`app.http.single_headers`).

With two Authorization headers the first used to authenticate and the second was ignored (a
revoked token first was 401, second 200), so behind a proxy that adds one the identity acting
depended on header order. Now either order is 400 INVALID_REQUEST naming the header, over a
real socket as through the test client, and on the live monitor's WebSocket it closes 4400.
Two Idempotency-Key headers on a batch are 400 too, after the 401 a stranger gets first.
"""

from __future__ import annotations

import http.client
import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from app.auth import Role, create_token, list_tokens, revoke_token
from app.db import unit_of_work
from app.http import create_app
from app.http.errors import WS_INVALID_REQUEST
from tests.integration.helpers import no_send
from tests.integration.live_server import serve

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
BATCH = "/api/v1/contracts/batch"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(create_app(sender=no_send)) as base:
        yield base


def token_of(role: Role = Role.USER) -> str:
    with unit_of_work() as uow:
        return create_token(uow.session, f"headers-{uuid.uuid4().hex[:8]}", role)


def revoked_token() -> str:
    owner = f"revoked-{uuid.uuid4().hex[:8]}"
    with unit_of_work() as uow:
        token = create_token(uow.session, owner, Role.USER)
    with unit_of_work() as uow:
        (info,) = list_tokens(uow.session, owner)
        revoke_token(uow.session, info.id)
    return token


def assert_repeated(status: int, body: dict[str, Any], header: str) -> None:
    assert status == 400, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "INVALID_REQUEST"
    assert header in error["message"] and "exactly one" in error["message"]
    assert error["details"]["header"] == header
    (problem,) = error["details"]["problems"]
    assert problem["field"] == header and problem["in"] == "header"
    assert problem["type"] == "repeated_header" and problem["count"] == 2 and problem["limit"] == 1


def get_raw(base: str, path: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """GET over a real socket with exactly these header lines, repeats included."""
    url = urlparse(base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.putrequest("GET", path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("revoked_first", [True, False])
def test_two_authorization_headers_are_refused_in_either_order_over_a_socket(
    server: str, revoked_first: bool
) -> None:
    valid, revoked = f"Bearer {token_of()}", f"Bearer {revoked_token()}"
    assert get_raw(server, BASE, [("Authorization", valid)])[0] == 200
    assert get_raw(server, BASE, [("Authorization", revoked)])[0] == 401
    pair = [revoked, valid] if revoked_first else [valid, revoked]
    status, body = get_raw(server, BASE, [("Authorization", value) for value in pair])
    assert_repeated(status, body, "Authorization")


def test_the_same_token_twice_is_refused_too(client: TestClient) -> None:
    """Not a judgement of the tokens: the header may appear once, whatever it says."""
    value = f"Bearer {token_of()}"
    answer = client.get(BASE, headers=[("Authorization", value), ("Authorization", value)])
    assert_repeated(answer.status_code, answer.json(), "Authorization")


def test_two_authorization_headers_are_refused_before_routing_or_the_body(client: TestClient) -> None:
    value = f"Bearer {token_of()}"
    twice = [("Authorization", value), ("Authorization", value)]
    unknown = client.get(f"{BASE}/{uuid.uuid4()}/nowhere", headers=twice)
    assert_repeated(unknown.status_code, unknown.json(), "Authorization")
    bad_json = client.post(BASE, content=b"{not json", headers=[*twice, ("Content-Type", "application/json")])
    assert_repeated(bad_json.status_code, bad_json.json(), "Authorization")


def test_two_idempotency_keys_on_a_batch_are_refused(client: TestClient) -> None:
    admin = ("Authorization", f"Bearer {token_of(Role.ADMIN)}")
    body = {"operation": "resume_all", "dryRun": True}
    once = client.post(BATCH, json=body, headers=[admin, ("Idempotency-Key", "k1")])
    assert once.status_code == 200, once.text
    twice = client.post(
        BATCH, json=body, headers=[admin, ("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")]
    )
    assert_repeated(twice.status_code, twice.json(), "Idempotency-Key")


def test_two_last_event_ids_on_the_event_stream_are_refused(client: TestClient) -> None:
    """Which of two resume points to resume after is a guess: the first was used silently."""
    auth = ("Authorization", f"Bearer {token_of()}")
    answer = client.get(
        "/api/v1/contracts/events/stream", headers=[auth, ("Last-Event-ID", "1"), ("Last-Event-ID", "999999")]
    )
    assert_repeated(answer.status_code, answer.json(), "Last-Event-ID")


def test_a_stranger_with_two_idempotency_keys_gets_its_401_first(client: TestClient) -> None:
    body = {"operation": "resume_all", "dryRun": True}
    answer = client.post(BATCH, json=body, headers=[("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")])
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "UNAUTHENTICATED"


def test_the_monitor_socket_with_two_authorization_headers_closes_4400(server: str) -> None:
    value = f"Bearer {token_of()}"
    url = server.replace("http://", "ws://") + f"{BASE}/monitor"
    with connect(url, additional_headers=[("Authorization", value), ("Authorization", value)]) as ws:
        error = json.loads(ws.recv(timeout=10))
        assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST"
        assert error["error"]["details"]["problems"][0]["field"] == "Authorization"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == WS_INVALID_REQUEST


def test_two_content_types_are_refused_so_no_body_skips_the_limits(client: TestClient) -> None:
    """The body limits read the last Content-Type, FastAPI the first: a JSON body sent with a
    text type second skipped every check (a duplicate key changed a contract's status)."""
    auth = ("Authorization", f"Bearer {token_of()}")
    created = client.post(BASE, json={"name": "two types", "contractType": "simple"}, headers=[auth])
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    body = b'{"targetStatus":"active","targetStatus":"failed","reason":"x"}'
    both = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
    for types in (both, both[::-1]):
        twice = client.post(f"{BASE}/{cid}/status", content=body, headers=[auth, *types])
        assert_repeated(twice.status_code, twice.json(), "Content-Type")
    assert client.get(f"{BASE}/{cid}", headers=[auth]).json()["status"] == created.json()["status"]
