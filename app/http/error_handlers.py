"""How the HTTP front answers what goes wrong: the FastAPI exception handlers, installed once.

Each handler turns one family of exceptions into the body and status the catalogue
(`app.http.errors`) gives it, so no handler invents another shape:

- a body or query that does not match the schema (`RequestValidationError`, and the
  `InvalidRequest` the front raises itself) is 422 INVALID_REQUEST with its problems listed
  field by field (`app.http.problems`), and malformed JSON is 400; so is a query parameter the
  route does not take, given twice or empty (`QueryRefused`, `app.http.query_params`);
- a domain rule refused (`ContractError`) is the status the catalogue maps;
- routing's own errors (no such endpoint, wrong method) are NOT_FOUND and METHOD_NOT_ALLOWED,
  naming the id that is not a UUID or the methods allowed;
- a value the database cannot store is the caller's 400; a connection lost or a transaction
  rolled back for a concurrent one is 503 DATABASE_UNAVAILABLE, a broker that refused a send
  503 BROKER_UNAVAILABLE, each with Retry-After;
- anything else is our bug: 500 INTERNAL_ERROR with a reference, the traceback logged.

An unauthenticated caller learns only that (`unauthenticated_first`): it gets 401 before any
schema complaint or routing answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any, Final

import redis
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.exc import DataError, DBAPIError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import Unauthenticated
from app.domain.errors import ContractError
from app.domain.uuids import UUID_FORM, uuid_problem
from app.http.deps import QueryRefused, bearer, caller_of
from app.http.errors import API_PREFIX, AUTHENTICATED_PREFIX, ERROR_STATUS, error_response, status_for
from app.http.problems import InvalidRequest, problems_from_pydantic, summary
from app.schemas import ErrorCode

log = logging.getLogger(__name__)

PUBLIC_PREFIXES: Final = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc")
# Seconds a client waits before retrying a send the broker refused (the embedded Redis is
# back within about a second after `makima run` restarts it).
BROKER_RETRY_AFTER: Final = 5
# Seconds a client waits before retrying a request the database lost or rolled back.
DATABASE_RETRY_AFTER: Final = 1


async def unauthenticated_first(request: Request) -> JSONResponse | None:
    """An unauthenticated caller learns only that: it gets 401, never a schema complaint.

    FastAPI decodes a JSON body before it runs dependencies, and routing answers 404 before
    any dependency, so without this a stranger would learn which requests are well formed.
    """
    if not request.url.path.startswith(AUTHENTICATED_PREFIX):
        return None
    credentials = await bearer(request)
    try:
        await caller_of(request, credentials.credentials if credentials else None)
    except Unauthenticated as exc:
        return _unauthenticated_response(exc)
    return None


def _invalid(problems: Sequence[Mapping[str, Any]]) -> JSONResponse:
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        ErrorCode.INVALID_REQUEST,
        f"The request does not match the API schema: {summary(problems)}.",
        {"problems": list(problems)},
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    denied = await unauthenticated_first(request)
    if denied is not None:
        return denied
    errors: Sequence[Mapping[str, Any]] = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        first = bad_json[0]
        position = first.get("loc", ("body", 0))[-1]
        reason = (first.get("ctx") or {}).get("error", "not valid JSON")
        return error_response(
            status.HTTP_400_BAD_REQUEST,
            ErrorCode.INVALID_REQUEST,
            f"The request body is not valid JSON: {reason} (at character {position}).",
            {
                "problems": [
                    {
                        "field": "body",
                        "in": "body",
                        "type": "json_invalid",
                        "problem": reason,
                        "position": position,
                    }
                ]
            },
        )
    return _invalid(problems_from_pydantic(errors, request))


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return _invalid(exc.problems)


async def _on_query_refused(request: Request, exc: Exception) -> JSONResponse:
    """Raised before the route's authentication runs, so a stranger still learns only the 401."""
    assert isinstance(exc, QueryRefused)
    denied = await unauthenticated_first(request)
    if denied is not None:
        return denied
    return _invalid(exc.problems)


async def _on_contract_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ContractError)
    if type(exc).code not in ERROR_STATUS:
        # A new domain error nobody mapped yet: still the caller's error, but say so in the log.
        log.warning(
            "domain error %s has no HTTP status in STATUS_BY_ERROR; answering 400", type(exc).__name__
        )
    return error_response(status_for(exc), exc.code, exc.message, exc.details)


def _unauthenticated_response(exc: Unauthenticated) -> JSONResponse:
    return error_response(
        status.HTTP_401_UNAUTHORIZED,
        ErrorCode.UNAUTHENTICATED,
        str(exc),
        {"scheme": "Bearer"},
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _on_unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthenticated)
    return _unauthenticated_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Routing errors (unknown path, wrong method) and Starlette's own 400s, in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (status.HTTP_404_NOT_FOUND, status.HTTP_405_METHOD_NOT_ALLOWED):
        denied = await unauthenticated_first(request)
        if denied is not None:
            return denied
    code = {
        status.HTTP_404_NOT_FOUND: ErrorCode.NOT_FOUND,
        status.HTTP_405_METHOD_NOT_ALLOWED: ErrorCode.METHOD_NOT_ALLOWED,
        status.HTTP_401_UNAUTHORIZED: ErrorCode.UNAUTHENTICATED,
        status.HTTP_403_FORBIDDEN: ErrorCode.FORBIDDEN,
    }.get(exc.status_code, ErrorCode.INVALID_REQUEST if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR)
    message = str(exc.detail) if exc.detail else "The request could not be served."
    details: dict[str, Any] = {}
    if exc.status_code == status.HTTP_404_NOT_FOUND:
        message = f"No endpoint at {request.method} {request.url.path}; see /openapi.json."
        hint = _uuid_hint(request.url.path)
        if hint is not None:
            message += f" {hint[0]} ids are UUIDs: {UUID_FORM}."
            details = {"field": hint[1]}
    elif exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        allowed = sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip())
        message = f"{request.method} is not allowed at {request.url.path}; allowed: {', '.join(allowed)}."
        details = {"method": request.method, "allowed": allowed}
    return error_response(exc.status_code, code, message, details, headers=exc.headers)


# Path segments followed by an id that must be a UUID (`{...:uuid}` in the routes): which id a
# 404 names when that segment is not one, and the field it is.
_UUID_SEGMENTS: Final = {"contracts": ("Contract", "id"), "questions": ("Question", "questionId")}


def _uuid_hint(path: str) -> tuple[str, str] | None:
    """The id to name in a 404 under the contracts API: the first one not in the form the
    routes take (`uuid_problem`, the heartbeat's rule: `app.http.routing`)."""
    if not path.startswith(API_PREFIX + "/"):
        return None
    segments = path.split("/")
    for name, value in pairwise(segments):
        if name in _UUID_SEGMENTS and value and uuid_problem(value) is not None:
            return _UUID_SEGMENTS[name]
    return None


async def _on_statement_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the schema let through but the database cannot store (too long, out of range, NUL).

    That is bad input, so it is the caller's 400 and never a 500; the log keeps the cause so
    the missing check can be added where the value is first accepted. Any other database
    failure is ours: it goes on to the 500 handler.
    """
    assert isinstance(exc, StatementError)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return _database_unavailable(request, exc)
    if isinstance(exc, DBAPIError) and _lost_to_a_concurrent_transaction(exc):
        return _database_busy(request, exc)
    # OverflowError: a date or number the driver cannot convert (a year 0 or 10000 in UTC).
    if not isinstance(exc, DataError) and not isinstance(exc.orig, ValueError | OverflowError):
        return await _on_unexpected(request, exc)
    log.warning("database refused a value for %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        status.HTTP_400_BAD_REQUEST,
        ErrorCode.INVALID_REQUEST,
        "A value in the request does not fit what the service stores (for example a name or id that "
        "is too long). Shorten it and retry.",
        {},
    )


# PostgreSQL's deadlock victim, serialization failure and lock timeout; SQLite's busy timeout.
_CONCURRENCY_SQLSTATES: Final = frozenset({"40P01", "40001", "55P03"})


def _lost_to_a_concurrent_transaction(exc: DBAPIError) -> bool:
    """The transaction was rolled back because of another one, not because of the request."""
    if getattr(exc.orig, "pgcode", None) in _CONCURRENCY_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    """Rolled back in favour of a concurrent transaction: nothing was applied, a retry will be.

    Lock order is kept the same on every path so this is rare, but two paths written by
    different people can still meet; the caller's request was fine, so it is a 503 with
    Retry-After like a lost connection (every write here is safe to send again), never a 500.
    """
    log.warning(
        "transaction rolled back by a concurrent one on %s %s: %s", request.method, request.url.path, exc
    )
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        "The database rolled this request back in favour of a concurrent one (a deadlock or a lock "
        "timeout): nothing was applied. Retry in a moment; the same request is safe to send again.",
        {"retryAfterSeconds": DATABASE_RETRY_AFTER, "reason": "concurrent_transaction"},
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The pooled connection died under the request (database restarted or failed over).

    Connections are not pinged before every transaction (see `app.db`), so the first request
    on a dead connection sees this; SQLAlchemy then discards the whole pool and the retry
    gets a fresh connection. Almost always nothing committed; a connection lost during COMMIT
    cannot tell, which is why the answer points at the idempotent ways to retry.
    """
    log.warning("database connection lost on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        "The database connection was lost (a restart or failover) before the request could be "
        "confirmed. Retry in a moment: reports with the same messageId apply once, and a phase "
        "change with expectedVersion answers VERSION_CONFLICT if the first attempt did commit.",
        {"retryAfterSeconds": DATABASE_RETRY_AFTER},
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


async def _on_broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The broker refused a send (down, restarting): the caller's request was fine, so 503.

    Nothing was sent; a report's message stays pending and resending it with the same
    `messageId` is safe, which is what Retry-After invites.
    """
    log.warning("broker unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ErrorCode.BROKER_UNAVAILABLE,
        "The message broker is unreachable, so the request could not be queued. Retry in a few "
        "seconds (with the same messageId, if you sent one).",
        {"retryAfterSeconds": BROKER_RETRY_AFTER},
        headers={"Retry-After": str(BROKER_RETRY_AFTER)},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Our bug, not the caller's: log the traceback, answer a reference, leak nothing."""
    reference = uuid.uuid4().hex
    log.error("unhandled error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        ErrorCode.INTERNAL_ERROR,
        "The server failed to handle this request. It has been logged; quote the reference when "
        "reporting it.",
        {"reference": reference},
    )


def install_error_handlers(application: FastAPI) -> None:
    """Register the handlers; Starlette picks one by walking the raised exception's MRO."""
    application.add_exception_handler(RequestValidationError, _on_validation_error)
    application.add_exception_handler(InvalidRequest, _on_invalid_request)
    application.add_exception_handler(QueryRefused, _on_query_refused)
    application.add_exception_handler(ContractError, _on_contract_error)
    application.add_exception_handler(Unauthenticated, _on_unauthenticated)
    application.add_exception_handler(StarletteHTTPException, _on_http_exception)
    application.add_exception_handler(StatementError, _on_statement_error)
    application.add_exception_handler(BrokerOperationalError, _on_broker_unavailable)
    application.add_exception_handler(redis.ConnectionError, _on_broker_unavailable)
    application.add_exception_handler(redis.TimeoutError, _on_broker_unavailable)
    application.add_exception_handler(Exception, _on_unexpected)


__all__ = [
    "BROKER_RETRY_AFTER",
    "DATABASE_RETRY_AFTER",
    "install_error_handlers",
    "unauthenticated_first",
]
