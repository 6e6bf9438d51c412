"""The HTTP front: a thin FastAPI app that maps the seed's `/api/v1/...` endpoints onto the API module.

Why it is thin: every rule lives in `app.contracts` and `app.domain`, and every caller (CLI,
daemon, worker, this front) goes through `ContractsAPI`, so a rule holds the same way whoever
asks. This module only does what belongs at the HTTP edge:

- authenticate each call (`Authorization: Bearer <token>`) and build a `ContractsAPI` for that
  caller, per request;
- turn JSON into typed request models (camelCase, unknown fields refused) and back;
- give every error one body shape, `{"error": {"code", "message", "details"}}`, and assign HTTP
  statuses to the domain's error codes in exactly one table (`ERROR_STATUS`): the domain
  never knows about HTTP (see `app.domain.errors`).

Bad input is always the caller's 4xx, never a 500: malformed JSON is 400, a body or query that
does not match the schema is 422 (each problem listed with its field, and the allowed values
when there is a closed set), and a rule the domain refuses is the code its table names.
"""

import logging
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Annotated, Any, Final, cast, get_args

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, StatementError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api import ContractsAPI, Sender
from app.auth import Caller, Unauthenticated, authenticate
from app.db import unit_of_work
from app.domain.errors import ContractError
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phases import contract_type_names
from app.views import ContractFilter

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1/contracts"

# The one place a domain error code gets its HTTP status (DESIGN "Error codes", seed 8.2).
ERROR_STATUS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "CONTRACT_NOT_FOUND": status.HTTP_404_NOT_FOUND,
        "INVALID_TRANSITION": status.HTTP_400_BAD_REQUEST,
        "VERSION_CONFLICT": status.HTTP_409_CONFLICT,
        "PHASE_GUARD_REQUIRED": status.HTTP_409_CONFLICT,
        "INVALID_DELIVERABLE": status.HTTP_400_BAD_REQUEST,
        "SUPERVISOR_NOT_FOUND": status.HTTP_404_NOT_FOUND,
        "SUPERVISOR_DEAD": status.HTTP_503_SERVICE_UNAVAILABLE,
        "VALIDATION_FAILED": status.HTTP_400_BAD_REQUEST,
    }
)

# Codes the edge itself produces, for requests that never reach the domain.
INVALID_REQUEST: Final = "INVALID_REQUEST"
UNAUTHENTICATED: Final = "UNAUTHENTICATED"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
NOT_FOUND: Final = "NOT_FOUND"
METHOD_NOT_ALLOWED: Final = "METHOD_NOT_ALLOWED"

# Paths anyone may read: a load balancer's probe and the published schema.
PUBLIC_PATHS: Final = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})

_THRESHOLD = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_THRESHOLD_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")
_MAX_TEXT: Final = 10_000


# --- error bodies -----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. VERSION_CONFLICT.")
    message: str = Field(description="A sentence a person can act on.")
    details: dict[str, Any] = Field(
        description="What the caller needs to act: valid ids, missing requirements, versions, problems."
    )


class ErrorBody(BaseModel):
    """The shape of every error this service answers."""

    error: ErrorDetail


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Every error leaves through here, so no handler can invent another body shape."""
    body = {"error": {"code": code, "message": message, "details": dict(details or {})}}
    return JSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer (all share ErrorBody)."""
    return {code: {"model": ErrorBody} for code in codes}


class InvalidRequest(Exception):
    """A request the schema alone cannot judge (query mini-languages) but is still malformed."""

    def __init__(self, problems: Sequence[Mapping[str, Any]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))
        self.problems = [dict(p) for p in problems]


# --- request models ---------------------------------------------------------------------


def _no_nul(value: str) -> str:
    """PostgreSQL text cannot hold U+0000; refuse it here, where the field can be named."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


SafeStr = Annotated[str, AfterValidator(_no_nul)]


class _Body(BaseModel):
    """Request bodies: camelCase on the wire, snake_case accepted too, nothing unknown.

    `strict` refuses coercions such as "true" for a boolean or "5" for a number, so a client
    bug surfaces as a 422 instead of silently meaning something. Enum fields opt back into lax
    mode (`Field(strict=False)`) because strict Python validation would refuse their JSON
    string values. `validate_by_name` + `validate_by_alias` is pydantic 2.11's spelling of
    `populate_by_name=True`.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
    )


class CreateContractRequest(_Body):
    name: SafeStr = Field(min_length=1, max_length=500, description="What the contract is for.")
    contract_type: SafeStr = Field(
        min_length=1,
        max_length=100,
        description=f"A known type ({', '.join(contract_type_names())}), or any name when the "
        "contract brings its own phaseConfig.",
    )
    phase_guard: bool = Field(False, description="Every phase change then needs confirmed=true.")
    auto_complete_enabled: bool | None = Field(
        None, description="Defaults to the server's [contracts] auto_complete_enabled."
    )
    phase_config: dict[str, Any] | None = Field(
        None,
        description='The contract\'s own phases: {"phases": [{"id", "name"?, "deliverables": '
        '[{"id", "name"?, "required"?}], "gate"?: {...}}]}; the last phase is terminal.',
    )


class ChangeStatusRequest(_Body):
    target_status: Annotated[Status, Field(strict=False)]
    reason: SafeStr | None = Field(None, max_length=_MAX_TEXT, description="Required to move to 'failed'.")
    blocker: SafeStr | None = Field(None, max_length=_MAX_TEXT, description="Required to move to 'blocked'.")
    waiting_for: Annotated[WaitingFor | None, Field(strict=False)] = Field(
        None, description="For 'waiting_for_input' (default 'question')."
    )


class ChangePhaseRequest(_Body):
    phase: SafeStr = Field(min_length=1, max_length=100, description="The phase to move to.")
    expected_version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="The version you read; a different current version answers 409 VERSION_CONFLICT.",
    )
    confirmed: bool = Field(False, description="A person confirmed the move (needed under phaseGuard).")
    force: bool = Field(False, description="Move even though the gate is unmet or the phase is not next.")


class CompleteDeliverableRequest(_Body):
    phase: SafeStr | None = Field(
        None, max_length=100, description="Defaults to the contract's current phase."
    )


class AutoCompleteRequest(_Body):
    enabled: bool


class TaskStartedRequest(_Body):
    task_name: SafeStr = Field(min_length=1, max_length=500)
    is_supervisor: bool = Field(False, description="A supervisor starting makes a 'created' contract active.")
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class TaskCompletedRequest(_Body):
    task_name: SafeStr = Field(min_length=1, max_length=500)
    success: bool
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class WorktreeCreatedRequest(_Body):
    path: SafeStr = Field(min_length=1, max_length=4096)
    message_id: SafeStr | None = Field(
        None, min_length=1, max_length=200, description="Idempotency key; resending the same id is harmless."
    )


class Accepted(BaseModel):
    """A daemon report was enqueued; the worker applies it (idempotently, by messageId)."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    message_id: str


# --- wiring and authentication ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wiring:
    """What a request needs beyond the caller; injectable so tests and benches can swap it."""

    engine: Engine | None
    sender: Sender | None


def _wiring(request: Request) -> _Wiring:
    return cast(_Wiring, request.app.state.wiring)


_bearer = HTTPBearer(
    auto_error=False,
    description="An API token (`mk_...`), created with `makima token create`.",
)


def _authenticate(engine: Engine | None, token: str | None) -> Caller:
    with unit_of_work(engine=engine) as uow:
        return authenticate(uow.session, token)


def authenticated_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Who is calling; raises Unauthenticated (401) for a missing, malformed or unknown token."""
    return _authenticate(_wiring(request).engine, credentials.credentials if credentials else None)


def contracts_api(request: Request, caller: Annotated[Caller, Depends(authenticated_caller)]) -> ContractsAPI:
    """A ContractsAPI acting for this request's caller: the only way handlers reach the domain."""
    wiring = _wiring(request)
    return ContractsAPI(caller=caller, engine=wiring.engine, sender=wiring.sender)


Api = Annotated[ContractsAPI, Depends(contracts_api)]
ContractId = Annotated[uuid.UUID, Path(alias="id", description="The contract's id (a UUID).")]
TaskId = Annotated[uuid.UUID, Path(alias="taskId", description="The task's id (a UUID).")]
DeliverableId = Annotated[
    SafeStr, Path(alias="deliverableId", max_length=200, description="A deliverable id of the phase.")
]
JSON = dict[str, Any]


# --- query mini-languages ---------------------------------------------------------------


def parse_statuses(raw: str | None) -> tuple[Status, ...]:
    """`status=active,paused` → statuses; an unknown one is a 422 naming every allowed status."""
    if raw is None:
        return ()
    names = [part.strip() for part in raw.split(",") if part.strip()]
    allowed = [s.value for s in Status]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise InvalidRequest(
            [
                {
                    "field": "status",
                    "in": "query",
                    "type": "enum",
                    "problem": f"'{name}' is not a status; allowed: {', '.join(allowed)}",
                    "given": name,
                    "allowed": allowed,
                }
                for name in unknown
            ]
        )
    return tuple(dict.fromkeys(Status(n) for n in names))


def parse_threshold(raw: str) -> timedelta:
    """`45s`, `30m`, `2h`, `1d` → a positive duration, the CLI's `--threshold` syntax."""
    match = _THRESHOLD.match(raw)
    amount = int(match.group(1)) if match else 0
    if match is None or amount <= 0 or amount > 10**6:
        raise InvalidRequest(
            [
                {
                    "field": "threshold",
                    "in": "query",
                    "type": "duration",
                    "problem": "must be a positive whole number then s, m, h or d, like 45s, 30m or 2h",
                    "given": raw,
                }
            ]
        )
    return timedelta(**{_THRESHOLD_UNITS[match.group(2)]: amount})


# --- routes -----------------------------------------------------------------------------

router = APIRouter(prefix=API_PREFIX, tags=["contracts"], responses=_errors(401, 422))


@router.post("", status_code=status.HTTP_201_CREATED, responses=_errors(400))
def create_contract(body: CreateContractRequest, api: Api) -> JSON:
    """Create a contract in status `created`, owned by the caller's owner."""
    return api.create_contract(
        body.name,
        body.contract_type,
        phase_guard=body.phase_guard,
        auto_complete_enabled=body.auto_complete_enabled,
        phase_config=body.phase_config,
    )


@router.get("", responses=_errors(400))
def list_contracts(
    api: Api,
    status_: Annotated[
        str | None,
        Query(
            alias="status",
            description=f"Comma-separated statuses ({', '.join(s.value for s in Status)}).",
        ),
    ] = None,
    phase: Annotated[SafeStr | None, Query(max_length=100)] = None,
    stale: Annotated[
        bool | None,
        Query(description="Only open contracts with no activity for `threshold` (default 30m)."),
    ] = None,
    threshold: Annotated[
        str | None,
        Query(max_length=20, description="Stale threshold like 45s, 30m, 2h, 1d; implies stale=true."),
    ] = None,
    waiting: Annotated[bool, Query(description="Only contracts waiting for input.")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`nextCursor` of the previous page.")
    ] = None,
) -> JSON:
    """The caller's contracts (an admin's: everyone's), newest first, keyset-paginated."""
    if stale is False and threshold is not None:
        raise InvalidRequest(
            [
                {
                    "field": "threshold",
                    "in": "query",
                    "type": "conflict",
                    "problem": "a stale threshold only applies with stale=true; drop one of the two",
                }
            ]
        )
    flt = ContractFilter(
        statuses=parse_statuses(status_),
        phase=phase,
        stale=bool(stale) or threshold is not None,
        stale_threshold=parse_threshold(threshold) if threshold is not None else None,
        waiting=waiting,
        limit=limit,
        cursor=cursor,
    )
    return api.list_contracts(flt)


@router.get("/{id}", responses=_errors(404))
def get_contract(contract_id: ContractId, api: Api) -> JSON:
    """One contract; another owner's answers 404 exactly like a missing one."""
    return api.get_contract(contract_id)


@router.post("/{id}/status", responses=_errors(400, 404))
def change_status(contract_id: ContractId, body: ChangeStatusRequest, api: Api) -> JSON:
    """Move along the transition table (seed 1.4); a move off the table is 400 INVALID_TRANSITION.

    Answers the seed's ChangeStatusResponse (success, previousStatus, newStatus,
    rejectionReason) plus the contract as it now is.
    """
    return api.change_status(
        contract_id,
        body.target_status,
        reason=body.reason,
        blocker=body.blocker,
        waiting_for=body.waiting_for,
    )


@router.post("/{id}/phase", responses=_errors(400, 404, 409))
def change_phase(contract_id: ContractId, body: ChangePhaseRequest, api: Api) -> JSON:
    """Guarded phase change: version check (409), gate (400 unless force), phase guard (409)."""
    return api.change_phase(
        contract_id,
        body.phase,
        expected_version=body.expected_version,
        confirmed=body.confirmed,
        force=body.force,
    )


@router.post("/{id}/deliverables/{deliverableId}/complete", responses=_errors(400, 404))
def complete_deliverable(
    contract_id: ContractId,
    deliverable_id: DeliverableId,
    api: Api,
    body: CompleteDeliverableRequest | None = None,
) -> JSON:
    """Mark a deliverable now so an invalid id is answered (400), not dead-lettered; twice is once."""
    return api.complete_deliverable(contract_id, deliverable_id, phase=body.phase if body else None)


@router.get("/{id}/phase-readiness", responses=_errors(404))
def phase_readiness(contract_id: ContractId, api: Api) -> JSON:
    """Is the current phase's gate met, what is missing, and would it advance by itself."""
    return api.phase_readiness(contract_id)


@router.get("/{id}/events", responses=_errors(404))
def contract_events(
    contract_id: ContractId,
    api: Api,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
) -> JSON:
    """The contract's history in order; pass the last id you saw as `after` to catch up."""
    return api.events(contract_id, after=after, limit=limit)


@router.post("/{id}/check-completion", responses=_errors(404))
def check_completion(contract_id: ContractId, api: Api) -> JSON:
    """Judge the gate now (ready, wouldComplete, missing) and start completion if it is met.

    `ContractsAPI.check_completion` answers in the request; `request_completion_check` only
    enqueues and returns a message id, which would leave a person with nothing to read.
    """
    return api.check_completion(contract_id)


@router.put("/{id}/auto-complete", responses=_errors(404))
def set_auto_complete(contract_id: ContractId, body: AutoCompleteRequest, api: Api) -> JSON:
    """Switch this contract's auto-completion on or off; answers the contract."""
    return api.set_auto_complete(contract_id, body.enabled)


# Daemon-facing reports: a daemon must never block on us, so these enqueue and answer 202.
# The visibility check first makes a wrong id a 404 now rather than a dead letter later.


@router.post("/{id}/tasks/{taskId}/started", status_code=status.HTTP_202_ACCEPTED, responses=_errors(404))
def task_started(contract_id: ContractId, task_id: TaskId, body: TaskStartedRequest, api: Api) -> Accepted:
    """A daemon spawned a task (a supervisor starting activates a `created` contract)."""
    api.get_contract(contract_id)
    return Accepted(
        message_id=api.report_task_started(
            contract_id,
            task_id,
            body.task_name,
            is_supervisor=body.is_supervisor,
            message_id=body.message_id,
        )
    )


@router.post("/{id}/tasks/{taskId}/completed", status_code=status.HTTP_202_ACCEPTED, responses=_errors(404))
def task_completed(
    contract_id: ContractId, task_id: TaskId, body: TaskCompletedRequest, api: Api
) -> Accepted:
    """A task finished; the worker records it and judges the gate under the row lock."""
    api.get_contract(contract_id)
    return Accepted(
        message_id=api.report_task_completed(
            contract_id, task_id, body.task_name, body.success, message_id=body.message_id
        )
    )


@router.post("/{id}/worktrees", status_code=status.HTTP_202_ACCEPTED, responses=_errors(404))
def worktree_created(contract_id: ContractId, body: WorktreeCreatedRequest, api: Api) -> Accepted:
    """A daemon created a worktree; recorded so completion cleanup can release it."""
    api.get_contract(contract_id)
    return Accepted(
        message_id=api.report_worktree_created(contract_id, body.path, message_id=body.message_id)
    )


# --- error handlers ---------------------------------------------------------------------


def _field_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _body_field_names(request: Request) -> list[str]:
    """The wire names of the route's body model, to list next to an unknown field."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return []
    annotation = route.body_field.field_info.annotation
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [f.alias or name for name, f in candidate.model_fields.items()]
    return []


def _problem(error: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """One pydantic error as a caller-readable problem: where, what, and what would be allowed."""
    loc = tuple(error.get("loc", ()))
    where = str(loc[0]) if loc else "body"
    field = _field_path(loc[1:]) or where
    kind = str(error.get("type", "invalid"))
    problem: dict[str, Any] = {
        "field": field,
        "in": where,
        "type": kind,
        "problem": str(error.get("msg", "")),
    }
    given = error.get("input")
    if isinstance(given, str | int | float | bool) and kind not in ("missing", "json_invalid"):
        # Echo what was sent, at most 200 characters of it, and never what JSON cannot carry (NaN).
        if isinstance(given, float) and not math.isfinite(given):
            given = str(given)
        problem["given"] = given[:200] if isinstance(given, str) else given
    ctx = error.get("ctx") or {}
    if kind in ("enum", "literal_error") and "expected" in ctx:
        problem["allowed"] = _QUOTED.findall(str(ctx["expected"]))
        problem["problem"] = f"must be one of: {', '.join(problem['allowed'])}"
    elif kind == "extra_forbidden":
        problem["problem"] = "is not a field of this request"
        known = _body_field_names(request) if where == "body" and len(loc) == 2 else []
        if known:
            problem["allowed"] = known
            problem["problem"] += f"; known fields: {', '.join(known)}"
    elif kind == "missing":
        problem["problem"] = "is required"
    elif kind == "model_attributes_type" and loc == ("body",):
        problem["problem"] = "must be a JSON object, sent with Content-Type: application/json"
    elif kind == "uuid_parsing":
        problem["problem"] = "must be a UUID, like 2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"
    return problem


def _invalid(problems: Sequence[Mapping[str, Any]]) -> JSONResponse:
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        INVALID_REQUEST,
        f"The request does not match the API schema: {summary}.",
        {"problems": list(problems)},
    )


async def _unauthenticated_first(request: Request) -> JSONResponse | None:
    """An unauthenticated caller learns only that: it gets 401, never a schema complaint.

    FastAPI decodes a JSON body before it runs dependencies, so without this a bad body would
    answer 400 to someone who never proved who they are.
    """
    if request.url.path in PUBLIC_PATHS or not request.url.path.startswith(API_PREFIX):
        return None
    credentials = await _bearer(request)
    try:
        await run_in_threadpool(
            _authenticate, _wiring(request).engine, credentials.credentials if credentials else None
        )
    except Unauthenticated as exc:
        return _unauthenticated_response(exc)
    return None


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    denied = await _unauthenticated_first(request)
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
            INVALID_REQUEST,
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
    return _invalid([_problem(e, request) for e in errors])


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return _invalid(exc.problems)


async def _on_contract_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ContractError)
    code = exc.code
    status_code = ERROR_STATUS.get(code)
    if status_code is None:
        # A new domain code nobody mapped yet: still the caller's error, but say so in the log.
        log.warning("domain error code %s has no HTTP status in app.http.ERROR_STATUS; answering 400", code)
        status_code = status.HTTP_400_BAD_REQUEST
    return error_response(status_code, code, exc.message, exc.details)


def _unauthenticated_response(exc: Unauthenticated) -> JSONResponse:
    return error_response(
        status.HTTP_401_UNAUTHORIZED,
        UNAUTHENTICATED,
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
    code = {
        status.HTTP_404_NOT_FOUND: NOT_FOUND,
        status.HTTP_405_METHOD_NOT_ALLOWED: METHOD_NOT_ALLOWED,
        status.HTTP_401_UNAUTHORIZED: UNAUTHENTICATED,
    }.get(exc.status_code, INVALID_REQUEST if exc.status_code < 500 else INTERNAL_ERROR)
    message = str(exc.detail) if exc.detail else "The request could not be served."
    if exc.status_code == status.HTTP_404_NOT_FOUND:
        message = f"No endpoint at {request.method} {request.url.path}; see /openapi.json."
    return error_response(exc.status_code, code, message, {}, headers=exc.headers)


async def _on_statement_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the schema let through but the database cannot store (too long, out of range, NUL).

    That is bad input, so it is the caller's 400 and never a 500; the log keeps the cause so
    the missing check can be added where the value is first accepted. Any other database
    failure is ours: it goes on to the 500 handler.
    """
    assert isinstance(exc, StatementError)
    if not isinstance(exc, DataError) and not isinstance(exc.orig, ValueError):
        return await _on_unexpected(request, exc)
    log.warning("database refused a value for %s %s: %s", request.method, request.url.path, exc)
    return error_response(
        status.HTTP_400_BAD_REQUEST,
        INVALID_REQUEST,
        "A value in the request does not fit what the service stores (for example a name or id that "
        "is too long). Shorten it and retry.",
        {},
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Our bug, not the caller's: log the traceback, answer a reference, leak nothing."""
    reference = uuid.uuid4().hex
    log.error("unhandled error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        INTERNAL_ERROR,
        "The server failed to handle this request. It has been logged; quote the reference when "
        "reporting it.",
        {"reference": reference},
    )


# --- the app ----------------------------------------------------------------------------


def create_app(*, engine: Engine | None = None, sender: Sender | None = None) -> FastAPI:
    """Build the ASGI app; `engine` and `sender` default to the configured database and Celery.

    A factory (not only a module global) so tests and benchmarks can run several apps with
    their own database or a sender that does not need a broker.
    """
    application = FastAPI(
        title="makima contract management",
        version="1.0.0",
        description=(
            "Contracts for AI-agent orchestration: guarded lifecycles, phase gates, completion "
            "detection. Every call except /healthz and the schema needs `Authorization: Bearer "
            '<token>`. Every error body is `{"error": {"code", "message", "details"}}`.'
        ),
    )
    application.state.wiring = _Wiring(engine=engine, sender=sender)
    application.include_router(router)

    @application.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness for load balancers: answers without touching the database or a token."""
        return {"status": "ok"}

    application.add_exception_handler(RequestValidationError, _on_validation_error)
    application.add_exception_handler(InvalidRequest, _on_invalid_request)
    application.add_exception_handler(ContractError, _on_contract_error)
    application.add_exception_handler(Unauthenticated, _on_unauthenticated)
    application.add_exception_handler(StarletteHTTPException, _on_http_exception)
    application.add_exception_handler(StatementError, _on_statement_error)
    application.add_exception_handler(Exception, _on_unexpected)
    return application


app = create_app()

__all__ = [
    "ERROR_STATUS",
    "ChangePhaseRequest",
    "ChangeStatusRequest",
    "CreateContractRequest",
    "ErrorBody",
    "InvalidRequest",
    "app",
    "create_app",
]
