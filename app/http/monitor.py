"""The live monitor over WebSocket (`/api/v1/contracts/monitor`) and Server-Sent Events.

WebSocket protocol (README "Live monitor"):

1. Authenticate: `Authorization: Bearer <token>` on the upgrade request, or, from a browser,
   a first message `{"type": "auth", "token": "mk_..."}`.
2. Send a filter message (seed 4.1.2, camelCase or snake_case, every field optional):
   `{"contractIds": [...], "statuses": [...], "includeStale": true, "includeHeartbeats": false,
   "after": 1234}`. The server answers `{"type": "subscribed", "filter": {...}}`, then sends
   the events after `after` (if given) and then the live ones, one JSON object each. A field
   it does not know is refused like a bad value (4400): a misspelt `contractID` ignored would
   subscribe the client to every contract, and so is a field given in both spellings
   (`contract_ids` and `contractIds`). An `auth` message on a connection already
   authenticated is passed over (the first authentication holds). Nothing is sent before this
   message, so it must arrive within `[monitor] auth_timeout_seconds` of authenticating (else
   4400 after an `error` message): a connection that never subscribed would hold its socket
   and task for as long as the client kept it open.
3. Send another filter message at any time to change the filter (no catch-up is redone).

Close codes (`app.http.errors`): 4401 not authenticated (a bad token, no authentication
within `[monitor] auth_timeout_seconds`, or a token revoked or expired while the connection is
open: each open subscription's token is looked up again every `[monitor] token_recheck_seconds`,
and an `error` message saying why comes first), 4400 bad message (not a JSON object in a text
frame, JSON an HTTP body could not carry either (`app.http.limits.load_json`), a bad filter or
`after`, no filter message within `[monitor] auth_timeout_seconds` of authenticating),
4503 FEATURE_DISABLED, 4408 too slow (its reason says `resume after <id>`: reconnect
with that `after`). A close reason holds at most 123 bytes (`websocket_close_reason` cuts a longer one at
a word), too few to list what a filter allows: a 4400 close follows an `error` message with the
whole explanation, `{"type": "error", "error": {"code", "message", "details": {"problems"}}}`
(the HTTP API's error shape).

Events go to the server's own ASGI `send` (`ServerSend` puts it in the connection's scope),
started by the hub as it dispatches them (`app.monitor.Subscriber.offer`), not through
Starlette's WebSocket from a task per subscriber: the same event goes to every subscriber,
and those layers (its state checks, its exception handling's wrapper, a task switch) were
paid once per delivery. The handshake, the answers to filter messages, the catch-up and the
close still go through Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.auth import Caller, Unauthenticated, hash_token
from app.config import get_settings
from app.db import get_engine
from app.domain.errors import FeatureDisabled
from app.http.deps import authenticate_token, authenticated_caller, reauthenticate_token, wiring
from app.http.errors import (
    API_PREFIX,
    WS_FEATURE_DISABLED,
    WS_INVALID_REQUEST,
    WS_TOO_SLOW,
    WS_UNAUTHENTICATED,
    error_responses,
    websocket_close_reason,
)
from app.http.limits import BodyRejected, load_json
from app.http.problems import InvalidRequest, summary
from app.monitor import DirectSend, FilterError, Hub, MonitorFilter, Subscriber, pump
from app.schemas import ErrorCode

log = logging.getLogger(__name__)
E = ErrorCode

router = APIRouter(prefix=API_PREFIX, tags=["monitor"])

FLAG: Final = "monitoring_dashboard"
SSE_KEEPALIVE_SECONDS: Final = 15.0
TOO_SLOW_CLOSE_SECONDS: Final = 30.0
SERVER_SEND: Final = "makima.server_send"
# Event ids are BIGINT: an `after` past the largest cannot name one (and the database refuses it).
MAX_EVENT_ID: Final = 2**63 - 1
_OFF_LOOP_CHARS: Final = 64 * 1024  # judge longer messages in a worker thread


class ServerSend:
    """ASGI middleware: a WebSocket connection's scope carries the server's own `send`.

    Outside Starlette's per-connection wrappers (`create_app` adds it last, so it is the
    outermost of the app's own), for the monitor's events (module docstring).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A coroutine function, as uvicorn's is: the hub starts a send by hand (app.monitor).
        if scope["type"] == "websocket" and inspect.iscoroutinefunction(send):
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


def require_monitoring() -> None:
    """The `[feature_flags] monitoring_dashboard` switch: off answers FEATURE_DISABLED."""
    if not get_settings().feature_flags.monitoring_dashboard:
        raise FeatureDisabled(FLAG)


def hub_of(app: Any) -> Hub:
    """The app's hub on the running event loop (one reader per process and loop)."""
    loop = asyncio.get_running_loop()
    hub: Hub | None = getattr(app.state, "monitor_hub", None)
    if hub is None or getattr(app.state, "monitor_hub_loop", None) is not loop:
        wired = app.state.wiring
        hub = Hub(lambda: wired.engine or get_engine())
        app.state.monitor_hub = hub
        app.state.monitor_hub_loop = loop
    return hub


def _after(raw: Any, field: str = "after") -> int | None:
    """An event id to resume after: a whole number from 0 to MAX_EVENT_ID (a string of ASCII
    digits too, as the SSE header sends it); else FilterError naming `field`."""
    if raw is None:
        return None
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= 19:
        value = int(raw)
    if value is None or not 0 <= value <= MAX_EVENT_ID:
        problem = f"must be an event id: a whole number from 0 to {MAX_EVENT_ID}"
        raise FilterError([{"field": field, "problem": problem, "given": raw}])
    return value


async def _close(websocket: WebSocket, code: int, reason: str, wait: float = 2) -> None:
    """Close with a code and reason (cut to fit a close frame); gives up (drops the connection)
    after `wait` seconds."""
    if websocket.client_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, websocket_close_reason(reason)), wait)


async def _refuse(
    websocket: WebSocket, problems: list[dict[str, Any]], wait: float = 2, message: str | None = None
) -> None:
    """Close with 4400 after an `error` message that explains it all (`message`, else the
    problems as a refusal of the client's message).

    The close reason says the same but may be cut (123 bytes): an unknown field's problem
    alone, with the allowed spellings, is longer.
    """
    text = summary(problems)
    error = {
        "code": ErrorCode.INVALID_REQUEST.value,
        "message": message or f"The message was refused: {text}.",
        "details": {"problems": problems},
    }
    if websocket.client_state is not WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.send_text(json.dumps({"type": "error", "error": error})), wait)
    await _close(websocket, WS_INVALID_REQUEST, text, wait)


async def _authenticate_ws(websocket: WebSocket) -> tuple[Caller, str] | None:
    """Who the connection is for, and the token it showed (checked again while it is open)."""
    header = websocket.headers.get("authorization", "")
    token: str
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    else:
        limit = get_settings().monitor.auth_timeout_seconds
        try:
            first = await asyncio.wait_for(_receive_json(websocket), limit)
        except TimeoutError:
            await _close(
                websocket,
                WS_UNAUTHENTICATED,
                f'not authenticated within {limit:g} s: send {{"type": "auth", "token": "..."}} first',
            )
            return None
        if first is None:
            return None
        if first.get("type") != "auth" or not isinstance(first.get("token"), str):
            await _close(websocket, WS_UNAUTHENTICATED, 'send {"type": "auth", "token": "..."} first')
            return None
        token = first["token"]
    try:
        caller = await run_in_threadpool(authenticate_token, wiring(websocket).engine, token)
    except Unauthenticated as exc:
        await _close(websocket, WS_UNAUTHENTICATED, str(exc))
        return None
    return caller, token


async def _token_lapsed(engine: Any, token: str) -> Unauthenticated:
    """Wait until the token no longer stands (revoked, expired, gone): looked up again in the
    database, bypassing the principal cache (whose answer may already be that old), so an open
    stream ends within `[monitor] token_recheck_seconds` like any request.

    Every stream on one token shares the lookups (`_token_standing`): each wakes every half
    period and takes an answer at most half a period old, so the bound holds with one query
    per token and half period, not one per subscriber (1,000 subscribers on one token would
    otherwise cost PostgreSQL 200 lookups a second)."""
    while True:
        await asyncio.sleep(get_settings().monitor.token_recheck_seconds / 2)
        try:
            lapsed = await _token_standing(engine, token)
        except Exception:  # the database is unreachable: keep the stream, ask again next period
            log.warning("monitor: could not check a subscriber's token again", exc_info=True)
            continue
        if lapsed is not None:
            return lapsed


# token digest -> (when its lookup began, by time.monotonic(); what it found: None = stands),
# and a lock that lets one lookup at a time run, per event loop (a test's app and a server's
# are different loops).
_TokenKey = tuple[int, str]
_answers: dict[_TokenKey, tuple[float, Unauthenticated | None]] = {}
_asking: dict[_TokenKey, asyncio.Lock] = {}


async def _token_standing(engine: Any, token: str) -> Unauthenticated | None:
    """Whether `token` still stands, from a lookup begun at most half a recheck period ago.

    The streams that find no fresh answer queue on the token's lock: the first looks it up,
    the others find its answer (or, if it was cancelled, the next one looks)."""
    key = (id(asyncio.get_running_loop()), hash_token(token))
    fresh_for = get_settings().monitor.token_recheck_seconds / 2
    async with _asking.setdefault(key, asyncio.Lock()):
        known = _answers.get(key)
        if known is not None and time.monotonic() - known[0] < fresh_for:
            return known[1]
        began = time.monotonic()
        try:
            await run_in_threadpool(reauthenticate_token, engine, token)
            outcome: Unauthenticated | None = None
        except Unauthenticated as exc:
            outcome = exc
        for stale in [k for k, (at, _) in _answers.items() if began - at > 2 * fresh_for]:
            del _answers[stale]
            lock = _asking.get(stale)
            if lock is not None and not lock.locked():
                del _asking[stale]
        _answers[key] = (began, outcome)
        return outcome


def _lapsed_error(exc: Unauthenticated) -> str:
    """The `error` message before a revoked or expired token's close (WebSocket and SSE alike)."""
    return json.dumps(
        {"type": "error", "error": {"code": ErrorCode.UNAUTHENTICATED.value, "message": str(exc)}}
    )


async def _receive_json(websocket: WebSocket) -> dict[str, Any] | None:
    """The next message as a JSON object, judged as an HTTP body is (`load_json`: depth, lone
    surrogates, numbers, duplicate keys); anything else closes with 4400 after an `error`."""
    try:
        message = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    if message["type"] == "websocket.disconnect":
        return None
    raw = message.get("text")
    if raw is None:
        await _refuse(
            websocket, [{"field": "message", "problem": "must be a JSON object in a text frame, not binary"}]
        )
        return None
    data: Any = None
    try:
        data = await run_in_threadpool(load_json, raw) if len(raw) > _OFF_LOOP_CHARS else load_json(raw)
    except BodyRejected as exc:
        problem = {k: v for k, v in exc.problem.items() if k != "in"}
        problem["field"] = "message" if problem.get("field") == "body" else f"message.{problem['field']}"
        await _refuse(websocket, [problem])
        return None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        await _refuse(websocket, [{"field": "message", "problem": "must be a JSON object"}])
        return None
    return data


@router.websocket("/monitor")
async def monitor(websocket: WebSocket) -> None:
    """Seed 4.1: live contract events, filtered, with catch-up from `after`."""
    await websocket.accept()
    if not get_settings().feature_flags.monitoring_dashboard:
        await _close(
            websocket, WS_FEATURE_DISABLED, f"{ErrorCode.FEATURE_DISABLED}: [feature_flags] {FLAG} is off"
        )
        return
    authenticated = await _authenticate_ws(websocket)
    if authenticated is None:
        return
    caller, token = authenticated
    message = await _subscription(websocket)
    if message is None:
        return
    try:
        flt = MonitorFilter.parse(message, also=("after",))
        after = _after(message.get("after"))
    except FilterError as exc:
        await _refuse(websocket, exc.problems)
        return
    hub = hub_of(websocket.app)
    sub = await hub.subscribe(caller, flt, after)
    try:
        await websocket.send_text(json.dumps({"type": "subscribed", "filter": flt.to_json(), "after": after}))
        await _serve(websocket, hub, sub, websocket.scope.get(SERVER_SEND), token)
    finally:
        hub.unsubscribe(sub)


async def _serve(
    websocket: WebSocket, hub: Hub, sub: Subscriber, direct: DirectSend | None, token: str
) -> None:
    sender = asyncio.create_task(pump(sub, hub, websocket.send_text, direct))
    receiver = asyncio.create_task(_filter_changes(websocket, sub))
    overflow = asyncio.create_task(sub.overflowed.wait())
    lapsed = asyncio.create_task(_token_lapsed(wiring(websocket).engine, token))
    tasks = (sender, receiver, overflow, lapsed)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    if lapsed in done and not lapsed.cancelled() and lapsed.exception() is None:
        exc = lapsed.result()
        if websocket.client_state is not WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.send_text(_lapsed_error(exc)), 2)
        await _close(websocket, WS_UNAUTHENTICATED, str(exc))
    elif sub.overflowed.is_set():
        resume = sub.last_id if sub.last_id is not None else "the last event id you received"
        # The close frame queues behind what the client has not read yet: give it time to
        # read that (it no longer costs the hub anything) before dropping the connection.
        await _close(websocket, WS_TOO_SLOW, f"too slow: resume after {resume}", TOO_SLOW_CLOSE_SECONDS)
    elif (
        sender in done
        and not sender.cancelled()
        and sender.exception() is not None
        # The client went away: Starlette says so with WebSocketDisconnect, the server's own
        # send with an OSError (uvicorn's ClientDisconnected).
        and not isinstance(sender.exception(), WebSocketDisconnect | OSError)
    ):
        log.warning("monitor: sending failed: %s", sender.exception())
        await _close(websocket, 1011, "internal error")


async def _subscription(websocket: WebSocket) -> dict[str, Any] | None:
    """The first filter message, within `[monitor] auth_timeout_seconds` of authenticating.

    Nothing is sent before it and the token is not checked again until it comes, so without a
    bound a client that authenticated (by header, needing no frame at all) and never subscribed
    would hold its socket and task for as long as it kept the connection open. `auth` messages
    passed over meanwhile do not extend the time.
    """
    limit = get_settings().monitor.auth_timeout_seconds
    try:
        return await asyncio.wait_for(_filter_message(websocket), limit)
    except TimeoutError:
        problem = (
            f"no filter message within {limit:g} s of authenticating; "
            "send one to subscribe ({} for every event)"
        )
        await _refuse(
            websocket,
            [{"field": "message", "problem": problem}],
            message=f"No filter message arrived within {limit:g} s of authenticating: send one to "
            "subscribe, such as {} for every event you may see.",
        )
        return None


async def _filter_message(websocket: WebSocket) -> dict[str, Any] | None:
    """The next filter message, passing over `auth` messages (the connection is authenticated)."""
    while True:
        message = await _receive_json(websocket)
        if message is None or message.get("type") != "auth":
            return message


async def _filter_changes(websocket: WebSocket, sub: Subscriber) -> None:
    """Apply each new filter message; a bad one closes with 4400 (the old filter never lingers).

    `after` is allowed (a client may resend its first message changed) but no catch-up is redone.
    """
    while True:
        message = await _filter_message(websocket)
        if message is None:
            return
        try:
            flt = MonitorFilter.parse(message, also=("after",))
            _after(message.get("after"))
            sub.filter = flt
        except FilterError as exc:
            await _refuse(websocket, exc.problems)
            return
        await websocket.send_text(json.dumps({"type": "subscribed", "filter": sub.filter.to_json()}))


# --- Server-Sent Events ------------------------------------------------------------------------


def _csv(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


class StreamQuery(BaseModel):
    """The stream's filter as query parameters: the filter message's fields, camelCase.

    Nothing else is accepted (`extra="forbid"`: a 422 naming the parameter and the known
    ones): a misspelt `contractID`, ignored, would stream every contract's events.
    """

    model_config = ConfigDict(extra="forbid")

    contract_ids: str | None = Field(
        None,
        alias="contractIds",
        description="Comma-separated contract ids (at most 1000); none: every contract you may see.",
    )
    statuses: str | None = Field(
        None,
        description="Comma-separated statuses: a `status_changed` event's new status, else the "
        "contract's current one. None: every status.",
    )
    include_stale: bool = Field(
        False, alias="includeStale", description="Also `stale_detected` and `stale_cleared` events."
    )
    include_heartbeats: bool = Field(
        False,
        alias="includeHeartbeats",
        description="Also the live `heartbeat` notices (no id: they are never replayed).",
    )
    after: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Send the stored events after this event id first (a `Last-Event-ID` header wins).",
    )


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream`: the media type the schema publishes for the stream's 200."""

    media_type = "text/event-stream"


# What the schema shows of a stream: the greeting, an event, a live notice, the resume event.
_STREAM_EXAMPLE: Final = (
    ": connected\n\n"
    "id: 1235\n"
    "event: status_changed\n"
    'data: {"id":1235,"type":"status_changed","contractId":"2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13",'
    '"oldStatus":"active","newStatus":"paused","reason":"waiting for review",'
    '"createdAt":"2026-11-26T01:52:47.725455+00:00"}\n\n'
    "event: heartbeat\n"
    'data: {"taskId":"6a4c6955-0b8e-4f31-9d27-3c5e1a7b2f90","state":"working",'
    '"activity":"writing the plan","progress":40,"incarnation":1,"alive":true,"id":null,'
    '"type":"heartbeat","contractId":"2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"}\n\n'
    ": keepalive\n\n"
    "event: resume\n"
    'data: {"after": 1235}\n\n'
)
_UNKNOWN_PARAMETER: Final = {
    "error": {
        "code": ErrorCode.INVALID_REQUEST.value,
        "message": "The request does not match the API schema: contractID: is not a query parameter "
        "of this request; known parameters: contractIds, statuses, includeStale, includeHeartbeats, after.",
        "details": {
            "problems": [
                {
                    "field": "contractID",
                    "in": "query",
                    "type": "extra_forbidden",
                    "problem": "is not a query parameter of this request; known parameters: "
                    "contractIds, statuses, includeStale, includeHeartbeats, after",
                    "given": "x",
                    "allowed": ["contractIds", "statuses", "includeStale", "includeHeartbeats", "after"],
                }
            ]
        },
    }
}


def _stream_responses() -> dict[int | str, dict[str, Any]]:
    """The stream's answers for the schema: the event stream, and its errors in the error shape."""
    errors = error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.FEATURE_DISABLED, E.INTERNAL_ERROR)
    for response in errors.values():
        # Named by reference, not as a `model`: FastAPI would also list a model's schema under
        # the route's own media type, as if an error came as text/event-stream.
        del response["model"]
        response["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
    errors[422]["content"]["application/json"]["examples"]["INVALID_REQUEST (unknown parameter)"] = {
        "summary": "INVALID_REQUEST: a query parameter the stream does not know (`?contractID=x`)",
        "value": _UNKNOWN_PARAMETER,
    }
    return {
        200: {
            "description": "The events, as they commit: `id: <event id>`, `event: <type>`, "
            "`data: <the event's JSON>`, a blank line after each; `: keepalive` comments every "
            f'{SSE_KEEPALIVE_SECONDS:.0f} s; `event: resume` with `{{"after": <id>}}` when the '
            "client fell behind, and the stream ends (reconnect with that id).",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": _STREAM_EXAMPLE}},
        },
        **errors,
    }


@router.get("/events/stream", response_class=EventStreamResponse, responses=_stream_responses())
async def event_stream(
    request: Request,
    caller: Annotated[Caller, Depends(authenticated_caller)],
    query: Annotated[StreamQuery, Query()],
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The id of the last event received: the stream sends the stored events "
            "after it first (an EventSource sends it when it reconnects). Wins over `after`.",
        ),
    ] = None,
) -> StreamingResponse:
    """The live monitor's events as Server-Sent Events, for clients that cannot speak WebSocket
    (the same filter, the same JSON, the same resume rule as `WS /api/v1/contracts/monitor`).

    Each event is `id: <event id>`, `event: <type>`, `data: <the same JSON as the WebSocket>`;
    a reconnecting EventSource sends `Last-Event-ID` and resumes after it. Heartbeat notices
    have no id (live only). A client that falls behind gets `event: resume` with
    `{"after": <id>}` and the stream ends; reconnecting resumes. Only your own contracts'
    events arrive (an admin's: every owner's). A query parameter not listed here is a 422.
    """
    require_monitoring()
    try:
        flt = MonitorFilter.parse(
            {
                "contractIds": _csv(query.contract_ids),
                "statuses": _csv(query.statuses),
                "includeStale": query.include_stale,
                "includeHeartbeats": query.include_heartbeats,
            }
        )
    except FilterError as exc:
        raise InvalidRequest([{**p, "in": "query", "type": "value"} for p in exc.problems]) from None
    try:
        resume = _after(last_event_id, "Last-Event-ID") if last_event_id else _after(query.after)
    except FilterError as exc:
        where = "header" if last_event_id else "query"
        raise InvalidRequest([{**p, "in": where, "type": "value"} for p in exc.problems]) from None
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    hub = hub_of(request.app)
    sub = await hub.subscribe(caller, flt, resume)
    return EventStreamResponse(
        _sse(request, hub, sub, token),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _sse(request: Request, hub: Hub, sub: Subscriber, token: str) -> AsyncIterator[str]:
    out: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1)
    lapsed: list[Unauthenticated] = []

    async def run() -> None:
        try:
            await pump(sub, hub, out.put)
        except Exception:
            log.exception("monitor: the event stream failed")
        await out.put(None)  # the end (overflowed or failed); a cancellation skips it

    async def watch() -> None:
        """A revoked or expired token stops the events and ends the stream with `event: error`."""
        lapsed.append(await _token_lapsed(wiring(request).engine, token))
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await out.put(None)

    task = asyncio.create_task(run())
    watcher = asyncio.create_task(watch())
    try:
        yield ": connected\n\n"
        while True:
            try:
                text = await asyncio.wait_for(out.get(), SSE_KEEPALIVE_SECONDS)
            except TimeoutError:
                if task.done() or await request.is_disconnected():
                    return
                yield ": keepalive\n\n"
                continue
            if text is None:
                if lapsed:
                    yield f"event: error\ndata: {_lapsed_error(lapsed[0])}\n\n"
                elif sub.overflowed.is_set():
                    yield f"event: resume\ndata: {json.dumps({'after': sub.last_id})}\n\n"
                return
            yield _sse_frame(text)
    finally:
        for job in (watcher, task):
            job.cancel()
            with contextlib.suppress(BaseException):
                await job
        hub.unsubscribe(sub)


def _sse_frame(text: str) -> str:
    body = json.loads(text)
    head = f"id: {body['id']}\n" if body.get("id") is not None else ""
    return f"{head}event: {body.get('type', 'message')}\ndata: {text}\n\n"


__all__ = ["SERVER_SEND", "ServerSend", "hub_of", "require_monitoring", "router"]
