"""The event log: every state change writes one row here in its own transaction.

Event `type` values are snake_case (`status_changed`, `phase_changed`, ...); payload keys are
camelCase like the rest of the JSON the service speaks.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.domain.records import EventType
from app.models import ContractEvent


def record_event(
    session: Session, contract_id: uuid.UUID, type_: EventType, payload: dict[str, Any], now: datetime
) -> ContractEvent:
    event = ContractEvent(
        contract_id=contract_id,
        type=type_.value,
        payload={"contractId": str(contract_id), **payload},
        created_at=now,
    )
    session.add(event)
    return event


def events_after(session: Session, contract_id: uuid.UUID, after: int, limit: int) -> list[ContractEvent]:
    return list(
        session.scalars(
            select(ContractEvent)
            .where(ContractEvent.contract_id == contract_id, ContractEvent.id > after)
            .order_by(ContractEvent.id)
            .limit(limit)
        )
    )


def event_json(event: ContractEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "contractId": str(event.contract_id),
        "type": event.type,
        "payload": event.payload,
        "createdAt": event.created_at.isoformat(),
    }


__all__ = ["event_json", "events_after", "record_event"]
