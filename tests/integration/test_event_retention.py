"""Contract events are kept `[monitor] event_retention_days`, then deleted by a beat sweep."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from app.api import ContractsAPI
from app.db import unit_of_work
from app.models import ContractEvent, utcnow

pytestmark = pytest.mark.integration


def test_events_past_the_retention_are_deleted_and_recent_ones_kept(make_caller) -> None:
    from workers.sweeps import prune_events

    _, caller = make_caller()
    cid = uuid.UUID(
        str(ContractsAPI(caller=caller, sender=lambda *_: "x").create_contract("old", "simple").id)
    )
    with unit_of_work() as uow:
        old_id = uow.session.execute(
            insert(ContractEvent)
            .values(
                contract_id=cid, type="status_changed", payload={}, created_at=utcnow() - timedelta(days=30)
            )
            .returning(ContractEvent.id)
        ).scalar_one()
    assert prune_events.run() >= 1
    with unit_of_work() as uow:
        left = set(uow.session.scalars(select(ContractEvent.id).where(ContractEvent.contract_id == cid)))
    assert old_id not in left
    assert left, "the contract's recent events (its creation) are kept"
