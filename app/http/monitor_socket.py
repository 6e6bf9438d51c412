"""The monitor WebSocket's messages: a client's message read and judged, a refusal, a close.

Its own module because the endpoint (`app.http.monitor_ws`) and the socket's authentication
(`app.http.monitor_auth`, whose `auth` message is the first one read) read messages and close
the connection alike. A message is a JSON object in a text frame, judged as an HTTP body is
(`app.http.limits.load_json`: depth, lone surrogates, numbers, duplicate keys; a long one in a
worker thread); anything else is refused with 4400. A close reason holds at most 123 bytes
(`websocket_close_reason` cuts a longer one at a word), too few to list what a filter allows,
so a refusal first sends an `error` message with the whole explanation, in the HTTP API's
error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.http.errors import WS_INVALID_REQUEST, websocket_close_reason
from app.http.limits import BodyRejected, load_json
from app.http.problems import summary
from app.schemas import ErrorCode

_OFF_LOOP_CHARS: Final = 64 * 1024  # judge longer messages in a worker thread


async def close(websocket: WebSocket, code: int, reason: str, wait: float = 2) -> None:
    """Close with a code and reason (cut to fit a close frame); gives up (drops the connection)
    after `wait` seconds."""
    if websocket.client_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, websocket_close_reason(reason)), wait)


async def refuse(
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
    await close(websocket, WS_INVALID_REQUEST, text, wait)


async def receive_json(websocket: WebSocket) -> dict[str, Any] | None:
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
        await refuse(
            websocket, [{"field": "message", "problem": "must be a JSON object in a text frame, not binary"}]
        )
        return None
    data: Any = None
    try:
        data = await run_in_threadpool(load_json, raw) if len(raw) > _OFF_LOOP_CHARS else load_json(raw)
    except BodyRejected as exc:
        problem = {k: v for k, v in exc.problem.items() if k != "in"}
        problem["field"] = "message" if problem.get("field") == "body" else f"message.{problem['field']}"
        await refuse(websocket, [problem])
        return None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        await refuse(websocket, [{"field": "message", "problem": "must be a JSON object"}])
        return None
    return data


__all__ = ["close", "receive_json", "refuse"]
