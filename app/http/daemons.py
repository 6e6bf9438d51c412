"""`GET /api/v1/daemons`: the agent daemons seen in heartbeats, so "active daemons" is a fact."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from app.domain.errors import FeatureDisabled
from app.http.deps import Api
from app.http.errors import error_response, error_responses
from app.schemas import ErrorCode
from app.supervisors import DaemonList

E = ErrorCode

router = APIRouter(
    prefix="/api/v1/daemons",
    tags=["supervisors"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


@router.get("", response_model=DaemonList)
def list_daemons(api: Api) -> Any:
    """Daemons that sent heartbeats (with a `daemonId`) for your contracts, most recently heard
    first: their host, when last heard, whether alive (heard within the heartbeat timeout),
    and the supervisors they run."""
    try:
        return api.daemons()
    except FeatureDisabled as exc:
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, exc.code, exc.message, exc.details)


__all__ = ["router"]
