"""`/api/v1/contracts/batch`: batch operations (seed 4.3, plan 5.3), for admins only.

`POST` accepts an operation and answers 202 with the batch (its id and progress) while a
worker on the `batch` queue runs it; a dry run answers 200 at once with what would be
affected. `GET /batch/{batchId}` is the progress, then the seed's result; `GET /batch` lists
recent batches. The static `/batch` never reaches the contract handler: contract ids match
UUIDs only, and this router is included ahead of it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import Field

from app.api import ContractsAPI
from app.batch import BatchList, BatchView, require_admin
from app.domain.lifecycle import Status
from app.domain.maintenance import DEFAULT_ARCHIVE_STATUSES, MAX_HOURS
from app.http.bodies import MAX_TEXT, SafeStr, _Body
from app.http.deps import contracts_api
from app.http.errors import API_PREFIX, error_response, error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode

E = ErrorCode


def admin_api(api: Annotated[ContractsAPI, Depends(contracts_api)]) -> ContractsAPI:
    """The caller's API, if the caller is an admin; 403 FORBIDDEN before anything is parsed."""
    require_admin(api.caller)
    return api


AdminApi = Annotated[ContractsAPI, Depends(admin_api)]

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix=API_PREFIX,
    tags=["batch operations"],
    responses=error_responses(E.UNAUTHENTICATED, E.FORBIDDEN, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)

Hours = Annotated[float, Field(gt=0, le=MAX_HOURS, description="Contracts older than this many hours.")]


class _Batch(_Body):
    dry_run: bool = Field(False, description="Answer at once with what would be affected; change nothing.")


class ArchiveOld(_Batch):
    """Archive completed/failed contracts whose status changed more than `olderThanHours` ago."""

    operation: Literal["archive_old"]
    older_than_hours: Hours
    status_filter: list[Annotated[Status, Field(strict=False)]] = Field(
        default_factory=lambda: list(DEFAULT_ARCHIVE_STATUSES),
        min_length=1,
        max_length=len(Status),
        description="Statuses to archive (default completed, failed); others are reported as errors.",
    )


class PauseAll(_Batch):
    """Pause every active contract, with the reason."""

    operation: Literal["pause_all"]
    reason: SafeStr = Field(min_length=1, max_length=MAX_TEXT)


class ResumeAll(_Batch):
    """Resume every paused contract."""

    operation: Literal["resume_all"]


class CleanupArchived(_Batch):
    """Delete archived contracts archived more than `olderThanHours` ago (each one audited)."""

    operation: Literal["cleanup_archived"]
    older_than_hours: Hours


class RestartStale(_Batch):
    """Ask the daemons to restart the supervisors of contracts silent for `staleThresholdMinutes`."""

    operation: Literal["restart_stale"]
    stale_threshold_minutes: float = Field(gt=0, le=MAX_HOURS * 60)


BatchRequest = Annotated[
    ArchiveOld | PauseAll | ResumeAll | CleanupArchived | RestartStale, Field(discriminator="operation")
]


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        status.HTTP_200_OK: {"model": BatchView, "description": "A dry run: what would be affected."},
        **error_responses(E.VALIDATION_FAILED, bad_json=True),
    },
)
def start_batch(
    body: BatchRequest,
    api: AdminApi,
    response: Response,
    idempotency_key: Annotated[
        SafeStr | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Repeat a request safely: the same key answers the batch it started.",
        ),
    ] = None,
) -> BatchView:
    """Start a batch operation (admin only). 202 with the batch id and progress; a dry run
    answers 200 at once with `affectedIds` and `errors` as the run would have them."""
    parameters = body.model_dump(mode="json", by_alias=True, exclude={"operation", "dry_run"})
    view, created = api.start_batch(
        body.operation, parameters, dry_run=body.dry_run, idempotency_key=idempotency_key
    )
    if view.dry_run:
        response.status_code = status.HTTP_200_OK
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get("/batch")
def list_batches(
    api: AdminApi,
    limit: Annotated[int, Query(ge=1, le=100, description="How many, newest first.")] = 20,
) -> BatchList:
    """Recent batch operations, newest first (without their id lists)."""
    return api.list_batches(limit)


@router.get("/batch/{batchId:uuid}", response_model=BatchView, responses=error_responses(E.NOT_FOUND))
def batch_status(
    api: AdminApi,
    batch_id: Annotated[uuid.UUID, Path(alias="batchId", description="The id POST answered.")],
) -> BatchView | JSONResponse:
    """Progress (`progress.done` of `progress.total`) while the batch runs; once `completed`,
    the result: `operation`, `affectedCount`, `affectedIds`, `errors` (per contract)."""
    view = api.batch_status(batch_id)
    if view is None:
        return error_response(
            status.HTTP_404_NOT_FOUND,
            E.NOT_FOUND,
            f"No batch operation {batch_id}: it was never started here, or its record was removed. "
            "List recent ones with GET /api/v1/contracts/batch.",
            {"batchId": str(batch_id)},
        )
    return view


__all__ = ["router"]
