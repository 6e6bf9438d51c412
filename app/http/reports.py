"""Daemon-facing reports under `/api/v1/contracts/{id}`: queued, answered 202 at once.

A daemon must never block on this service, so these judge only what can be judged now and
answer at once: a contract the caller cannot see is CONTRACT_NOT_FOUND (404); a closed one
(completed, failed, archived) is VALIDATION_FAILED (400) naming its status (except a
worktree removed, which follows completion); a task id of
another contract is VALIDATION_FAILED. Otherwise the report is recorded as pending, queued,
and answered 202 with its `messageId`. A worker applies it; what became of it is
`GET /api/v1/messages/{messageId}`, and resending the same messageId has no further effect
once it is applied.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from app.http.bodies import (
    TaskCompletedRequest,
    TaskStartedRequest,
    WorktreeCreatedRequest,
    WorktreeRemovedRequest,
)
from app.http.deps import Api, ContractId, TaskId
from app.http.errors import API_PREFIX, error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import Accepted, ErrorCode

E = ErrorCode
CONTRACT = "/{id:uuid}"

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix=API_PREFIX,
    tags=["daemon reports"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)
_REPORT_ERRORS = error_responses(E.CONTRACT_NOT_FOUND, E.VALIDATION_FAILED, bad_json=True)


@router.post(
    CONTRACT + "/tasks/{taskId}/started", status_code=status.HTTP_202_ACCEPTED, responses=_REPORT_ERRORS
)
def task_started(contract_id: ContractId, task_id: TaskId, body: TaskStartedRequest, api: Api) -> Accepted:
    """A daemon spawned a task (a supervisor starting makes a `created` contract `active`)."""
    return Accepted(
        message_id=api.report_task_started(
            contract_id,
            task_id,
            body.task_name,
            is_supervisor=body.is_supervisor,
            message_id=body.message_id,
        )
    )


@router.post(
    CONTRACT + "/tasks/{taskId}/completed", status_code=status.HTTP_202_ACCEPTED, responses=_REPORT_ERRORS
)
def task_completed(
    contract_id: ContractId, task_id: TaskId, body: TaskCompletedRequest, api: Api
) -> Accepted:
    """A task finished; its outcome counts towards the phase's gate. A task never reported
    started is recorded now (a daemon may miss its `started`), unless the contract is closed."""
    return Accepted(
        message_id=api.report_task_completed(
            contract_id, task_id, body.task_name, body.success, message_id=body.message_id
        )
    )


@router.post(CONTRACT + "/worktrees", status_code=status.HTTP_202_ACCEPTED, responses=_REPORT_ERRORS)
def worktree_created(contract_id: ContractId, body: WorktreeCreatedRequest, api: Api) -> Accepted:
    """A daemon created a worktree; when the contract closes, the daemon named in `daemonId` is
    asked (on its own queue) to remove it."""
    return Accepted(
        message_id=api.report_worktree_created(
            contract_id, body.path, message_id=body.message_id, daemon_id=body.daemon_id
        )
    )


@router.post(CONTRACT + "/worktrees/removed", status_code=status.HTTP_202_ACCEPTED, responses=_REPORT_ERRORS)
def worktree_removed(contract_id: ContractId, body: WorktreeRemovedRequest, api: Api) -> Accepted:
    """A daemon removed a worktree: it is marked removed and no more is asked about it. Accepted
    on closed contracts too (daemons remove worktrees after completion); a path never reported
    created is recorded as removed all the same."""
    return Accepted(
        message_id=api.report_worktree_removed(
            contract_id, body.path, message_id=body.message_id, daemon_id=body.daemon_id
        )
    )


__all__ = ["router"]
