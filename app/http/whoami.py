"""`GET /api/v1/whoami`: the principal the bearer token stands for.

A page signed in with a pasted token (the dashboard) and a daemon checking its configuration
both want to show who they act as, and which owner's contracts they will see, without reading
anything else.
"""

from __future__ import annotations

from fastapi import APIRouter

from app.http.deps import Api
from app.http.errors import error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode, WhoAmI

router = APIRouter(
    route_class=ParsedJSONRoute,
    tags=["tokens"],
    responses=error_responses(ErrorCode.UNAUTHENTICATED, ErrorCode.INTERNAL_ERROR, unknown_query=True),
)


@router.get("/api/v1/whoami")
def whoami(api: Api) -> WhoAmI:
    """Your principal: its id, the owner whose contracts you see (an admin sees every owner's)
    and its role. Any valid token may ask; a revoked or expired one is 401 as everywhere."""
    return api.whoami()


__all__ = ["router"]
