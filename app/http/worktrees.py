"""Worktrees: a contract's, by state, and the cleanup of orphans (admins).

- `GET /api/v1/contracts/{id}/worktrees`: the worktrees daemons reported for the contract
  (open, released: its daemon was asked to remove it, removed) and the counts by state;
  owner-scoped like every read. Reporting them is a daemon report (`app.http.reports`).
- `POST /api/v1/worktrees/cleanup?dryRun=`: ask the daemons of orphaned worktrees (closed
  contracts, not reported removed) to remove them, at most once per
  `[worktrees] cleanup_interval_seconds` each, and answer what was asked of which daemon. The
  same as the `cleanup-worktrees` beat sweep, for an operator who wants it now; safe to repeat
  (a worktree asked within the interval is not asked again) and to run beside the sweep.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.api import ContractsAPI
from app.batch import require_admin
from app.http.deps import Api, ContractId
from app.http.errors import API_PREFIX, error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode
from app.worktrees import MAX_CLEANUP, WorktreeCleanup, WorktreeList

E = ErrorCode


def cleanup_api(api: Api) -> ContractsAPI:
    """The caller's API, if the caller is an admin; 403 FORBIDDEN before the query is read."""
    require_admin(api.caller, "clean up worktrees")
    return api


router = APIRouter(
    route_class=ParsedJSONRoute,
    tags=["worktrees"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


@router.get(
    API_PREFIX + "/{id:uuid}/worktrees",
    response_model=WorktreeList,
    responses=error_responses(E.CONTRACT_NOT_FOUND),
)
def contract_worktrees(contract_id: ContractId, api: Api) -> WorktreeList:
    """The contract's worktrees, oldest first, each with the daemon holding it and its state
    (`open`; `released`: its daemon was asked to remove it, `releasedAt` is when it was last
    asked; `removed`: its daemon reported it removed), and the counts by state."""
    return api.worktrees(contract_id)


@router.post(
    "/api/v1/worktrees/cleanup",
    response_model=WorktreeCleanup,
    responses=error_responses(E.FORBIDDEN),
)
def cleanup_worktrees(
    api: Annotated[ContractsAPI, Depends(cleanup_api)],
    dry_run: Annotated[
        bool,
        Query(alias="dryRun", description="Answer what would be asked, and ask nothing."),
    ] = False,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_CLEANUP,
            description="At most this many worktrees per call (`more` says if any are left).",
        ),
    ] = 1000,
) -> WorktreeCleanup:
    """Ask the daemons of orphaned worktrees (of completed, failed or archived contracts, not
    reported removed) to remove them: a `remove_worktree` command on each one's daemon queue,
    at most once per `[worktrees] cleanup_interval_seconds` per worktree. Answers what was asked
    (counts per daemon and the list). Admins only."""
    return api.cleanup_worktrees(dry_run=dry_run, limit=limit)


__all__ = ["router"]
