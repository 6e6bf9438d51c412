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

The domain never knows about HTTP (`app.domain.errors`); this module is the catalogue where its
codes get statuses, where the edge's own codes (bad JSON, no such endpoint, our own bug) get
theirs, where every code has the example message the published schema shows, and where a
WebSocket learns its close code, so a rule reads the same over every transport. Every body is
`{"error": {"code", "message", "details"}}` (`app.schemas.ErrorBody`), written by
`error_response`. The FastAPI exception handlers that produce these answers are
`app.http.error_handlers`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from fastapi import status
from fastapi.responses import JSONResponse

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
from app.http.problems import InvalidRequest
from app.schemas import ErrorBody, ErrorCode

API_PREFIX: Final = "/api/v1/contracts"
# Every endpoint under it needs a token, so a caller without one learns only that (401 first).
AUTHENTICATED_PREFIX: Final = "/api/v1/"

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
# WebSocket close codes (the live monitor): 4000 + the HTTP status a request would have got,
# so a client reads them the same way, plus the ones only a stream needs.
WS_INVALID_REQUEST: Final = 4400  # a bad filter or message
WS_UNAUTHENTICATED: Final = 4401
WS_FORBIDDEN: Final = 4403
WS_NOT_FOUND: Final = 4404
WS_FEATURE_DISABLED: Final = 4503  # FEATURE_DISABLED: the flag named in the reason is off
WS_TOO_SLOW: Final = 4408  # the client fell behind: reconnect and resume after the last event id seen
WS_INTERNAL_ERROR: Final = 1011  # RFC 6455 "unexpected condition"
# A close frame carries at most 125 bytes (RFC 6455 5.5), 2 of them the code: the reason is at
# most 123 bytes of UTF-8, and a server refuses to send a longer one.
WS_REASON_BYTES: Final = 123
_ELLIPSIS: Final = "\u2026"


def websocket_close_reason(text: str, limit: int = WS_REASON_BYTES) -> str:
    """`text` as a close reason: whole when it fits in `limit` bytes, else its start and `…`.

    Cut by bytes and never inside a UTF-8 character, then back to the last space when that
    keeps at least half of it, so a reason does not end in half a word (`..., f`); a lone
    surrogate (which UTF-8 cannot carry) becomes U+FFFD. Whoever needs the whole text sends it
    another way (the live monitor: an `error` message before the close).
    """
    text = _SURROGATE.sub("\ufffd", text)
    data = text.encode()
    if len(data) <= limit:
        return text
    head = data[: limit - len(_ELLIPSIS.encode())].decode("utf-8", "ignore")
    if not text[len(head)].isspace():
        space = head.rfind(" ")
        if space >= len(head) // 2:
            head = head[:space]
    return head.rstrip(" ,;:") + _ELLIPSIS


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


_UNKNOWN_QUERY_EXAMPLE: Final = {
    "error": {
        "code": "INVALID_REQUEST",
        "message": "The request does not match the API schema: foo: is not a query parameter of "
        "this request, which takes none.",
        "details": {
            "problems": [
                {
                    "field": "foo",
                    "in": "query",
                    "type": "extra_forbidden",
                    "problem": "is not a query parameter of this request, which takes none",
                    "given": "1",
                    "allowed": [],
                }
            ]
        },
    }
}


def example_body(code: ErrorCode) -> dict[str, Any]:
    message, details = _EXAMPLES[code]
    return {"error": {"code": code.value, "message": message, "details": details}}


def error_responses(
    *codes: ErrorCode, bad_json: bool = False, unknown_query: bool = False
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the errors a route can answer: ErrorBody plus an example per code.

    `bad_json` adds the 400 a route with a JSON body answers when the body does not parse;
    `unknown_query` adds the 422 a route that takes no query parameter answers one
    (`app.http.query_params`), for a route whose other errors publish no 422.
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
    if unknown_query:
        by_status.setdefault(status.HTTP_422_UNPROCESSABLE_CONTENT, {})[
            "INVALID_REQUEST (unknown parameter)"
        ] = {
            "summary": "INVALID_REQUEST: a query parameter the request does not take (`?foo=1`)",
            "value": _UNKNOWN_QUERY_EXAMPLE,
        }
    return {
        code: {
            "model": ErrorBody,
            "description": ", ".join(examples),
            "content": {"application/json": {"examples": examples}},
        }
        for code, examples in sorted(by_status.items())
    }


__all__ = [
    "API_PREFIX",
    "AUTHENTICATED_PREFIX",
    "EDGE_STATUS",
    "ERROR_STATUS",
    "STATUS_BY_ERROR",
    "WS_FEATURE_DISABLED",
    "WS_FORBIDDEN",
    "WS_INTERNAL_ERROR",
    "WS_INVALID_REQUEST",
    "WS_NOT_FOUND",
    "WS_REASON_BYTES",
    "WS_TOO_SLOW",
    "WS_UNAUTHENTICATED",
    "ErrorJSONResponse",
    "error_response",
    "error_responses",
    "example_body",
    "status_for",
    "status_of_code",
    "websocket_close_code",
    "websocket_close_reason",
]
