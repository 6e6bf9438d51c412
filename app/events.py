"""The event log: every state change writes one row here in its own transaction.

Event `type` values are snake_case (`status_changed`, `phase_changed`, ...); payload keys are
camelCase like the rest of the JSON the service speaks.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import schemas
from app.domain.records import EventType
from app.models import ContractEvent
from app.pending_writes import hold_event

# The bounds of a page of events (`GET .../events`, `ContractsAPI.events`): at most this many
# a page, after an id `contract_events.id` (a bigint) can hold.
MAX_EVENTS_PAGE: Final = 500
MAX_EVENT_ID: Final = 2**63 - 1


def record_event(
    session: Session, contract_id: uuid.UUID, type_: EventType, payload: dict[str, Any], now: datetime
) -> None:
    """Record a state change; the row is written with the transaction's other writes at commit.

    See `app.pending_writes`: held rows cost no round trip of their own.
    """
    hold_event(session, contract_id, type_.value, {"contractId": str(contract_id), **payload}, now)


def events_after(session: Session, contract_id: uuid.UUID, after: int, limit: int) -> list[ContractEvent]:
    return list(
        session.scalars(
            select(ContractEvent)
            .where(ContractEvent.contract_id == contract_id, ContractEvent.id > after)
            .order_by(ContractEvent.id)
            .limit(limit)
        )
    )


def event_view(event: ContractEvent) -> schemas.Event:
    """An event row as callers read it (the HTTP events page, the live monitor)."""
    return schemas.Event(
        id=event.id,
        contract_id=event.contract_id,
        type=event.type,
        payload=event.payload,
        created_at=event.created_at,
    )


__all__ = ["MAX_EVENTS_PAGE", "MAX_EVENT_ID", "event_view", "events_after", "record_event"]
