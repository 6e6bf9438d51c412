"""Who a live-monitor stream is for, and whether its token still stands while it is open.

Its own module because both streams rely on it, and a stream, unlike a request, outlives the
moment its token was checked. A WebSocket authenticates with `Authorization: Bearer` on the
upgrade or, from a browser, a first message `{"type": "auth", "token": "mk_..."}` within
`[monitor] auth_timeout_seconds` (`authenticate_socket`; the SSE stream has the API's bearer
dependency). Then each open stream's token is looked up again in the database every
`[monitor] token_recheck_seconds` (`token_lapsed`), the streams on one token sharing the
lookups, and a token revoked or expired meanwhile ends the stream after an `error` message
saying why (`lapsed_error`; WebSocket 4401, SSE `event: error`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool

from app.auth import Caller, Unauthenticated, hash_token
from app.config import get_settings
from app.http.deps import authenticate_token, reauthenticate_token, wiring
from app.http.errors import WS_UNAUTHENTICATED
from app.http.monitor_socket import close, receive_json, refuse
from app.http.single_headers import AUTHORIZATION, RepeatedHeader, single_header
from app.schemas import ErrorCode

# The live monitor front's one logger, whichever of its modules logs.
log = logging.getLogger("app.http.monitor")


async def authenticate_socket(websocket: WebSocket) -> tuple[Caller, str] | None:
    """Who the connection is for, and the token it showed (checked again while it is open).

    Two Authorization headers close it 4400 after an `error` naming the header (`app.http.single_headers`)."""
    try:
        header = single_header(websocket.headers, AUTHORIZATION) or ""
    except RepeatedHeader as exc:
        await refuse(websocket, [exc.problem], message=exc.message)
        return None
    token: str
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
    else:
        limit = get_settings().monitor.auth_timeout_seconds
        try:
            first = await asyncio.wait_for(receive_json(websocket), limit)
        except TimeoutError:
            await close(
                websocket,
                WS_UNAUTHENTICATED,
                f'not authenticated within {limit:g} s: send {{"type": "auth", "token": "..."}} first',
            )
            return None
        if first is None:
            return None
        problem = auth_message_problem(first)
        if problem is not None:
            await close(websocket, WS_UNAUTHENTICATED, problem)
            return None
        token = first["token"]
    try:
        caller = await run_in_threadpool(authenticate_token, wiring(websocket).engine, token)
    except Unauthenticated as exc:
        await close(websocket, WS_UNAUTHENTICATED, str(exc))
        return None
    return caller, token


# The JSON names of what a message's value may be, for a refusal that says what was sent.
_JSON_KINDS: Final = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "a number"),
    (float, "a number"),
    (list, "an array"),
    (dict, "an object"),
)
AUTH_MESSAGE: Final = '{"type": "auth", "token": "mk_..."}'


def auth_message_problem(message: dict[str, Any]) -> str | None:
    """Why a browser's first message is no `auth` message (the close reason), or None.

    A message of another type is told to authenticate first; an `auth` message whose token is
    missing, or is not a string (a number, null, an object), is told that, not merely to
    "send an auth message" it believes it sent. Each reason fits a close frame (123 bytes)."""
    if message.get("type") != "auth":
        return f"send {AUTH_MESSAGE} first"
    if "token" not in message:
        return f'the auth message needs a "token": send {AUTH_MESSAGE}'
    token = message["token"]
    if not isinstance(token, str):
        sent = next((name for kind, name in _JSON_KINDS if isinstance(token, kind)), "another type")
        return f'the auth message\'s "token" must be a string, not {sent}: send {AUTH_MESSAGE}'
    return None


async def token_lapsed(engine: Any, token: str) -> Unauthenticated:
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


def lapsed_error(exc: Unauthenticated) -> str:
    """The `error` message before a revoked or expired token's close (WebSocket and SSE alike)."""
    return json.dumps(
        {"type": "error", "error": {"code": ErrorCode.UNAUTHENTICATED.value, "message": str(exc)}}
    )


__all__ = ["AUTH_MESSAGE", "auth_message_problem", "authenticate_socket", "lapsed_error", "token_lapsed"]
