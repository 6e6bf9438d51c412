"""Reads: one contract, a page of contracts, a phase's readiness, as callers see them.

Reads take no lock and change nothing. Lists are keyset-paginated on (created_at, id) so a
page never skips or repeats a contract while others are created; the cursor is opaque to
callers and refused with a clear error when it is not one this server issued.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.config import Settings
from app.contract_rows import get_contract
from app.domain.completion import check_phase_readiness
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.gate import load_gate_facts, phase_config_of, switches_for
from app.models import Contract


def phase_readiness_view(
    session: Session, caller: Caller, contract_id: uuid.UUID, settings: Settings
) -> dict[str, Any]:
    contract = get_contract(session, caller, contract_id)
    config = phase_config_of(contract)
    result = check_phase_readiness(config, load_gate_facts(session, contract))
    gate = config.get(contract.phase).gate
    return {
        "phase": contract.phase,
        "ready": result.ready,
        "readiness": result.readiness.value,
        "missing": list(result.missing),
        "autoAdvanceEnabled": bool(gate and gate.auto_advance and switches_for(contract, settings).on),
    }


def contract_json(contract: Contract) -> dict[str, Any]:
    def ts(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(contract.id),
        "ownerId": contract.owner_id,
        "name": contract.name,
        "contractType": contract.contract_type,
        "phaseConfig": contract.phase_config,
        "phase": contract.phase,
        "status": contract.status,
        "version": contract.version,
        "phaseGuard": contract.phase_guard,
        "autoCompleteEnabled": contract.auto_complete_enabled,
        "statusChangedAt": ts(contract.status_changed_at),
        "lastActivityAt": ts(contract.last_activity_at),
        "waitingFor": contract.waiting_for,
        "blockedReason": contract.blocked_reason,
        "failureReason": contract.failure_reason,
        "completionDetectedAt": ts(contract.completion_detected_at),
        "createdAt": ts(contract.created_at),
        "updatedAt": ts(contract.updated_at),
    }


@dataclass(frozen=True, slots=True)
class ContractFilter:
    statuses: tuple[Status, ...] = ()
    phase: str | None = None
    stale: bool = False
    stale_threshold: timedelta | None = None
    waiting: bool = False
    limit: int = 50
    cursor: str | None = None


def encode_cursor(contract: Contract) -> str:
    raw = f"{contract.created_at.isoformat()}|{contract.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, cid = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("cursor timestamp has no time zone")
        return created, uuid.UUID(cid)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "The cursor is not one this server issued; pass the 'nextCursor' of a previous page.",
            details={"field": "cursor"},
        ) from None


def list_contracts(
    session: Session, caller: Caller, flt: ContractFilter, now: datetime, settings: Settings
) -> tuple[list[Contract], str | None]:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat."""
    query = select(Contract)
    if not caller.is_admin:
        query = query.where(Contract.owner_id == caller.owner_id)
    if flt.statuses:
        query = query.where(Contract.status.in_([s.value for s in flt.statuses]))
    if flt.phase:
        query = query.where(Contract.phase == flt.phase)
    if flt.waiting:
        query = query.where(Contract.status == Status.WAITING_FOR_INPUT.value)
    if flt.stale:
        threshold = flt.stale_threshold or timedelta(minutes=settings.contracts.stale_threshold_minutes)
        query = query.where(
            Contract.last_activity_at < now - threshold,
            Contract.status.in_([s.value for s in Status.open()]),
        )
    if flt.cursor:
        created, cid = decode_cursor(flt.cursor)
        query = query.where(
            or_(
                Contract.created_at < created,
                and_(Contract.created_at == created, Contract.id < cid),
            )
        )
    query = query.order_by(Contract.created_at.desc(), Contract.id.desc()).limit(flt.limit + 1)
    rows = list(session.scalars(query))
    page = rows[: flt.limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > flt.limit and page else None
    return page, next_cursor


__all__ = [
    "ContractFilter",
    "contract_json",
    "decode_cursor",
    "encode_cursor",
    "list_contracts",
    "phase_readiness_view",
]
