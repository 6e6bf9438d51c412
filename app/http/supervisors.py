"""Supervisor heartbeats over HTTP: send them (202, coalesced), read a contract's supervisor.

`POST /api/v1/supervisors/heartbeats` takes one heartbeat (a JSON object) or a list of up to
1,000. Each is checked on its own: an invalid one, one on a closed contract (completed,
failed, archived: field `contractId`, and a single one's details its `status`, as a state
save's refusal there carries), or one whose `taskId` is another contract's supervisor,
is refused with the field named and the rest go on (per-item results).
Concurrent requests to this process share one broker message (a request waits at most
`[heartbeats] coalesce_ms` for company) and each is answered 202 only once the message
holding its heartbeats is in the broker.

With the `supervisor_heartbeat` feature flag off, every endpoint here answers 503
FEATURE_DISABLED.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Body, Query, Request, status
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.auth import Caller
from app.broker import send_task
from app.config import get_settings
from app.domain.daemon_ids import DAEMON_ID_RULE, MAX_DAEMON_ID
from app.domain.errors import ContractNotFound, FeatureDisabled, ValidationFailed
from app.domain.heartbeat_plan import closed_contract_refusal
from app.domain.heartbeats import MAX_PENDING_TASKS
from app.domain.lifecycle import CLOSED_STATUSES
from app.domain.supervisors import SupervisorState
from app.group_commit import GroupCommit
from app.heartbeat_buffer import ItemResult, Submission, http_flush, parse_submission, require_enabled
from app.http.deps import Api, ContractId, wiring
from app.http.errors import API_PREFIX, error_response, error_responses
from app.http.problems import json_type, not_json_type
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode
from app.supervisors import (
    HEARTBEATS_PAGE,
    MAX_HEARTBEATS_PAGE,
    HeartbeatList,
    HeartbeatsAccepted,
    SupervisorStatus,
    SyncRequested,
)

E = ErrorCode
MAX_PER_REQUEST: Final = 1000
CONTRACT = "/{id:uuid}"

router = APIRouter(
    route_class=ParsedJSONRoute,
    tags=["supervisors"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)

# What `parse_heartbeat` accepts: an optional field may also be null, which means absent (daemons
# send it so); a required one may not. `test_the_published_heartbeat_schema_allows_null_exactly_
# where_the_endpoint_accepts_it` holds the two together.
_HEARTBEAT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["taskId", "contractId", "state", "phase", "timestamp"],
    "additionalProperties": False,
    "properties": {
        "id": {
            "type": ["string", "null"],
            "format": "uuid",
            "description": "Your heartbeat id (absent or null: "
            "derived from taskId and timestamp, so a resend is stored once)",
        },
        "taskId": {"type": "string", "format": "uuid"},
        "contractId": {"type": "string", "format": "uuid"},
        "state": {"type": "string", "enum": [s.value for s in SupervisorState]},
        "phase": {"type": "string", "minLength": 1, "maxLength": 100},
        "currentActivity": {
            "type": ["string", "null"],
            "maxLength": 2000,
            "description": 'Absent or null: ""',
        },
        "progress": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 100,
            "description": "Absent or null: 0",
        },
        "pendingTaskIds": {
            "type": ["array", "null"],
            "maxItems": MAX_PENDING_TASKS,
            "items": {"type": "string", "format": "uuid"},
            "description": "Absent or null: []",
        },
        "timestamp": {"type": "string", "format": "date-time", "description": "Your clock, with a time zone"},
        "incarnation": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "As issued; absent or null: the current one",
        },
        "daemonId": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_DAEMON_ID,
            "description": f"Your daemon's id, as its command feed takes it: {DAEMON_ID_RULE}",
        },
        "host": {"type": ["string", "null"], "maxLength": 255},
    },
}
_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _HEARTBEAT_SCHEMA,
                        {"type": "array", "maxItems": MAX_PER_REQUEST, "items": _HEARTBEAT_SCHEMA},
                    ]
                }
            }
        },
    }
}


def _disabled(exc: FeatureDisabled) -> JSONResponse:
    return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, exc.code, exc.message, exc.details)


# Lists longer than this are parsed on a worker thread: a list of 1,000 takes milliseconds to
# check, which the event loop would spend away from every other connection.
_OFF_LOOP_ITEMS: Final = 200


def _group_commit(request: Request) -> GroupCommit[Submission]:
    """This app's group commit, made on first use with the app's database and sender (on the
    event loop, so no two requests make one each)."""
    state = request.app.state
    found: GroupCommit[Submission] | None = getattr(state, "heartbeat_group_commit", None)
    if found is None:
        settings = get_settings()
        wired = wiring(request)
        found = GroupCommit(
            http_flush(wired.engine, settings, wired.sender or send_task),
            settings.heartbeats.coalesce_ms / 1000,
            settings.heartbeats.batch_size,
        )
        state.heartbeat_group_commit = found
    return found


async def accept(request: Request, caller: Caller, body: Any) -> Response:
    """The 202 answer, `HeartbeatsAccepted` written out directly (a result per heartbeat, up to
    1,000 a request: building and validating a model for each cost more than the check of the
    heartbeat itself). `test_the_answer_is_the_models_own_serialization` holds the two equal."""
    if isinstance(body, bytes):
        # FastAPI hands the raw bytes over when the Content-Type is not JSON (or there is none).
        sent = request.headers.get("content-type") or "none"
        raise ValidationFailed(
            "Send the heartbeats as a JSON body with Content-Type: application/json "
            f"(this request's Content-Type: {sent[:100]}).",
            details={"field": "body", "contentType": sent[:100]},
        )
    single = isinstance(body, dict)
    items = [body] if single else body
    if not isinstance(items, list):
        # Valid JSON of another type (`"x"`, `null`, `5`): the Content-Type was right, so the
        # refusal says what the body is.
        raise ValidationFailed(
            f"The body must be one heartbeat (a JSON object) or a list of up to {MAX_PER_REQUEST} "
            f"of them, {not_json_type(body)}.",
            details={"field": "body", "jsonType": json_type(body), "allowed": ["object", "array"]},
        )
    if len(items) > MAX_PER_REQUEST:
        raise ValidationFailed(
            f"At most {MAX_PER_REQUEST} heartbeats per request (this one has {len(items)}).",
            details={"field": "body", "limit": MAX_PER_REQUEST},
        )
    if len(items) > _OFF_LOOP_ITEMS:
        submission = await run_in_threadpool(parse_submission, caller, items)
    else:
        submission = parse_submission(caller, items)
    if submission.parsed:
        await _group_commit(request).submit(submission, len(submission.parsed))
    if single and not (first := submission.results[0]).accepted:
        # Refused before the group (a field) or by it: a contract the caller cannot see, a
        # closed one (VALIDATION_FAILED naming contractId), or a task id another contract holds
        # (VALIDATION_FAILED naming taskId).
        if first.code == ContractNotFound.code:
            raise ContractNotFound(uuid.UUID(submission.parsed[0][1]["contractId"]))
        raise refusal_of(first)
    return Response(
        accepted_body(submission.results), status_code=status.HTTP_202_ACCEPTED, media_type="application/json"
    )


def refusal_of(result: ItemResult) -> ValidationFailed:
    """The error a single refused heartbeat answers: its result's words and field, and for a
    closed contract the refusal's own details (`status` beside `field`), as the API module and a
    state save on the contract carry them.

    A result keeps only a code, a field and a message (a list's answer has no room for more),
    so the closed contract's refusal, the one whose details say more, is found by its words.
    """
    for stored in CLOSED_STATUSES:
        closed = closed_contract_refusal(stored)
        if closed is not None and closed.message == result.message and result.field == "contractId":
            return closed
    return ValidationFailed(result.message or "invalid heartbeat", details={"field": result.field})


def accepted_body(results: list[ItemResult]) -> bytes:
    """`HeartbeatsAccepted` of these results, as its model serializes it (camelCase, nulls kept),
    written by orjson: a tenth of `json.dumps`'s time on a list of 100 (UTF-8, not `\\u` escapes;
    the same JSON)."""
    accepted = sum(1 for r in results if r.accepted)
    answer = {
        "accepted": accepted,
        "refused": len(results) - accepted,
        "results": [
            {
                "index": r.index,
                "id": r.id,
                "status": "accepted" if r.accepted else "refused",
                "code": r.code,
                "field": r.field,
                "message": r.message,
            }
            for r in results
        ],
    }
    try:
        return orjson.dumps(answer)
    except TypeError:  # a lone surrogate in a message (the body limits let none in): escaped
        return json.dumps(answer, separators=(",", ":")).encode()


@router.post(
    "/api/v1/supervisors/heartbeats",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=HeartbeatsAccepted,
    openapi_extra=_BODY,
    responses=error_responses(E.CONTRACT_NOT_FOUND, E.VALIDATION_FAILED, E.BROKER_UNAVAILABLE, bad_json=True),
)
async def send_heartbeats(request: Request, api: Api, body: Annotated[Any, Body()]) -> Any:
    """Supervisor heartbeats: one (a JSON object) or a list of up to 1,000, answered 202 once
    they are queued. In a list, each heartbeat gets its own result: an invalid one (the field
    is named), one naming another contract's supervisor as its taskId, one on a completed,
    failed or archived contract (contractId), or one for a contract you cannot see is refused
    and the others are accepted. A single heartbeat that is refused
    answers 400 VALIDATION_FAILED or 404 CONTRACT_NOT_FOUND.
    A heartbeat without an `id` is identified by its task and timestamp, so sending it again
    stores it once."""
    return await answer(request, api.caller, body)


async def answer(request: Request, caller: Caller, body: Any) -> Response:
    """The endpoint's answer to `caller` sending `body`: 503 with the feature flag off, else
    `accept`'s. The routed endpoint and its door (`app.http.heartbeat_door`) both answer here."""
    try:
        require_enabled(get_settings())
    except FeatureDisabled as exc:
        return _disabled(exc)
    return await accept(request, caller, body)


@router.get(
    API_PREFIX + CONTRACT + "/supervisor/status",
    response_model=SupervisorStatus,
    responses=error_responses(E.CONTRACT_NOT_FOUND, E.SUPERVISOR_NOT_FOUND),
)
def supervisor_status(contract_id: ContractId, api: Api) -> Any:
    """The contract's supervisor: its newest state (by incarnation, then its own timestamp),
    its incarnation, when we last received a heartbeat from it, and whether it is alive
    (received within the heartbeat timeout). SUPERVISOR_NOT_FOUND when none ever reported; when
    every heartbeat received for it was fenced (a first one naming an incarnation never issued),
    its message and details say how many, when, which incarnation and daemon, and what to do."""
    try:
        return api.supervisor_status(contract_id)
    except FeatureDisabled as exc:
        return _disabled(exc)


@router.get(
    API_PREFIX + CONTRACT + "/supervisor/heartbeats",
    response_model=HeartbeatList,
    responses=error_responses(E.CONTRACT_NOT_FOUND),
)
def supervisor_heartbeats(
    contract_id: ContractId,
    api: Api,
    limit: Annotated[int, Query(ge=1, le=MAX_HEARTBEATS_PAGE)] = HEARTBEATS_PAGE,
) -> Any:
    """The contract's heartbeats of the last 24 hours, newest received first; fenced ones
    (from an incarnation that had been replaced) are marked."""
    try:
        return api.supervisor_heartbeats(contract_id, limit)
    except FeatureDisabled as exc:
        return _disabled(exc)


@router.post(
    API_PREFIX + CONTRACT + "/supervisor/sync",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SyncRequested,
    responses=error_responses(E.CONTRACT_NOT_FOUND, E.SUPERVISOR_NOT_FOUND, E.SUPERVISOR_DEAD),
)
def supervisor_sync(contract_id: ContractId, api: Api) -> Any:
    """Ask the supervisor's daemon to send its full state now: a `sync_supervisor_state`
    command to its daemon's queue. Answers the command's id and the persistent state stored so
    far (`storedState`, null when none was saved); the daemon's answer arrives as a newer state
    save. Needs a live supervisor: SUPERVISOR_DEAD (503, with when it was last heard) or
    SUPERVISOR_NOT_FOUND."""
    try:
        return api.request_supervisor_sync(contract_id)
    except FeatureDisabled as exc:
        return _disabled(exc)


__all__ = ["MAX_PER_REQUEST", "accept", "router"]
