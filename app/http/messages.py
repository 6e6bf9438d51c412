"""`/api/v1/messages/{messageId}`: what became of a report the caller sent, and resending it.

Reports are answered 202 before a worker applies them, and the broker can lose a message a
worker fetched just before it died; this is how a sender finds out. A sender that sees
`pending` long after acceptance, or `unknown` for an id it was given, resends.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.domain.message_ids import MESSAGE_ID_RULE
from app.http.bodies import UUIDText
from app.http.deps import Api
from app.http.errors import error_responses
from app.http.routing import ParsedJSONRoute
from app.message_outcomes import MessageStatus
from app.schemas import ErrorCode

E = ErrorCode

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix="/api/v1/messages",
    tags=["messages"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.VALIDATION_FAILED, E.INTERNAL_ERROR),
)

# Plain text, not `SafeStr` with bounds: an id the rule refuses (a space, a NUL, 201 characters)
# is judged by `app.domain.message_ids`, the report endpoints' own rule, and answered 400
# VALIDATION_FAILED naming it, as a report sent with that id is.
MessageId = Annotated[str, Path(alias="messageId", description=f"The report's messageId: {MESSAGE_ID_RULE}.")]

# A message id is unique per sender, not across senders: an admin names whose it means.
PrincipalId = Annotated[
    UUIDText | None,
    Query(
        alias="principalId",
        description="The sender (admin): needed when several principals used this messageId.",
    ),
]


@router.get("/{messageId}")
def message_status(message_id: MessageId, api: Api, principal_id: PrincipalId = None) -> MessageStatus:
    """`pending` (accepted, not yet applied), `applied` (with its event ids), `refused` (the
    error code and message) or `unknown`. Only the caller's own messages are known (an admin
    sees all); another principal's id answers `unknown`, exactly like a missing one. An
    admin's lookup of an id several principals sent is refused (400, `details.principalIds`)
    until `principalId` says whose. An id no report could carry (outside the messageId rule)
    is 400 VALIDATION_FAILED naming the rule."""
    return api.message_status(message_id, principal_id)


@router.post("/{messageId}/resend")
def resend_message(message_id: MessageId, api: Api, principal_id: PrincipalId = None) -> MessageStatus:
    """Send a `pending` or `refused` message again with the same id (`resent: true`); an
    `applied` one is not sent again, an `unknown` one cannot be (report it afresh). Safe to
    repeat: a message is applied once however often it arrives."""
    return api.resend(message_id, principal_id)


__all__ = ["router"]
