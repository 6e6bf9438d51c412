"""The heartbeat endpoint's own door: `POST /api/v1/supervisors/heartbeats` answered without
FastAPI's routing, for the requests that need nothing of it.

Heartbeats are the one request the whole fleet sends all the time (lists of up to 1,000, every
30 s per supervisor), and on it FastAPI's share of the API process was larger than the work:
matching the path against every route, solving the route's dependencies (the query check,
the bearer scheme, the API object, the body parameter), the exception and exit-stack layers
and the hop through its thread pool cost more CPU per heartbeat than parsing, checking and
queueing it (bench/heartbeats.py `--cpu --via http`).

This middleware sits inside `BodyLimits`, which has already refused a repeated or missing
token (the 401 comes before the body is read), read the body within its bounds and judged
and parsed its JSON. A request takes the short way only when everything about it is the
usual: the exact path, POST, no query string, `Content-Type: application/json`, a bearer
token whose caller the principal cache holds, and a body that parsed to an object or a list.
It is then answered by the endpoint's own `answer` (the feature flag, then `accept`), and an
error raised there is answered by the app's own exception handlers, so a refusal reads
exactly as the routed endpoint's. Any other request goes on to FastAPI, which answers it as
it always did (a query string refused, a body that is not JSON or not typed as JSON, a token
the cache does not hold yet).
`tests/integration/test_heartbeat_door.py` holds the two ways to the same answers.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import Unauthenticated, cached_caller
from app.http.limits import PARSED_JSON
from app.http.supervisors import answer

PATH: Final = "/api/v1/supervisors/heartbeats"


def _usual_token(scope: Scope) -> str | None:
    """The bearer token of a request with one `Authorization: Bearer <token>` header and one
    `Content-Type: application/json` (parameters allowed), else None: any other request is
    FastAPI's to answer (it reads a body as JSON only under a JSON media type)."""
    authorization: bytes | None = None
    content_type: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is not None:
                return None
            authorization = value
        elif name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
    if authorization is None or content_type is None:
        return None
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


class HeartbeatDoor:
    """ASGI middleware: the usual heartbeat POST straight to the endpoint's `accept`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and not scope.get("query_string")
            and type(body := scope.get(PARSED_JSON)) in (dict, list)
            and (token := _usual_token(scope)) is not None
        ):
            try:
                caller = cached_caller(token)
            except Unauthenticated:
                caller = None
            if caller is not None:
                await self._answer(scope, receive, send, caller, body)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, caller: Any, body: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await answer(request, caller, body)
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    @staticmethod
    async def _handled(request: Request, exc: Exception) -> Response:
        """The app's own answer to `exc` (its handler for the nearest class), as routed."""
        handlers = request.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return await handlers[cls](request, exc)  # type: ignore[no-any-return]
        raise exc


__all__ = ["PATH", "HeartbeatDoor"]
