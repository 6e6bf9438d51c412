"""`/api/v1/audit/deletions`: every contract retention or a batch deleted, for admins.

The rows outlive the contracts they describe (`app.deletion_audit`).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.deletion_audit import MAX_PAGE, DeletionPage
from app.http.batch import AdminApi
from app.http.errors import error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode

E = ErrorCode

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix="/api/v1/audit",
    tags=["audit"],
    responses=error_responses(E.UNAUTHENTICATED, E.FORBIDDEN, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


@router.get("/deletions")
def deletions(
    api: AdminApi,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**62, description="The `nextCursor` of the previous page.")
    ] = None,
    batch_id: Annotated[uuid.UUID | None, Query(alias="batchId", description="Only this batch's.")] = None,
) -> DeletionPage:
    """Deleted contracts, newest first: id, name, owner, type, when archived, when deleted, by
    whom (an admin's principal, or none for the retention sweep), and which batch or sweep."""
    return api.deletions(limit=limit, before=cursor, batch_id=batch_id)


__all__ = ["router"]
