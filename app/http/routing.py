"""The routes' class (FastAPI is handed the JSON body `BodyLimits` already parsed), and the
form a `{...:uuid}` path id must take.

Every JSON body is parsed once by the body limits (`app.http.limits`), which must see the
value to judge its depth, numbers, keys and strings before any handler does. FastAPI would
then parse the same bytes again for the endpoint's parameters; on the heartbeat endpoint,
lists of 100, that second parse was a twelfth of uvicorn's CPU. Starlette's `Request.json`
keeps what it parsed on the request, so the route seeds it with the judged value, and
FastAPI's own handling (validation, its errors, the OpenAPI schema) stays as it is. A body
the limits could not parse never gets here: they refuse it with its position.

Path ids (`{id:uuid}`, `{questionId:uuid}`, `{batchId:uuid}`) are routed by the one rule for
ids (`app.domain.uuids.uuid_problem`): Starlette's `uuid` convertor makes each hyphen
optional, so `123e4567e89b-42d3-...` named a contract its heartbeats could not name. The
convertor is registered here, under Starlette's own name, because every router imports this
module before it declares a route; a path id in another form is no route, a 404 naming the id
and the form (`app.http.error_handlers`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response

from app.domain.uuids import UUID_TEXT_PATTERN
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


class UUIDTextConvertor(Convertor[uuid.UUID]):
    """A path id in the heartbeat's form (`UUID_TEXT_PATTERN`): 8-4-4-4-12 or 32 hex digits."""

    regex = f"(?:{UUID_TEXT_PATTERN})"

    def convert(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_string(self, value: uuid.UUID) -> str:
        return str(value)


register_url_convertor("uuid", UUIDTextConvertor())

__all__ = ["ParsedJSONRoute", "UUIDTextConvertor"]
