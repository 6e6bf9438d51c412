"""`/api/v1/contracts`: create, read, list and steer contracts.

Every handler is one call on the caller's `ContractsAPI`: the rules live in the domain, so
they hold the same way for the CLI, a daemon and this front. Contract ids are matched as
UUIDs in the path (`{id:uuid}`), so static resources beside them (`/dashboard`, `/batch`,
`/monitor`) are never taken for an id, whichever router is included first.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.domain.lifecycle import Status
from app.events import MAX_EVENT_ID, MAX_EVENTS_PAGE
from app.http.bodies import (
    AutoCompleteRequest,
    ChangePhaseRequest,
    ChangeStatusRequest,
    CompleteDeliverableRequest,
    CreateContractRequest,
    SafeStr,
)
from app.http.deps import Api, ContractId, DeliverableId, parse_statuses, parse_threshold
from app.http.errors import API_PREFIX, error_responses
from app.http.problems import InvalidRequest
from app.http.query_params import EMPTY_MEANS_DEFAULT
from app.http.routing import ParsedJSONRoute
from app.schemas import (
    ChangeStatusResponse,
    CompletionCheck,
    Contract,
    ContractPage,
    DeliverableCompletion,
    ErrorCode,
    EventPage,
    PhaseReadiness,
)
from app.views import ContractFilter

E = ErrorCode
CONTRACT = "/{id:uuid}"

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix=API_PREFIX,
    tags=["contracts"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(E.VALIDATION_FAILED, bad_json=True),
)
def create_contract(body: CreateContractRequest, api: Api) -> Contract:
    """Create a contract in status `created`, owned by your owner; it becomes `active` when its
    supervisor starts."""
    return api.create_contract(
        body.name,
        body.contract_type,
        phase_guard=body.phase_guard,
        auto_complete_enabled=body.auto_complete_enabled,
        phase_config=body.phase_config,
    )


@router.get("", responses=error_responses(E.VALIDATION_FAILED))
def list_contracts(
    api: Api,
    status_: Annotated[
        str | None,
        Query(
            alias="status",
            description=f"Comma-separated statuses ({', '.join(s.value for s in Status)}).",
        ),
    ] = None,
    phase: Annotated[
        SafeStr | None, Query(max_length=100, description="Only contracts in this phase.")
    ] = None,
    stale: Annotated[
        bool | None,
        Query(description="Only open contracts with no activity for `threshold` (default 30m)."),
    ] = None,
    threshold: Annotated[
        str | None,
        Query(max_length=20, description="Stale threshold like 45s, 30m, 2h, 1d; implies stale=true."),
    ] = None,
    waiting: Annotated[bool, Query(description="Only contracts waiting for input.")] = False,
    supervised: Annotated[
        bool,
        Query(
            description="Only contracts a supervisor has sent a heartbeat for: those whose "
            "`.../supervisor/status` answers 200 rather than SUPERVISOR_NOT_FOUND."
        ),
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500, description="Contracts per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=500, description="`nextCursor` of the previous page."),
        # `cursor=` is the first page: what a client passing a null `nextCursor` on sends.
        EMPTY_MEANS_DEFAULT,
    ] = None,
) -> ContractPage:
    """Your contracts (an admin's: everyone's), newest first, one page at a time.

    Follow `nextCursor` until it is null: pages never skip or repeat a contract while others
    are created. Each contract carries its current phase's deliverables and task counts.
    """
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
        supervised=supervised,
        limit=limit,
        cursor=cursor,
    )
    return api.list_contracts(flt)


@router.get(CONTRACT, responses=error_responses(E.CONTRACT_NOT_FOUND))
def get_contract(contract_id: ContractId, api: Api) -> Contract:
    """One contract with its current phase's progress; another owner's answers 404 exactly like
    a missing one."""
    return api.get_contract(contract_id)


@router.post(
    CONTRACT + "/status",
    responses=error_responses(
        E.INVALID_TRANSITION,
        E.VALIDATION_FAILED,
        E.CONTRACT_NOT_FOUND,
        E.FORBIDDEN,
        E.PHASE_GUARD_REQUIRED,
        bad_json=True,
    ),
)
def change_status(contract_id: ContractId, body: ChangeStatusRequest, api: Api) -> ChangeStatusResponse:
    """Move the contract to another status.

    Only moves in the status table are allowed; any other answers 400 INVALID_TRANSITION with
    the statuses it may move to. `failed` needs a `reason`, `blocked` a `blocker`. Settling
    what a person was asked (confirming or rejecting a completion, leaving a wait) is a
    person's: a supervisor gets 403 FORBIDDEN, or 409 PHASE_GUARD_REQUIRED for a phase
    confirmation.
    """
    return api.change_status(
        contract_id,
        body.target_status,
        reason=body.reason,
        blocker=body.blocker,
        waiting_for=body.waiting_for,
    )


@router.post(
    CONTRACT + "/phase",
    responses=error_responses(
        E.VALIDATION_FAILED,
        E.CONTRACT_NOT_FOUND,
        E.VERSION_CONFLICT,
        E.PHASE_GUARD_REQUIRED,
        bad_json=True,
    ),
)
def change_phase(contract_id: ContractId, body: ChangePhaseRequest, api: Api) -> Contract:
    """Move the contract to another phase; answers the contract with its version bumped.

    With `expectedVersion`, a contract changed since you read it answers 409 VERSION_CONFLICT.
    An unmet gate answers 400 unless `force`; under phase guard the move needs `confirmed`
    (409 PHASE_GUARD_REQUIRED lists the deliverables to review).
    """
    return api.change_phase(
        contract_id,
        body.phase,
        expected_version=body.expected_version,
        confirmed=body.confirmed,
        force=body.force,
    )


@router.post(
    CONTRACT + "/deliverables/{deliverableId}/complete",
    responses=error_responses(
        E.INVALID_DELIVERABLE, E.VALIDATION_FAILED, E.CONTRACT_NOT_FOUND, bad_json=True
    ),
)
def complete_deliverable(
    contract_id: ContractId,
    deliverable_id: DeliverableId,
    api: Api,
    body: CompleteDeliverableRequest | None = None,
) -> DeliverableCompletion:
    """Mark a deliverable of the current (or the named) phase complete; marking it twice is
    harmless. An id the phase does not define answers 400 with the valid ids."""
    return api.complete_deliverable(contract_id, deliverable_id, phase=body.phase if body else None)


@router.get(CONTRACT + "/phase-readiness", responses=error_responses(E.CONTRACT_NOT_FOUND))
def phase_readiness(contract_id: ContractId, api: Api) -> PhaseReadiness:
    """Is the current phase's gate met, what is missing, and would it advance by itself."""
    return api.phase_readiness(contract_id)


@router.get(CONTRACT + "/events", responses=error_responses(E.CONTRACT_NOT_FOUND))
def contract_events(
    contract_id: ContractId,
    api: Api,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE, description="Events per page.")] = MAX_EVENTS_PAGE,
) -> EventPage:
    """The contract's history in order; pass the last id you saw as `after` to catch up."""
    return api.events(contract_id, after=after, limit=limit)


@router.post(CONTRACT + "/check-completion", responses=error_responses(E.CONTRACT_NOT_FOUND))
def check_completion(contract_id: ContractId, api: Api) -> CompletionCheck:
    """Judge the gate now (ready, wouldComplete, missing); when it is met, completion starts."""
    return api.check_completion(contract_id)


@router.put(
    CONTRACT + "/auto-complete",
    responses=error_responses(E.VALIDATION_FAILED, E.CONTRACT_NOT_FOUND, bad_json=True),
)
def set_auto_complete(contract_id: ContractId, body: AutoCompleteRequest, api: Api) -> Contract:
    """Switch this contract's automatic advance and completion on or off; answers the contract."""
    return api.set_auto_complete(contract_id, body.enabled)


__all__ = ["router"]
