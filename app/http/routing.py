"""The routes' class: FastAPI is handed the JSON body `BodyLimits` already parsed.

Every JSON body is parsed once by the body limits (`app.http.limits`), which must see the
value to judge its depth, numbers, keys and strings before any handler does. FastAPI would
then parse the same bytes again for the endpoint's parameters; on the heartbeat endpoint,
lists of 100, that second parse was a twelfth of uvicorn's CPU. Starlette's `Request.json`
keeps what it parsed on the request, so the route seeds it with the judged value, and
FastAPI's own handling (validation, its errors, the OpenAPI schema) stays as it is. A body
the limits could not parse never gets here: they refuse it with its position.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.http.limits import PARSED_JSON


class ParsedJSONRoute(APIRoute):
    """An `APIRoute` whose request starts with the body's parsed JSON, when there is one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def seeded(request: Request) -> Response:
            if PARSED_JSON in request.scope:
                request._json = request.scope[PARSED_JSON]
            return await handler(request)

        return seeded


__all__ = ["ParsedJSONRoute"]
