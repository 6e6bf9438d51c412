"""Every error the HTTP front answers, mapped once: exception class → status, code, body.

    STATUS_BY_ERROR (walked along the exception's MRO, like Starlette's handlers)
    ├── ContractError ........ 400 unless a subclass says otherwise (a rule nobody mapped yet)
    │   ├── ContractNotFound 404 · InvalidTransition 400 · VersionConflict 409
    │   ├── PhaseGuardRequired 409 · InvalidDeliverable 400 · ValidationFailed 400
    │   ├── SupervisorNotFound 404 · SupervisorDead 503 · Forbidden 403
    │   └── SupervisorFenced 409 · IncarnationNotIssued 409 · StaleState 409
    │       · StateVersionReused 409 · HistoryGap 409
    │       · QuestionNotFound 404 · QuestionClosed 409 · QuestionIdReused 409
    ├── Unauthenticated ...... 401 UNAUTHENTICATED
    └── InvalidRequest ....... 422 INVALID_REQUEST

The domain never knows about HTTP (`app.domain.errors`); this module is where its codes get
statuses, where the edge's own codes (bad JSON, no such endpoint, our own bug) are produced,
and where a WebSocket learns its close code, so a rule reads the same over every transport.
Every body is `{"error": {"code", "message", "details"}}` (`app.schemas.ErrorBody`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from itertools import pairwise
from types import MappingProxyType
from typing import Any, Final

import redis
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.exc import DataError, DBAPIError, StatementError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.auth import Unauthenticated
from app.domain.errors import (
    ContractError,
    ContractNotFound,
    FeatureDisabled,
    Forbidden,
    HistoryGap,
    IncarnationNotIssued,
    InvalidDeliverable,
    InvalidTransition,
    PhaseGuardRequired,
    QuestionClosed,
    QuestionIdReused,
    QuestionNotFound,
    StaleState,
    StateVersionReused,
    SupervisorDead,
    SupervisorFenced,
    SupervisorNotFound,
    ValidationFailed,
    VersionConflict,
)
from app.http.deps import authenticate_token, bearer, wiring
from app.http.problems import InvalidRequest, problems_from_pydantic, summary
from app.schemas import ErrorBody, ErrorCode

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/contracts"

# The one place an error class gets its HTTP status (DESIGN "Error codes").
STATUS_BY_ERROR: Final[Mapping[type[Exception], int]] = MappingProxyType(
    {
        ContractNotFound: status.HTTP_404_NOT_FOUND,
        InvalidTransition: status.HTTP_400_BAD_REQUEST,
        VersionConflict: status.HTTP_409_CONFLICT,
        PhaseGuardRequired: status.HTTP_409_CONFLICT,
        InvalidDeliverable: status.HTTP_400_BAD_REQUEST,
        ValidationFailed: status.HTTP_400_BAD_REQUEST,
        SupervisorNotFound: status.HTTP_404_NOT_FOUND,
        SupervisorDead: status.HTTP_503_SERVICE_UNAVAILABLE,
        Forbidden: status.HTTP_403_FORBIDDEN,
        SupervisorFenced: status.HTTP_409_CONFLICT,
        IncarnationNotIssued: status.HTTP_409_CONFLICT,
        StaleState: status.HTTP_409_CONFLICT,
        StateVersionReused: status.HTTP_409_CONFLICT,
        HistoryGap: status.HTTP_409_CONFLICT,
        QuestionNotFound: status.HTTP_404_NOT_FOUND,
        QuestionClosed: status.HTTP_409_CONFLICT,
        QuestionIdReused: status.HTTP_409_CONFLICT,
        FeatureDisabled: status.HTTP_503_SERVICE_UNAVAILABLE,
        ContractError: status.HTTP_400_BAD_REQUEST,
        Unauthenticated: status.HTTP_401_UNAUTHORIZED,
        InvalidRequest: status.HTTP_422_UNPROCESSABLE_CONTENT,
    }
)

# The domain's codes and their statuses, as the README's table lists them.
ERROR_STATUS: Final[Mapping[str, int]] = MappingProxyType(
    {
        cls.code: code
        for cls, code in STATUS_BY_ERROR.items()
        if issubclass(cls, ContractError) and cls is not ContractError
    }
)

# The statuses of the codes only the edge produces (INVALID_REQUEST is 400 for bad JSON).
EDGE_STATUS: Final[Mapping[ErrorCode, int]] = MappingProxyType(
    {
        ErrorCode.INVALID_REQUEST: status.HTTP_422_UNPROCESSABLE_CONTENT,
        ErrorCode.UNAUTHENTICATED: status.HTTP_401_UNAUTHORIZED,
        ErrorCode.FORBIDDEN: status.HTTP_403_FORBIDDEN,
        ErrorCode.NOT_FOUND: status.HTTP_404_NOT_FOUND,
        ErrorCode.METHOD_NOT_ALLOWED: status.HTTP_405_METHOD_NOT_ALLOWED,
        ErrorCode.BROKER_UNAVAILABLE: status.HTTP_503_SERVICE_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE: status.HTTP_503_SERVICE_UNAVAILABLE,
        ErrorCode.INTERNAL_ERROR: status.HTTP_500_INTERNAL_SERVER_ERROR,
    }
)
# Seconds a client waits before retrying a send the broker refused (the embedded Redis is
# back within about a second after `makima run` restarts it).
BROKER_RETRY_AFTER: Final = 5

# WebSocket close codes (the live monitor): 4000 + the HTTP status a request would have got,
# so a client reads them the same way, plus the ones only a stream needs.
WS_INVALID_REQUEST: Final = 4400  # a bad filter or message
WS_UNAUTHENTICATED: Final = 4401
WS_FORBIDDEN: Final = 4403
WS_NOT_FOUND: Final = 4404
WS_FEATURE_DISABLED: Final = 4503  # FEATURE_DISABLED: the flag named in the reason is off
WS_TOO_SLOW: Final = 4408  # the client fell behind: reconnect and resume after the last event id seen
WS_INTERNAL_ERROR: Final = 1011  # RFC 6455 "unexpected condition"


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error: its own class's, else its nearest mapped base's."""
    for cls in type(exc).__mro__:
        found = STATUS_BY_ERROR.get(cls)
        if found is not None:
            return found
    return status.HTTP_500_INTERNAL_SERVER_ERROR


def status_of_code(code: ErrorCode) -> int:
    return ERROR_STATUS.get(code.value) or EDGE_STATUS[code]


def websocket_close_code(http_status: int) -> int:
    """The close code a stream sends where a request would have answered `http_status`."""
    if http_status >= 500:
        return WS_INTERNAL_ERROR
    if http_status == status.HTTP_422_UNPROCESSABLE_CONTENT:
        return WS_INVALID_REQUEST
    return 4000 + http_status


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class ErrorJSONResponse(JSONResponse):
    """A JSON error body that can always be written, whatever input it quotes.

    An error may echo what the caller sent; a lone UTF-16 surrogate in it cannot be encoded
    as UTF-8, and a failing render turned a 4xx into a 500 and a dropped connection. Such
    half-characters are replaced with U+FFFD, the Unicode replacement character.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def error_response(
    status_code: int,
    code: ErrorCode | str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Every error leaves through here, so no handler can invent another body shape."""
    body = {"error": {"code": str(code), "message": message, "details": dict(details or {})}}
    return ErrorJSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


# --- the errors in the published schema -------------------------------------------------

_EXAMPLES: Final[Mapping[ErrorCode, tuple[str, dict[str, Any]]]] = MappingProxyType(
    {
        ErrorCode.CONTRACT_NOT_FOUND: (
            "Contract 2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13 does not exist or is not visible to you; "
            "check the id, or list your contracts with GET /api/v1/contracts.",
            {"contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"},
        ),
        ErrorCode.INVALID_TRANSITION: (
            "A contract cannot move from 'completed' to 'active'. From 'completed' it may move to: archived.",
            {"currentStatus": "completed", "targetStatus": "active", "allowedTargets": ["archived"]},
        ),
        ErrorCode.VERSION_CONFLICT: (
            "The contract changed since you read it: you expected version 1, it is at version 2 in "
            "phase 'execute'. Reload it and decide again.",
            {"expected": 1, "actual": 2, "currentPhase": "execute"},
        ),
        ErrorCode.PHASE_GUARD_REQUIRED: (
            "Phase guard is enabled: moving from 'plan' to 'execute' needs a person's confirmation. "
            "Review the deliverables and repeat the request with confirmed=true.",
            {
                "currentPhase": "plan",
                "nextPhase": "execute",
                "deliverables": [{"id": "plan-document", "name": "Plan document", "required": True}],
            },
        ),
        ErrorCode.INVALID_DELIVERABLE: (
            "'pull-request' is not a deliverable of the 'plan' phase. Valid deliverable ids for "
            "'plan': plan-document, task-breakdown.",
            {
                "deliverableId": "pull-request",
                "phase": "plan",
                "validIds": ["plan-document", "task-breakdown"],
            },
        ),
        ErrorCode.VALIDATION_FAILED: (
            "The phase's gate is not met: plan-document is missing. Complete it, or pass force=true.",
            {"missing": ["deliverable plan-document"]},
        ),
        ErrorCode.SUPERVISOR_NOT_FOUND: (
            "No supervisor is registered for this contract.",
            {"contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"},
        ),
        ErrorCode.SUPERVISOR_DEAD: (
            "The contract's supervisor stopped sending heartbeats; restart it and retry.",
            {"contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"},
        ),
        ErrorCode.SUPERVISOR_FENCED: (
            "Incarnation 1 of supervisor 9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c was replaced by incarnation 2: "
            "nothing it sends changes state. Restore (GET .../supervisor/restoration) to get the current "
            "incarnation.",
            {
                "contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13",
                "taskId": "9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c",
                "incarnation": 1,
                "currentIncarnation": 2,
            },
        ),
        ErrorCode.INCARNATION_NOT_ISSUED: (
            "Incarnation 50 of supervisor 9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c was never issued: "
            "incarnation 1 is in force. Send the incarnation you were issued; a daemon that does not "
            "know it restores (GET .../supervisor/restoration), which issues the next one.",
            {
                "contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13",
                "taskId": "9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c",
                "incarnation": 50,
                "currentIncarnation": 1,
            },
        ),
        ErrorCode.STALE_STATE: (
            "State version 4 (incarnation 2) of supervisor 9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c is older "
            "than the stored version 7 (incarnation 2); it was not applied. Send a higher stateVersion.",
            {
                "taskId": "9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c",
                "incarnation": 2,
                "stateVersion": 4,
                "storedIncarnation": 2,
                "storedStateVersion": 7,
            },
        ),
        ErrorCode.STATE_VERSION_REUSED: (
            "State version 7 (incarnation 2) of supervisor 9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c was "
            "already saved with different content (progress, history). Resending a save must repeat "
            "it exactly; save a changed state with a higher stateVersion.",
            {
                "taskId": "9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c",
                "incarnation": 2,
                "stateVersion": 7,
                "differs": ["progress", "history"],
            },
        ),
        ErrorCode.HISTORY_GAP: (
            "historyFrom is 40 but supervisor 9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c has 32 stored messages: "
            "resend the history from 32 (any value from 0 to 32 is accepted).",
            {"taskId": "9b1d0c7e-4f2a-4e8b-a6c3-5d7e8f9a0b1c", "historyFrom": 40, "storedLength": 32},
        ),
        ErrorCode.QUESTION_NOT_FOUND: (
            "Contract 2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13 has no question "
            "7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54. List its questions with "
            "GET /api/v1/contracts/2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13/questions.",
            {
                "contractId": "2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13",
                "questionId": "7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54",
            },
        ),
        ErrorCode.QUESTION_CLOSED: (
            "Question 7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54 is answered: it takes no other answer.",
            {
                "questionId": "7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54",
                "status": "answered",
                "answer": "PostgreSQL",
                "answeredBy": "0b6f3c2e-8d1a-4e5f-b7c9-1a2d3e4f5a6b",
                "answeredAt": "2026-11-26T10:15:00+00:00",
            },
        ),
        ErrorCode.QUESTION_ID_REUSED: (
            "Question id 7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54 was already asked with different "
            "content (options). "
            "Asking again with the same id must repeat the same question, type, options and "
            "context; ask a new question with a new questionId.",
            {"questionId": "7d4e2a10-5c3b-4f8e-9a61-2b0c9d8e7f54", "differs": ["options"]},
        ),
        ErrorCode.INVALID_REQUEST: (
            "The request does not match the API schema: force: Input should be a valid boolean.",
            {
                "problems": [
                    {
                        "field": "force",
                        "in": "body",
                        "type": "bool_type",
                        "problem": "Input should be a valid boolean",
                        "given": "yes",
                    }
                ]
            },
        ),
        ErrorCode.UNAUTHENTICATED: (
            "A bearer token is required: send Authorization: Bearer <token>.",
            {"scheme": "Bearer"},
        ),
        ErrorCode.FORBIDDEN: ("Your role may not do this; ask an admin.", {"role": "supervisor"}),
        ErrorCode.NOT_FOUND: ("No endpoint at GET /api/v1/contract; see /openapi.json.", {}),
        ErrorCode.METHOD_NOT_ALLOWED: (
            "DELETE is not allowed at /api/v1/contracts/dashboard; allowed: GET.",
            {"method": "DELETE", "allowed": ["GET"]},
        ),
        ErrorCode.BROKER_UNAVAILABLE: (
            "The message broker is unreachable, so the request could not be queued. Retry in a few "
            "seconds (with the same messageId, if you sent one).",
            {"retryAfterSeconds": 5},
        ),
        ErrorCode.DATABASE_UNAVAILABLE: (
            "The database connection was lost (a restart or failover) before the request could "
            "be confirmed. Retry in a moment.",
            {"retryAfterSeconds": 1},
        ),
        ErrorCode.FEATURE_DISABLED: (
            "This feature is disabled on this server (feature flag 'monitoring_dashboard' is off). An "
            "operator can turn it on with [feature_flags] monitoring_dashboard = true or "
            "MAKIMA_FEATURE_FLAGS__MONITORING_DASHBOARD=true.",
            {"featureFlag": "monitoring_dashboard"},
        ),
        ErrorCode.INTERNAL_ERROR: (
            "The server failed to handle this request. It has been logged; quote the reference when "
            "reporting it.",
            {"reference": "5b0c1f3e9d2a4c6b8e7f1a2b3c4d5e6f"},
        ),
    }
)

_BAD_JSON_EXAMPLE: Final = {
    "error": {
        "code": "INVALID_REQUEST",
        "message": "The request body is not valid JSON: EOF while parsing an object (at character 20).",
        "details": {
            "problems": [
                {
                    "field": "body",
                    "in": "body",
                    "type": "json_invalid",
                    "problem": "EOF while parsing an object",
                    "position": 20,
                }
            ]
        },
    }
}


def example_body(code: ErrorCode) -> dict[str, Any]:
    message, details = _EXAMPLES[code]
    return {"error": {"code": code.value, "message": message, "details": details}}


def error_responses(*codes: ErrorCode, bad_json: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer: ErrorBody plus an example per code.

    `bad_json` adds the 400 a route with a JSON body answers when the body does not parse.
    """
    by_status: dict[int, dict[str, Any]] = {}
    for code in codes:
        by_status.setdefault(status_of_code(code), {})[code.value] = {
            "summary": code.value,
            "value": example_body(code),
        }
    if bad_json:
        by_status.setdefault(status.HTTP_400_BAD_REQUEST, {})["INVALID_REQUEST (malformed JSON)"] = {
            "summary": "INVALID_REQUEST: the body is not JSON",
            "value": _BAD_JSON_EXAMPLE,
        }
    return {
        code: {
            "model": ErrorBody,
            "description": ", ".join(examples),
            "content": {"application/json": {"examples": examples}},
        }
        for code, examples in sorted(by_status.items())
    }


# --- handlers ---------------------------------------------------------------------------

PUBLIC_PREFIXES: Final = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc")


async def unauthenticated_first(request: Request) -> JSONResponse | None:
    """An unauthenticated caller learns only that: it gets 401, never a schema complaint.

    FastAPI decodes a JSON body before it runs dependencies, and routing answers 404 before
    any dependency, so without this a stranger would learn which requests are well formed.
    """
    if not request.url.path.startswith(API_PREFIX):
        return None
    credentials = await bearer(request)
    try:
        await run_in_threadpool(
            authenticate_token, wiring(request).engine, credentials.credentials if credentials else None
        )
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
            message += f" {hint[0]} ids are UUIDs, like 2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13."
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
    """The id to name in a 404 under the contracts API: the first one that is not a UUID."""
    if not path.startswith(API_PREFIX + "/"):
        return None
    segments = path.split("/")
    for name, value in pairwise(segments):
        if name in _UUID_SEGMENTS and value:
            try:
                uuid.UUID(value)
            except ValueError:
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


DATABASE_RETRY_AFTER: Final = 1


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
    application.add_exception_handler(ContractError, _on_contract_error)
    application.add_exception_handler(Unauthenticated, _on_unauthenticated)
    application.add_exception_handler(StarletteHTTPException, _on_http_exception)
    application.add_exception_handler(StatementError, _on_statement_error)
    application.add_exception_handler(BrokerOperationalError, _on_broker_unavailable)
    application.add_exception_handler(redis.ConnectionError, _on_broker_unavailable)
    application.add_exception_handler(redis.TimeoutError, _on_broker_unavailable)
    application.add_exception_handler(Exception, _on_unexpected)


__all__ = [
    "API_PREFIX",
    "EDGE_STATUS",
    "ERROR_STATUS",
    "STATUS_BY_ERROR",
    "WS_FEATURE_DISABLED",
    "WS_FORBIDDEN",
    "WS_INTERNAL_ERROR",
    "WS_INVALID_REQUEST",
    "WS_NOT_FOUND",
    "WS_TOO_SLOW",
    "WS_UNAUTHENTICATED",
    "ErrorJSONResponse",
    "error_response",
    "error_responses",
    "example_body",
    "install_error_handlers",
    "status_for",
    "unauthenticated_first",
    "websocket_close_code",
]
