"""The live monitor against a real uvicorn, PostgreSQL and Redis: filters, catch-up, isolation,
back-pressure, SSE (issue 13)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from websockets.exceptions import ConnectionClosed

from app.api import ContractsAPI
from app.config import get_settings
from app.db import get_engine, unit_of_work
from app.domain.lifecycle import Status
from app.http.application import create_app
from app.http.errors import WS_TOO_SLOW
from app.live_events import publish_notice
from app.models import ContractEvent
from tests.integration.live_server import RawClient, drain, open_monitor, receive_until, serve

pytestmark = pytest.mark.integration


def _no_broker(task: str, payload: dict[str, Any], countdown: float | None = None, /) -> str:
    return "not-sent"


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[str]:
    with serve(create_app(sender=_no_broker)) as base:
        yield base


def _api(make_caller: Any, owner: str | None = None, role: str = "user") -> tuple[str, ContractsAPI]:
    token, caller = make_caller(owner, role)
    return token, ContractsAPI(caller=caller, sender=_no_broker)


def _active(api: ContractsAPI, name: str = "live") -> uuid.UUID:
    cid = api.create_contract(name, "simple").id
    api.change_status(cid, Status.ACTIVE)
    return cid


def _toggle(api: ContractsAPI, cid: uuid.UUID, times: int) -> None:
    for i in range(times):
        api.change_status(cid, Status.PAUSED if i % 2 == 0 else Status.ACTIVE, reason=f"toggle {i}")


def _event_ids(*contract_ids: uuid.UUID) -> list[int]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(ContractEvent.id)
                .where(ContractEvent.contract_id.in_(contract_ids))
                .order_by(ContractEvent.id)
            )
        )


def _last_id() -> int:
    with unit_of_work() as uow:
        return int(uow.session.execute(text("SELECT coalesce(max(id), 0) FROM contract_events")).scalar_one())


def test_filters_by_contract_id_and_by_status(server: str, make_caller: Any) -> None:
    token, api = _api(make_caller)
    one, two = _active(api, "one"), _active(api, "two")
    by_id = open_monitor(server, token, contractIds=[str(one)])
    by_status = open_monitor(server, token, statuses=["paused"])
    everything = open_monitor(server, token)
    _toggle(api, one, 3)  # paused, active, paused
    _toggle(api, two, 2)  # paused, active
    got_by_id, got_by_status, got_all = drain(by_id), drain(by_status), drain(everything)

    assert [e["contractId"] for e in got_by_id] == [str(one)] * 3
    assert [e["newStatus"] for e in got_by_id] == ["paused", "active", "paused"]
    assert [(e["contractId"], e["newStatus"]) for e in got_by_status] == [
        (str(one), "paused"),
        (str(one), "paused"),
        (str(two), "paused"),
    ] or sorted(e["contractId"] for e in got_by_status) == sorted([str(one), str(one), str(two)])
    assert all(e["type"] == "status_changed" and isinstance(e["id"], int) for e in got_all)
    assert len(got_all) == 5
    for ws in (by_id, by_status, everything):
        ws.close()


def test_the_filter_can_change_on_the_open_connection(server: str, make_caller: Any) -> None:
    token, api = _api(make_caller)
    one, two = _active(api, "one"), _active(api, "two")
    ws = open_monitor(server, token, contract_ids=[str(one)])  # the seed's snake_case
    _toggle(api, two, 1)
    _toggle(api, one, 1)
    assert [e["contractId"] for e in drain(ws, idle=2.5)] == [str(one)]
    ws.send(json.dumps({"contractIds": [str(two)]}))
    assert json.loads(ws.recv(timeout=5))["filter"]["contractIds"] == [str(two)]
    api.change_status(one, Status.ACTIVE)
    api.change_status(two, Status.ACTIVE)
    assert [e["contractId"] for e in drain(ws, idle=2.5)] == [str(two)]
    ws.close()


def test_heartbeats_only_with_include_heartbeats_and_browser_auth(server: str, make_caller: Any) -> None:
    token, api = _api(make_caller)
    cid = _active(api)
    with_beats = open_monitor(server, token, header=False, includeHeartbeats=True)
    without = open_monitor(server, token)
    time.sleep(0.3)
    publish_notice("heartbeat", cid, {"state": "working", "activity": "testing", "progress": 40})
    api.change_status(cid, Status.PAUSED)
    got_with, got_without = drain(with_beats), drain(without)
    assert {e["type"] for e in got_with} == {"heartbeat", "status_changed"}
    beat = next(e for e in got_with if e["type"] == "heartbeat")
    assert beat["id"] is None and beat["progress"] == 40 and beat["contractId"] == str(cid)
    assert [e["type"] for e in got_without] == ["status_changed"]


def test_another_owners_events_never_arrive_admin_sees_all(server: str, make_caller: Any) -> None:
    _, api_a = _api(make_caller)
    token_b, _api_b = _api(make_caller)
    token_admin, _ = _api(make_caller, role="admin")
    cid = _active(api_a)
    start = _last_id()
    b = open_monitor(server, token_b, after=start)
    b_asks_for_it = open_monitor(server, token_b, contractIds=[str(cid)], after=0)
    admin = open_monitor(server, token_admin, contractIds=[str(cid)], after=start)
    _toggle(api_a, cid, 4)
    assert drain(b, idle=1) == []
    assert drain(b_asks_for_it, idle=0.5) == []
    assert [e["id"] for e in drain(admin)] == _event_ids(cid)[-4:]


def test_reconnecting_with_the_last_id_gets_every_event_once_in_order_while_two_writers_commit(
    server: str, make_caller: Any
) -> None:
    """Two writers commit concurrently, and a third holds an inserted event uncommitted while
    later ids commit (the case `id > last` alone would skip); the client keeps disconnecting
    and resuming with the last id it saw."""
    token, api = _api(make_caller)
    first, second, held = _active(api, "w1"), _active(api, "w2"), _active(api, "held")
    after = _last_id()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(cid: uuid.UUID, n: int) -> None:
        try:
            _toggle(api, cid, n)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def slow_writer() -> None:
        engine = get_engine()
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            "INSERT INTO contract_events (contract_id, type, payload, created_at) "
                            "VALUES (:c, 'deliverable_completed', CAST(:p AS jsonb), now())"
                        ),
                        {"c": str(held), "p": json.dumps({"contractId": str(held), "slow": True})},
                    )
                    time.sleep(random.uniform(0.05, 0.25))  # the id is taken; later ids commit first
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(first, 120)),
        threading.Thread(target=writer, args=(second, 120)),
        threading.Thread(target=slow_writer),
    ]
    for t in threads:
        t.start()
    received: list[dict[str, Any]] = []
    last = after
    reconnects = 0
    while any(t.is_alive() for t in threads[:2]) or reconnects < 3:
        ws = open_monitor(server, token, contractIds=[str(first), str(second), str(held)], after=last)
        deadline = time.monotonic() + random.uniform(0.2, 0.6)
        try:
            while time.monotonic() < deadline:
                try:
                    message = json.loads(ws.recv(timeout=0.1))
                except TimeoutError:
                    continue
                received.append(message)
                last = message["id"]
        finally:
            ws.close()  # disconnect while the writers go on
        reconnects += 1
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    ws = open_monitor(server, token, contractIds=[str(first), str(second), str(held)], after=last)
    received.extend(drain(ws, idle=2))
    ws.close()

    expected = [i for i in _event_ids(first, second, held) if i > after]
    ids = [m["id"] for m in received]
    assert len(ids) == len(set(ids)), "an event arrived twice"
    assert sorted(ids) == expected, f"missing {sorted(set(expected) - set(ids))[:10]}"
    assert reconnects >= 3
    for cid in (first, second):  # each writer's own events arrive in the order it committed them
        mine = [m["id"] for m in received if m["contractId"] == str(cid)]
        assert mine == sorted(mine) and len(mine) == 120


def test_a_slow_client_is_closed_with_the_resume_code_and_others_keep_up(
    server: str, make_caller: Any
) -> None:
    token, api = _api(make_caller)
    cid = _active(api)
    settings = get_settings()
    saved = settings.contracts.monitor_ws_buffer_size
    settings.contracts.monitor_ws_buffer_size = 50
    try:
        start = _last_id()
        total = 800
        slow = RawClient(server, token)  # reads nothing until the end
        slow.send({})
        fast = open_monitor(server, token)
        got_fast: list[dict[str, Any]] = []
        arrived: list[float] = []

        failures: list[BaseException] = []

        def read_fast() -> None:
            try:
                while len(got_fast) < total:
                    got_fast.append(json.loads(fast.recv(timeout=60)))
                    arrived.append(time.monotonic())
            except BaseException as exc:  # pragma: no cover - asserted below
                failures.append(exc)

        reader = threading.Thread(target=read_fast)
        reader.start()
        reason = "x" * 10_000  # big events fill the socket buffers (several MB) quickly
        t0 = time.monotonic()
        for i in range(total):
            api.change_status(cid, Status.PAUSED if i % 2 == 0 else Status.ACTIVE, reason=f"{i} {reason}")
        writing = time.monotonic() - t0
        reader.join(timeout=60)
        assert not failures, failures
        assert [m["id"] for m in got_fast] == _event_ids(cid)[-total:]
        assert arrived[-1] - t0 < writing + 2, "the fast client was held up by the slow one"
        # the slow one: what the socket buffers held, then the close with the resume rule
        seen: list[dict[str, Any]] = []
        close: tuple[int, str] | None = None
        for opcode, payload in slow.frames():
            if opcode == 0x1:
                message = json.loads(payload)
                if message.get("type") != "subscribed":
                    seen.append(message)
            elif opcode == 0x8:
                close = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
        assert close is not None and close[0] == WS_TOO_SLOW, close
        assert f"resume after {seen[-1]['id']}" in close[1], (close, len(seen))
        assert len(seen) < total
        last = seen[-1]["id"] if seen else start
        resumed = open_monitor(server, token, after=last)
        rest = receive_until(resumed, total - len(seen), timeout=30)
        assert [m["id"] for m in seen + rest] == _event_ids(cid)[-total:]
        for ws in (fast, resumed):
            ws.close()
    finally:
        settings.contracts.monitor_ws_buffer_size = saved


def test_bad_filter_and_bad_token_close_with_their_codes(server: str, make_caller: Any) -> None:
    from websockets.sync.client import connect

    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    with connect(url, additional_headers={"Authorization": "Bearer mk_nope"}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, {"statuses": ["sleeping"]})
    assert code == 4400 and "sleeping" in reason
    assert [m["type"] for m in before] == ["error"]


def _refused(
    server: str, token: str, *messages: dict[str, Any], query: str = ""
) -> tuple[int, str, list[dict[str, Any]]]:
    """Connect (with `query` after the path), send the messages, then read until the close:
    its code, its reason and what came before."""
    from websockets.sync.client import connect

    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor" + query
    before: list[dict[str, Any]] = []
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        for message in messages:
            try:
                ws.send(json.dumps(message))
            except ConnectionClosed:
                break  # refused before this message was needed (a query string is judged at once)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                before.append(json.loads(ws.recv(timeout=5)))
    assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason, before


@pytest.mark.parametrize(
    ("message", "unknown"),
    [
        ({"contractID": [str(uuid.uuid4())], "after": 33}, "contractID"),
        ({"foo": 1}, "foo"),
        ({"includeStale": False, "include_stales": True}, "include_stales"),
        ({"type": "filter", "statuses": ["active"]}, "type"),
    ],
    ids=["contractID", "foo", "include_stales", "type"],
)
def test_a_filter_field_the_monitor_does_not_know_is_refused_not_ignored(
    server: str, make_caller: Any, message: dict[str, Any], unknown: str
) -> None:
    """Ignored, a misspelt field subscribed the client to every contract's events."""
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, message)
    assert code == 4400
    assert reason.startswith(f"{unknown}: is not a filter field; allowed: contractIds, statuses"), reason
    [error] = before  # no `subscribed`: the error message, then the close
    assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST"
    [problem] = error["error"]["details"]["problems"]
    assert problem["field"] == unknown
    assert error["error"]["message"] == (
        f"The message was refused: {unknown}: is not a filter field; allowed: contractIds, statuses, "
        "includeStale, includeHeartbeats, after (or the snake_case contract_ids, include_stale, "
        "include_heartbeats)."
    )


def test_a_filter_giving_one_field_in_both_spellings_is_refused_with_4400_after_an_error(
    server: str, make_caller: Any
) -> None:
    """camelCase won silently: `{"contract_ids": [X], "contractIds": []}` subscribed the client
    to every contract's events instead of X's."""
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, {"contract_ids": [str(uuid.uuid4())], "contractIds": []})
    assert code == 4400
    assert reason.startswith("contractIds: is given twice, as contractIds and as contract_ids"), reason
    [error] = before  # no `subscribed`: the error message, then the close
    assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST"
    [problem] = error["error"]["details"]["problems"]
    assert (problem["field"], problem["given"]) == ("contractIds", ["contractIds", "contract_ids"])


def test_an_unknown_field_in_a_filter_change_is_refused_too(server: str, make_caller: Any) -> None:
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, {}, {"contractID": [str(uuid.uuid4())]})
    assert code == 4400 and reason.startswith("contractID: is not a filter field"), reason
    assert [m["type"] for m in before if m["type"] in ("subscribed", "error")] == ["subscribed", "error"]


def test_a_long_refusal_closes_with_a_reason_that_fits_after_an_error_message_with_all_of_it(
    server: str, make_caller: Any
) -> None:
    """A close reason holds 123 bytes; this filter's problems take far more, in several scripts."""
    token, _ = _api(make_caller)
    bad = ["nope", "été-été", "停止中", "😴" * 10]
    message = {"contractIds": ["not-a-uuid"], "statuses": bad, "includeStale": "yes", "foo": 1}
    code, reason, before = _refused(server, token, message)
    [error] = before
    text = error["error"]["message"].removeprefix("The message was refused: ").removesuffix(".")
    assert code == 4400
    assert len(reason.encode()) <= 123 and reason.endswith("…"), reason
    kept = reason.removesuffix("…")
    assert text.startswith(kept) and text[len(kept)] in " ,;", "cut inside a word"
    problems = error["error"]["details"]["problems"]
    assert [p["field"] for p in problems] == ["foo", "contractIds", *["statuses"] * 4, "includeStale"]
    assert [p["given"] for p in problems if p["field"] == "statuses"] == bad
    for given in bad:
        assert f"'{given}' is not a status; allowed: created, active," in text
    assert text.endswith("includeStale: must be true or false")


def test_a_message_that_is_not_a_json_object_is_refused_the_same_way(server: str, make_caller: Any) -> None:
    from websockets.sync.client import connect

    token, _ = _api(make_caller)
    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send("[1, 2")
        error = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert error["error"]["message"] == "The message was refused: message: must be a JSON object."
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4400, "message: must be a JSON object")


def test_both_spellings_of_every_filter_field_and_a_redundant_auth_message_are_accepted(
    server: str, make_caller: Any
) -> None:
    from websockets.sync.client import connect

    token, _ = _api(make_caller)
    cid = str(uuid.uuid4())
    snake = {"contract_ids": [cid], "statuses": ["paused"], "include_stale": True, "include_heartbeats": True}
    camel = {"contractIds": [cid], "statuses": ["paused"], "includeStale": True, "includeHeartbeats": True}
    for message in (snake, camel):
        ws = open_monitor(server, token, **message, after=0)
        ws.close()
    # An auth message on a connection the header authenticated is passed over, not taken for a filter.
    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send(json.dumps({"type": "auth", "token": token}))
        ws.send(json.dumps(camel))
        assert json.loads(ws.recv(timeout=5)) == {"type": "subscribed", "filter": camel, "after": None}


TAKES_NONE = "is not a query parameter of this request, which takes none"
FILTER_IS_A_MESSAGE = (
    "The live monitor takes its filter (contractIds, statuses, includeStale, includeHeartbeats, after) "
    "as a message, not in the URL, and its token in the Authorization header or an auth message."
)


@pytest.mark.parametrize(
    ("query", "named", "given"),
    [
        (f"?contractIds={uuid.UUID(int=7)}", "contractIds", str(uuid.UUID(int=7))),
        ("?token=mk_abc", "token", "mk_abc"),
        ("?statuses=", "statuses", ""),  # empty
        ("?after=1&after=2", "after", "1"),  # repeated
        ("?=x", "", "x"),  # a value with no name
    ],
    ids=["contractIds", "token", "empty", "repeated", "no-name"],
)
def test_the_websocket_refuses_any_query_parameter_with_4400_after_an_error_naming_it(
    server: str, make_caller: Any, query: str, named: str, given: str
) -> None:
    """Passed over, `?contractIds=X` subscribed the client to every contract while it believed
    it had asked for X. The URL takes nothing (the filter is a message), so every parameter is
    refused by the /api/v1 rule, even with a good filter message sent after it."""
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, {"statuses": ["active"]}, query=query)
    assert (code, reason) == (4400, f"{named}: {TAKES_NONE}")
    [error] = before  # no `subscribed`: the error message, then the close
    assert error == {
        "type": "error",
        "error": {
            "code": "INVALID_REQUEST",
            "message": f"The query string was refused: {named}: {TAKES_NONE}. {FILTER_IS_A_MESSAGE}",
            "details": {
                "problems": [
                    {
                        "field": named,
                        "in": "query",
                        "type": "extra_forbidden",
                        "problem": TAKES_NONE,
                        "given": given,
                        "allowed": [],
                    }
                ]
            },
        },
    }


def test_the_websocket_names_every_query_parameter_it_refuses_and_a_browser_learns_it_after_its_auth(
    server: str, make_caller: Any
) -> None:
    from websockets.sync.client import connect

    token, _ = _api(make_caller)
    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor?includeStale=true&x=1&x=2"
    with connect(url) as ws:  # a browser: no header, an auth message first
        ws.send(json.dumps({"type": "auth", "token": token}))
        error = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert [(p["field"], p["type"]) for p in error["error"]["details"]["problems"]] == [
        ("includeStale", "extra_forbidden"),
        ("x", "extra_forbidden"),
    ]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert closed.value.rcvd.reason.startswith(f"includeStale: {TAKES_NONE}; x: "), closed.value.rcvd.reason


def test_a_stranger_with_a_query_string_on_the_websocket_learns_only_that_it_is_not_authenticated(
    server: str,
) -> None:
    from websockets.sync.client import connect

    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor?contractIds=x"
    with (
        connect(url, additional_headers={"Authorization": "Bearer mk_nope"}) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.parametrize("query", ["contractID=x", "contract_ids=x", "foo=1&statuses=active"])
def test_sse_refuses_a_query_parameter_it_does_not_know_naming_the_known_ones(
    server: str, make_caller: Any, query: str
) -> None:
    token, _ = _api(make_caller)
    response = httpx.get(
        f"{server}/api/v1/contracts/events/stream?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    [problem] = error["details"]["problems"]
    assert problem["field"] == query.split("=")[0] and problem["in"] == "query"
    assert problem["allowed"] == ["contractIds", "statuses", "includeStale", "includeHeartbeats", "after"]
    assert "known parameters: contractIds, statuses" in problem["problem"]


def test_the_schemas_example_of_an_unknown_parameter_is_the_answer_it_gets(
    server: str, make_caller: Any
) -> None:
    token, _ = _api(make_caller)
    schema = httpx.get(f"{server}/openapi.json").json()
    refused = schema["paths"]["/api/v1/contracts/events/stream"]["get"]["responses"]["422"]
    example = refused["content"]["application/json"]["examples"]["INVALID_REQUEST (unknown parameter)"]
    response = httpx.get(
        f"{server}/api/v1/contracts/events/stream?contractID=x", headers={"Authorization": f"Bearer {token}"}
    )
    assert (response.status_code, response.json()) == (422, example["value"])


def test_sse_takes_every_parameter_it_documents(server: str, make_caller: Any) -> None:
    token, _ = _api(make_caller)
    query = (
        f"contractIds={uuid.uuid4()}&statuses=active,paused&includeStale=true&includeHeartbeats=false&after=0"
    )
    with (
        httpx.Client(base_url=server, timeout=10) as client,
        client.stream(
            "GET", f"/api/v1/contracts/events/stream?{query}", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status_code == 200
        assert next(response.iter_lines()) == ": connected"


def test_sse_stream_resumes_from_last_event_id(server: str, make_caller: Any) -> None:
    token, api = _api(make_caller)
    cid = _active(api)
    start = _last_id()
    _toggle(api, cid, 3)
    ids = _event_ids(cid)[-3:]
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(ids[0])}
    got: list[int] = []
    with (
        httpx.Client(base_url=server, timeout=10) as client,
        client.stream("GET", "/api/v1/contracts/events/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("id: "):
                got.append(int(line[4:]))
            if len(got) == 2:
                break
    assert got == ids[1:]
    assert start < ids[0]


def test_monitoring_switched_off_says_so(server: str, make_caller: Any) -> None:
    from websockets.sync.client import connect

    token, _ = _api(make_caller)
    flags = get_settings().feature_flags
    flags.monitoring_dashboard = False
    try:
        response = httpx.get(
            server + "/api/v1/contracts/events/stream", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "FEATURE_DISABLED"
        url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
            assert "FEATURE_DISABLED" in closed.value.rcvd.reason
    finally:
        flags.monitoring_dashboard = True


def _hold_the_horizon() -> Any:
    """Another client's transaction that took an id and stays open: the cluster's horizon stops at it."""
    conn = get_engine().connect()
    conn.begin()
    conn.execute(text("SELECT pg_current_xact_id()"))
    return conn


def test_a_subscription_without_after_starts_now_even_behind_an_open_transaction(
    server: str, make_caller: Any
) -> None:
    """An event committed just before the subscription is still above the horizon while an older
    transaction is open; it is history for the new subscriber all the same."""
    token, api = _api(make_caller)
    cid = _active(api)
    holder = _hold_the_horizon()
    try:
        api.change_status(cid, Status.PAUSED, reason="before the subscription")
        ws = open_monitor(server, token, contractIds=[str(cid)])
        api.change_status(cid, Status.ACTIVE, reason="after the subscription")
    finally:
        holder.rollback()
        holder.close()
    got = drain(ws)
    ws.close()
    assert [(e["newStatus"], e["reason"]) for e in got] == [("active", "after the subscription")]
    assert [e["id"] for e in got] == _event_ids(cid)[-1:]


def test_an_event_held_back_by_an_open_transaction_arrives_when_it_ends_without_waiting_for_a_poll(
    server: str, make_caller: Any
) -> None:
    """Its wake-up came while the horizon held it back; with no poll for a minute and no further
    wake-up, the hub's own re-reads deliver it once the older transaction has ended."""
    token, api = _api(make_caller)
    cid = _active(api)
    monitor = get_settings().monitor
    saved = monitor.poll_seconds
    ws = open_monitor(server, token, contractIds=[str(cid)])
    monitor.poll_seconds = 60
    try:
        time.sleep(1.2)  # the hub's wait under the old poll ends; from here on it waits 60 s
        holder = _hold_the_horizon()
        try:
            api.change_status(cid, Status.PAUSED, reason="held back")
            assert drain(ws, idle=1) == []  # still behind the open transaction
        finally:
            holder.rollback()
            holder.close()
        got = receive_until(ws, 1, timeout=20)
    finally:
        monitor.poll_seconds = saved
        ws.close()
    assert [(e["newStatus"], e["reason"]) for e in got] == [("paused", "held back")]


def test_another_databases_open_transaction_holds_back_neither_the_stream_nor_a_catch_up(
    server: str, make_caller: Any
) -> None:
    """A transaction in another database on the cluster (another application, another test run)
    cannot write our events; with no poll for a minute, the event arrives while it is open."""
    from sqlalchemy import create_engine

    from tests.isolation import PG_ADMIN_URL

    token, api = _api(make_caller)
    cid = _active(api)
    monitor = get_settings().monitor
    saved = monitor.poll_seconds
    ws = open_monitor(server, token, contractIds=[str(cid)])
    monitor.poll_seconds = 60
    elsewhere = create_engine(PG_ADMIN_URL)
    other = elsewhere.connect()
    try:
        time.sleep(1.2)  # the hub's wait under the old poll ends; from here on it waits 60 s
        other.begin()
        other.execute(text("SELECT pg_current_xact_id()"))
        before = _event_ids(cid)[-1]
        api.change_status(cid, Status.PAUSED, reason="while another database's transaction is open")
        got = receive_until(ws, 1, timeout=20)
        catching_up = open_monitor(server, token, contractIds=[str(cid)], after=before)
        caught = receive_until(catching_up, 1, timeout=20)
        catching_up.close()
    finally:
        monitor.poll_seconds = saved
        other.rollback()
        other.close()
        elsewhere.dispose()
        ws.close()
    assert [e["id"] for e in got] == [e["id"] for e in caught] == _event_ids(cid)[-1:]
    assert got[0]["reason"] == "while another database's transaction is open"


def _listen_for_wake_ups() -> tuple[Any, Any]:
    """A subscriber on the live channel, as every API process holds one."""
    import redis

    from app.live_events import channel, redis_url

    client = redis.Redis.from_url(redis_url())
    sub = client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel())
    sub.get_message(timeout=1)  # the subscription's confirmation
    return client, sub


def _wake_ups(sub: Any, seconds: float = 3) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = sub.get_message(timeout=0.2)
        if message is not None:
            batch = json.loads(message["data"])
            got += [m for m in (batch if isinstance(batch, list) else [batch]) if "events" in m]
    return got


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_an_events_created_at_is_when_its_transaction_wrote_it_not_when_the_change_began(
    dialect: str, make_caller: Any, tmp_path: Any
) -> None:
    """createdAt is what the monitor's latency is read from: a change whose clock says it began
    five minutes ago (lock waits, a slow judgement) is stamped when its write goes to the
    database, on the session path (a status change) and the guarded phase change's own path."""
    from datetime import timedelta

    from app.auth import Role, create_token
    from app.db import migrate
    from app.models import utcnow

    engine = None
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'makima.db'}"
        migrate(url)
        engine = get_engine(url)
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "sqlite-owner", Role.USER)
    else:
        token, _ = make_caller()
    api = ContractsAPI(token, engine=engine, sender=_no_broker, clock=lambda: utcnow() - timedelta(minutes=5))
    cid = uuid.UUID(str(api.create_contract("stamped", "simple").id))
    began = utcnow()
    api.change_status(cid, Status.ACTIVE)
    api.complete_deliverable(cid, "plan-document")
    api.change_phase(cid, "execute")
    ended = utcnow()
    events = {e.type: e.created_at for e in api.events(cid).events}
    assert {"status_changed", "deliverable_completed", "phase_changed"} <= events.keys()
    for type_ in ("status_changed", "deliverable_completed", "phase_changed"):
        assert began <= events[type_] <= ended, type_
    if engine is not None:
        engine.dispose()


def test_a_wake_up_names_its_transactions_event_ids_and_when_its_commit_returned(make_caller: Any) -> None:
    """What a reader needs (`last`) and what the monitor's latency is measured from: the ids and
    the writer's clock right after COMMIT, later than the events' createdAt."""
    from datetime import datetime

    _, api = _api(make_caller)
    cid = _active(api)
    client, sub = _listen_for_wake_ups()
    try:
        before = time.time()
        api.change_status(cid, Status.PAUSED, reason="announced")
        after = time.time()
        got = _wake_ups(sub)
    finally:
        sub.close()
        client.close()
    event_id = _event_ids(cid)[-1]
    mine = [m for m in got if event_id in m.get("ids", [])]
    assert len(mine) == 1
    assert (mine[0]["events"], mine[0]["last"], mine[0]["ids"]) == (1, event_id, [event_id])
    created = datetime.fromisoformat(api.events(cid, after=event_id - 1).events[0].created_at.isoformat())
    assert before <= created.timestamp() <= mine[0]["committedAt"] <= after


def test_heartbeat_ingestion_wakes_the_readers_for_the_state_changes_it_wrote(
    server: str, make_caller: Any
) -> None:
    """The ingestion's one statement writes supervisor_state_changed rows itself (no held events):
    with the poll set to a minute, the worker task's wake-up is what brings them to the client."""
    from app.heartbeat_messages import message_of
    from app.models import utcnow
    from workers.heartbeats import ingest

    owner = f"owner-{uuid.uuid4().hex[:8]}"
    token, api = _api(make_caller, owner)
    _, daemon = make_caller(owner, "supervisor")
    cid = _active(api)
    monitor = get_settings().monitor
    saved = monitor.poll_seconds
    ws = open_monitor(server, token, contractIds=[str(cid)])
    monitor.poll_seconds = 60
    try:
        time.sleep(1.2)  # the hub's wait under the old poll ends; from here on it waits 60 s
        beat = {
            "id": str(uuid.uuid4()),
            "taskId": str(uuid.uuid4()),
            "contractId": str(cid),
            "state": "working",
            "phase": "plan",
            "currentActivity": "writing the plan",
            "progress": 10,
            "pendingTaskIds": [],
            "timestamp": utcnow().isoformat(),
        }
        report = ingest(message_of({daemon.principal_id: [beat]}))
        got = receive_until(ws, 1, timeout=10)
    finally:
        monitor.poll_seconds = saved
        ws.close()
    assert report is not None and report["stateChanges"] == 1
    assert [(e["type"], e["newState"]) for e in got] == [("supervisor_state_changed", "working")]


# --- the monitor's own bounds: token revocation, `after`, messages, authentication time ---------


def _revoke_elsewhere(token: str) -> None:
    """Revoke the token as another process would: in the database, this process's cache untouched."""
    from sqlalchemy import update

    from app.auth import hash_token
    from app.models import ApiToken, utcnow

    with unit_of_work() as uow:
        uow.session.execute(
            update(ApiToken).where(ApiToken.token_hash == hash_token(token)).values(revoked_at=utcnow())
        )


@pytest.fixture
def quick_token_checks(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(get_settings().monitor, "token_recheck_seconds", 0.5)
    return 0.5


def test_a_revoked_token_ends_an_open_websocket_with_4401_after_an_error_message(
    server: str, make_caller: Any, quick_token_checks: float
) -> None:
    token, api = _api(make_caller)
    cid = _active(api)
    ws = open_monitor(server, token)
    _revoke_elsewhere(token)
    revoked = time.monotonic()
    api.change_status(cid, Status.PAUSED)
    received: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            received.append(json.loads(ws.recv(timeout=10)))
    took = time.monotonic() - revoked
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert "revoked" in closed.value.rcvd.reason
    assert received[-1]["type"] == "error" and received[-1]["error"]["code"] == "UNAUTHENTICATED"
    assert "revoked" in received[-1]["error"]["message"]
    assert took < quick_token_checks + 2, took


def test_a_revoked_token_ends_an_open_event_stream_with_an_error_event(
    server: str, make_caller: Any, quick_token_checks: float
) -> None:
    token, api = _api(make_caller)
    cid = _active(api)
    lines: list[str] = []
    with (
        httpx.Client(base_url=server, timeout=10) as client,
        client.stream(
            "GET", "/api/v1/contracts/events/stream", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status_code == 200
        _revoke_elsewhere(token)
        revoked = time.monotonic()
        api.change_status(cid, Status.PAUSED)
        lines.extend(response.iter_lines())  # until the server ends the stream
        took = time.monotonic() - revoked
    assert took < quick_token_checks + 2, took
    assert "event: error" in lines, lines
    data = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert data["type"] == "error" and data["error"]["code"] == "UNAUTHENTICATED"
    assert "revoked" in data["error"]["message"]


def test_a_token_that_expires_while_the_event_stream_is_open_ends_it(
    server: str, quick_token_checks: float
) -> None:
    from datetime import timedelta

    from app.auth import Role, create_token

    with unit_of_work() as uow:
        token = create_token(
            uow.session, f"owner-{uuid.uuid4().hex[:8]}", Role.USER, expires_in=timedelta(seconds=2)
        )
    with (
        httpx.Client(base_url=server, timeout=10) as client,
        client.stream(
            "GET", "/api/v1/contracts/events/stream", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status_code == 200
        lines = list(response.iter_lines())
    data = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert data["error"]["code"] == "UNAUTHENTICATED" and "expired" in data["error"]["message"]


BIGINT_PAST_THE_END = 2**63


@pytest.mark.parametrize("after", [BIGINT_PAST_THE_END, 10**22, -1, "9223372036854775808", "١٢", 1.5, True])
def test_an_after_that_is_not_an_event_id_is_refused_with_4400_naming_it(
    server: str, make_caller: Any, after: Any
) -> None:
    token, _ = _api(make_caller)
    code, reason, before = _refused(server, token, {"after": after})
    assert code == 4400 and reason.startswith("after: must be an event id"), reason
    [error] = before  # refused before `subscribed`
    [problem] = error["error"]["details"]["problems"]
    assert problem["field"] == "after" and str(2**63 - 1) in problem["problem"]


def test_the_largest_event_id_is_a_valid_after(server: str, make_caller: Any) -> None:
    token, _ = _api(make_caller)
    ws = open_monitor(server, token, after=2**63 - 1)
    assert drain(ws, idle=0.5) == []
    ws.close()


@pytest.mark.parametrize(
    ("query", "headers", "field", "where"),
    [
        ("?after=99999999999999999999999", {}, "after", "query"),
        ("?after=9223372036854775808", {}, "after", "query"),
        ("", {"Last-Event-ID": "9223372036854775808"}, "Last-Event-ID", "header"),
        ("", {"Last-Event-ID": "²".encode("latin-1")}, "Last-Event-ID", "header"),
        ("", {"Last-Event-ID": "9" * 5000}, "Last-Event-ID", "header"),
    ],
    ids=["after-huge", "after-2^63", "last-event-id-2^63", "last-event-id-superscript", "last-event-id-long"],
)
def test_sse_refuses_a_resume_point_that_is_not_an_event_id_with_422_naming_it(
    server: str, make_caller: Any, query: str, headers: dict[str, Any], field: str, where: str
) -> None:
    token, _ = _api(make_caller)
    response = httpx.get(
        f"{server}/api/v1/contracts/events/stream{query}",
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=10,
    )
    assert response.status_code == 422, response.text
    [problem] = response.json()["error"]["details"]["problems"]
    assert (problem["field"], problem["in"]) == (field, where)


def _refused_raw(server: str, token: str | None, frame: str | bytes) -> tuple[int, str, list[dict[str, Any]]]:
    from websockets.sync.client import connect

    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    headers = {"Authorization": f"Bearer {token}"} if token else None
    before: list[dict[str, Any]] = []
    with connect(url, additional_headers=headers, max_size=None) as ws:
        ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                before.append(json.loads(ws.recv(timeout=5)))
    assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason, before


@pytest.mark.parametrize("authenticated", [True, False], ids=["filter", "auth-message"])
@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b'{"contractIds": []}', "binary"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "json_too_deep"),
        ('{"statuses": ["\\ud800"]}', "unicode_invalid"),
        ('{"type": "auth", "token": "mk_\\ud800"}', "unicode_invalid"),
        ('{"after": 1, "after": 2}', "json_duplicate_key"),
        ('{"after": NaN}', "number_invalid"),
    ],
    ids=["binary", "deep", "surrogate-filter", "surrogate-auth", "duplicate-key", "nan"],
)
def test_a_message_an_http_body_could_not_carry_is_refused_with_4400_and_an_error(
    server: str, make_caller: Any, frame: str | bytes, kind: str, authenticated: bool
) -> None:
    token, _ = _api(make_caller)
    code, reason, before = _refused_raw(server, token if authenticated else None, frame)
    assert code == 4400, (code, reason)
    [error] = before
    assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST"
    [problem] = error["error"]["details"]["problems"]
    assert problem["field"].startswith("message")
    if kind == "binary":
        assert "text frame" in problem["problem"]
    else:
        assert problem["type"] == kind


def test_a_connection_that_does_not_authenticate_in_time_is_closed_with_4401(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from websockets.sync.client import connect

    monkeypatch.setattr(get_settings().monitor, "auth_timeout_seconds", 0.5)
    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    started = time.monotonic()
    with connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert time.monotonic() - started < 3
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert closed.value.rcvd.reason.startswith("not authenticated within 0.5 s"), closed.value.rcvd.reason


def _closed_after(ws: Any, wait: float = 5) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes: its code, its reason and the messages before the close."""
    before: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            before.append(json.loads(ws.recv(timeout=wait)))
    assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason, before


@pytest.mark.parametrize("header", [True, False], ids=["header", "auth-message"])
def test_an_authenticated_connection_that_never_subscribes_is_closed_with_4400_in_time(
    server: str, make_caller: Any, monkeypatch: pytest.MonkeyPatch, header: bool
) -> None:
    """Nothing flows before a filter message, so a connection that never sends one only holds
    the server's resources: it gets `[monitor] auth_timeout_seconds` after authenticating."""
    from websockets.sync.client import connect

    monkeypatch.setattr(get_settings().monitor, "auth_timeout_seconds", 0.5)
    token, _ = _api(make_caller)
    url = server.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    started = time.monotonic()
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"} if header else None) as ws:
        if not header:
            ws.send(json.dumps({"type": "auth", "token": token}))
            ws.send(json.dumps({"type": "auth", "token": token}))  # passed over: no more time
        code, reason, before = _closed_after(ws)
    assert time.monotonic() - started < 3
    assert code == 4400, (code, reason)
    assert reason.startswith("message: no filter message within 0.5 s"), reason
    assert len(reason.encode()) <= 123 and not reason.endswith("\u2026"), reason
    [error] = before
    assert error["type"] == "error" and error["error"]["code"] == "INVALID_REQUEST"
    assert "within 0.5 s" in error["error"]["message"] and "{}" in error["error"]["message"]
    [problem] = error["error"]["details"]["problems"]
    assert problem["field"] == "message"


def test_a_connection_that_subscribed_in_time_is_not_closed_by_the_timeout(
    server: str, make_caller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings().monitor, "auth_timeout_seconds", 0.5)
    token, api = _api(make_caller)
    cid = _active(api)
    ws = open_monitor(server, token, contractIds=[str(cid)])
    time.sleep(1.5)  # three timeouts long: an open subscription has no deadline
    api.change_status(cid, Status.PAUSED)
    [event] = receive_until(ws, 1, timeout=10)
    assert (event["type"], event["newStatus"]) == ("status_changed", "paused")
    ws.close()
