"""`GET /api/v1/contracts/dashboard` (seed 4.4): counts, stale and waiting contracts, recent
events and resource usage of the caller's contracts (an admin's: every owner's).

A static path beside `/{id:uuid}`: contract ids only match UUIDs, so `dashboard` is never
taken for one. With `[feature_flags] monitoring_dashboard` off it answers 503 FEATURE_DISABLED.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.auth import Caller
from app.config import get_settings
from app.dashboard import build_dashboard
from app.db import unit_of_work
from app.http.deps import authenticated_caller, wiring
from app.http.errors import API_PREFIX, error_responses
from app.http.monitor import require_monitoring
from app.http.routing import ParsedJSONRoute
from app.models import utcnow
from app.schemas import Dashboard, ErrorCode

E = ErrorCode

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix=API_PREFIX,
    tags=["monitor"],
    responses=error_responses(E.UNAUTHENTICATED, E.FEATURE_DISABLED, E.INTERNAL_ERROR, unknown_query=True),
)


@router.get("/dashboard", dependencies=[Depends(require_monitoring)])
def get_dashboard(request: Request, caller: Annotated[Caller, Depends(authenticated_caller)]) -> Dashboard:
    """Your contracts at a glance: by status, active ones by phase, the stale ones (the list's
    `stale` rule), those waiting for you and for what, the newest events, and live supervisors,
    running and pending tasks, daemons and unreleased worktrees. A few aggregate queries,
    whatever the number of contracts."""
    settings = get_settings()
    with unit_of_work(engine=wiring(request).engine, settings=settings) as uow:
        return build_dashboard(uow.session, caller, utcnow(), settings)


__all__ = ["router"]
