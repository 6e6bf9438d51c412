"""The live monitor as Server-Sent Events: `GET /api/v1/contracts/events/stream`.

Its own module because it is the monitor's second front on the hub (the WebSocket is
`app.http.monitor_ws`), for clients that cannot speak WebSocket: the same filter, as query
parameters (`StreamQuery`: nothing else is accepted), the same JSON, the same resume rule (a
reconnecting EventSource's `Last-Event-ID` wins over `after`). Each event is `id:`,
`event: <type>`, `data: <JSON>`; a `: keepalive` comment comes every `SSE_KEEPALIVE_SECONDS`;
a client that falls behind gets `event: resume` and the stream ends; a token revoked or
expired while it is open ends it with `event: error`. Its items reach Starlette's streaming
response through a queue the subscriber's `pump` fills (the hub's direct send is the
WebSocket's alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.auth import Caller, Unauthenticated
from app.http.deps import authenticated_caller, wiring
from app.http.errors import API_PREFIX, error_responses
from app.http.monitor import hub_of, parse_after, require_monitoring
from app.http.monitor_auth import lapsed_error, token_lapsed
from app.http.problems import InvalidRequest
from app.http.single_headers import AUTHORIZATION, single_header
from app.monitor import Hub
from app.monitor_filter import FilterError, MonitorFilter
from app.monitor_subscribers import Subscriber, pump
from app.schemas import ErrorCode

# The live monitor front's one logger, whichever of its modules logs.
log = logging.getLogger("app.http.monitor")
E = ErrorCode

router = APIRouter(prefix=API_PREFIX, tags=["monitor"])

SSE_KEEPALIVE_SECONDS: Final = 15.0


def _csv(raw: str | None, field: str) -> list[str]:
    """A comma list's items; one that names nothing (`,`, a space) is refused, as an empty
    value is (`app.http.query_params`): it would have meant "all" instead of what was meant."""
    items = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if raw is not None and not items:
        raise InvalidRequest(
            [
                {
                    "field": field,
                    "in": "query",
                    "type": "empty",
                    "problem": "names nothing; give at least one, or leave it out for all",
                    "given": raw[:200],
                }
            ]
        )
    return items


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
                "contractIds": _csv(query.contract_ids, "contractIds") or None,  # absent: all
                "statuses": _csv(query.statuses, "statuses") or None,
                "includeStale": query.include_stale,
                "includeHeartbeats": query.include_heartbeats,
            }
        )
    except FilterError as exc:
        raise InvalidRequest([{**p, "in": "query", "type": "value"} for p in exc.problems]) from None
    try:
        resume = parse_after(last_event_id, "Last-Event-ID") if last_event_id else parse_after(query.after)
    except FilterError as exc:
        where = "header" if last_event_id else "query"
        raise InvalidRequest([{**p, "in": where, "type": "value"} for p in exc.problems]) from None
    token = (single_header(request.headers, AUTHORIZATION) or "").partition(" ")[2].strip()
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
        lapsed.append(await token_lapsed(wiring(request).engine, token))
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
                    yield f"event: error\ndata: {lapsed_error(lapsed[0])}\n\n"
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


__all__ = ["router"]
