"""The live monitor over WebSocket: `WS /api/v1/contracts/monitor`.

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

The URL takes no query parameters (the filter is a message). Like every `/api/v1` request
(`app.http.query_params`), a query parameter the route does not take, one given twice or an
empty one is refused, not passed over: once the caller is authenticated, 4400 after an `error`
naming each parameter and the ones allowed (`[]`), so `?contractIds=X` can never quietly
subscribe the client to every contract.

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
started by the hub as it dispatches them (`app.monitor_subscribers.Subscriber.offer`), not
through Starlette's WebSocket from a task per subscriber: the same event goes to every
subscriber, and those layers (its state checks, its exception handling's wrapper, a task
switch) were paid once per delivery. The handshake, the answers to filter messages, the catch-up and the
close still go through Starlette.

Its own module because it is one of the monitor's two fronts on the hub; the other is
`app.http.monitor_sse`. Reading a client's message, refusing it and closing are
`app.http.monitor_socket`; authentication and the token's rechecks `app.http.monitor_auth`;
the feature switch, the app's hub and `after` `app.http.monitor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from typing import Any, Final

from fastapi import APIRouter, WebSocket
from fastapi.routing import APIWebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.config import get_settings
from app.http.deps import wiring
from app.http.errors import API_PREFIX, WS_FEATURE_DISABLED, WS_TOO_SLOW, WS_UNAUTHENTICATED
from app.http.monitor import FLAG, hub_of, parse_after
from app.http.monitor_auth import authenticate_socket, lapsed_error, token_lapsed
from app.http.monitor_socket import close, receive_json, refuse
from app.http.problems import summary
from app.http.query_params import query_problems
from app.monitor import Hub
from app.monitor_filter import FILTER_FIELDS, FilterError, MonitorFilter
from app.monitor_subscribers import DirectSend, Subscriber, pump
from app.schemas import ErrorCode

# The live monitor front's one logger, whichever of its modules logs.
log = logging.getLogger("app.http.monitor")

router = APIRouter(prefix=API_PREFIX, tags=["monitor"])

TOO_SLOW_CLOSE_SECONDS: Final = 30.0
SERVER_SEND: Final = "makima.server_send"


class ServerSend:
    """ASGI middleware: a WebSocket connection's scope carries the server's own `send`.

    Outside Starlette's per-connection wrappers (`create_app` adds it last, so it is the
    outermost of the app's own), for the monitor's events (module docstring).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A coroutine function, as uvicorn's is: the hub starts a send by hand (app.monitor_subscribers).
        if scope["type"] == "websocket" and inspect.iscoroutinefunction(send):
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


@router.websocket("/monitor")
async def monitor(websocket: WebSocket) -> None:
    """Seed 4.1: live contract events, filtered, with catch-up from `after`."""
    await websocket.accept()
    if not get_settings().feature_flags.monitoring_dashboard:
        await close(
            websocket, WS_FEATURE_DISABLED, f"{ErrorCode.FEATURE_DISABLED}: [feature_flags] {FLAG} is off"
        )
        return
    authenticated = await authenticate_socket(websocket)
    if authenticated is None:
        return
    caller, token = authenticated
    if not await _query_taken(websocket):
        return
    message = await _subscription(websocket)
    if message is None:
        return
    try:
        flt = MonitorFilter.parse(message, also=("after",))
        after = parse_after(message.get("after"))
    except FilterError as exc:
        await refuse(websocket, exc.problems)
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
    lapsed = asyncio.create_task(token_lapsed(wiring(websocket).engine, token))
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
                await asyncio.wait_for(websocket.send_text(lapsed_error(exc)), 2)
        await close(websocket, WS_UNAUTHENTICATED, str(exc))
    elif sub.overflowed.is_set():
        resume = sub.last_id if sub.last_id is not None else "the last event id you received"
        # The close frame queues behind what the client has not read yet: give it time to
        # read that (it no longer costs the hub anything) before dropping the connection.
        await close(websocket, WS_TOO_SLOW, f"too slow: resume after {resume}", TOO_SLOW_CLOSE_SECONDS)
    elif (
        sender in done
        and not sender.cancelled()
        and sender.exception() is not None
        # The client went away: Starlette says so with WebSocketDisconnect, the server's own
        # send with an OSError (uvicorn's ClientDisconnected).
        and not isinstance(sender.exception(), WebSocketDisconnect | OSError)
    ):
        log.warning("monitor: sending failed: %s", sender.exception())
        await close(websocket, 1011, "internal error")


async def _query_taken(websocket: WebSocket) -> bool:
    """Whether the upgrade's query string is one the route takes (it declares no parameter: the
    filter is a message), by the rule every `/api/v1` request is held to
    (`app.http.query_params`); else a 4400 close after an `error` naming each parameter.

    Passed over, `?contractIds=X` would have subscribed the client to every contract while it
    believed it had asked for X. Judged once the caller is known, as the HTTP API answers a
    stranger's query string with its 401 first."""
    route = websocket.scope.get("route")
    if not websocket.scope.get("query_string") or not isinstance(route, APIWebSocketRoute):
        return True
    problems = query_problems(route, websocket.query_params.multi_items())
    if not problems:
        return True
    await refuse(
        websocket,
        problems,
        message=f"The query string was refused: {summary(problems)}. The live monitor takes its filter "
        f"({', '.join([*FILTER_FIELDS, 'after'])}) as a message, not in the URL, and its token in the "
        "Authorization header or an auth message.",
    )
    return False


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
        await refuse(
            websocket,
            [{"field": "message", "problem": problem}],
            message=f"No filter message arrived within {limit:g} s of authenticating: send one to "
            "subscribe, such as {} for every event you may see.",
        )
        return None


async def _filter_message(websocket: WebSocket) -> dict[str, Any] | None:
    """The next filter message, passing over `auth` messages (the connection is authenticated)."""
    while True:
        message = await receive_json(websocket)
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
            parse_after(message.get("after"))
            sub.filter = flt
        except FilterError as exc:
            await refuse(websocket, exc.problems)
            return
        await websocket.send_text(json.dumps({"type": "subscribed", "filter": sub.filter.to_json()}))


__all__ = ["SERVER_SEND", "ServerSend", "router"]
