"""Headers a request may carry at most once: `Authorization`, `Idempotency-Key`, `Last-Event-ID`.

Why refuse a repeat rather than read the first: with two `Authorization` headers the first
authenticated the request and the second was silently ignored (a revoked token first was 401,
second 200), so behind a proxy that adds one, which identity acted depended on the order the
headers arrived in. Which of two idempotency keys names the batch is the same guess, and so
is which of two `Last-Event-ID`s an event stream resumes after. So a
request carrying either more than once is 400 INVALID_REQUEST naming the header, before
anything reads it: `BodyLimits` (`app.http.limits`) refuses it for every HTTP request, the
bearer dependency (`app.http.deps.bearer`) and the live monitor's socket authentication
(`app.http.monitor_auth`) read the token through `single_header` too.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.http.errors import error_response
from app.schemas import ErrorCode

AUTHORIZATION: Final = "Authorization"
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
LAST_EVENT_ID: Final = "Last-Event-ID"
# Read by the body limits (the last one) and by FastAPI (the first): two of them let a body
# the limits judged as text reach the handler as JSON none of their rules had seen.
CONTENT_TYPE: Final = "Content-Type"
CONTENT_LENGTH: Final = "Content-Length"
# Every header a request may carry at most once, as the API spells it; `Authorization` first,
# because which caller sent the request is decided before anything else about it.
SINGLE_HEADERS: Final = (AUTHORIZATION, IDEMPOTENCY_KEY, LAST_EVENT_ID, CONTENT_TYPE, CONTENT_LENGTH)


class RepeatedHeader(StarletteHTTPException):
    """A header that may appear once appeared `count` times: 400 INVALID_REQUEST naming it.

    An HTTPException, so a dependency that raises it is answered 400 by the handler of
    Starlette's own 400s; the middleware answers `response()`, with the problem listed."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.count = count
        self.message = (
            f"The request carries {count} {name} headers; send exactly one: "
            "which of them to believe would depend on the order they were added in."
        )
        super().__init__(status.HTTP_400_BAD_REQUEST, self.message)

    @property
    def problem(self) -> dict[str, Any]:
        return {
            "field": self.name,
            "in": "header",
            "type": "repeated_header",
            "problem": f"appears {self.count} times; it may appear at most once",
            "count": self.count,
            "limit": 1,
        }

    def response(self) -> JSONResponse:
        return error_response(
            status.HTTP_400_BAD_REQUEST,
            ErrorCode.INVALID_REQUEST,
            self.message,
            {"header": self.name, "problems": [self.problem]},
        )


def single_header(headers: Headers, name: str) -> str | None:
    """The value of header `name`, None when absent; raises RepeatedHeader when it repeats."""
    values = headers.getlist(name)
    if len(values) > 1:
        raise RepeatedHeader(name, len(values))
    return values[0] if values else None


def repeated_header(headers: Headers, names: tuple[str, ...] = SINGLE_HEADERS) -> RepeatedHeader | None:
    """The first of `names` the request carries more than once, as the error to answer."""
    for name in names:
        try:
            single_header(headers, name)
        except RepeatedHeader as exc:
            return exc
    return None


__all__ = [
    "AUTHORIZATION",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "IDEMPOTENCY_KEY",
    "LAST_EVENT_ID",
    "SINGLE_HEADERS",
    "RepeatedHeader",
    "repeated_header",
    "single_header",
]
