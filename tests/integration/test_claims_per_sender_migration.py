"""Migration 0017 names each claim's sender, on both dialects.

A claim (`processed_messages`) was keyed by contract and message id; it becomes keyed by
contract, sender and message id. The sender of an existing claim is the one sender whose
receipt (`message_outcomes`) for that contract and id is `applied`; a claim no receipt names,
or one that two applied receipts name (a second sender's report taken for a repeat and marked
applied), keeps the nil principal: claimed before claims named a sender, and still a claim for
every sender of its id. A pending receipt is no claimant: its report is still to be applied,
and after the upgrade it is. Downgraded, one claim per contract and id stays. PostgreSQL runs
on a scratch database of its own (migrated from 0016), SQLite on a file of the test's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, String, Uuid, column, insert, select, table

from app import agent_reports
from app.auth import Caller, Role, authenticate, create_token
from app.db import downgrade, get_engine, migrate, unit_of_work
from app.message_outcomes import Sent, applied_at_commit
from app.models import CLAIMED_BEFORE_SENDERS, Contract, ContractEvent, MessageOutcome, UTCDateTime, utcnow
from app.queues import TaskName
from tests.integration.helpers import database_at, no_send

pytestmark = pytest.mark.integration

# The claims table as 0016 left it (the model is 0017's).
CLAIMS_AT_0016 = table(
    "processed_messages",
    column("contract_id", Uuid()),
    column("message_id", String()),
    column("kind", String()),
    column("processed_at", UTCDateTime()),
)
TASK_STARTED = TaskName.TASK_STARTED.value


@pytest.fixture(params=["postgresql", "sqlite"])
def database_at_0016(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    with database_at("0016", request.param, tmp_path) as url:
        yield url


def claims(engine: Engine) -> set[tuple[uuid.UUID, uuid.UUID, str]]:
    """Every claim as (contract, sender, message id)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                column("contract_id", Uuid()), column("principal_id", Uuid()), column("message_id", String())
            ).select_from(table("processed_messages"))
        )
        return {(c, p, m) for c, p, m in rows}


def claim_pairs(engine: Engine) -> list[tuple[uuid.UUID, str]]:
    with engine.connect() as connection:
        rows = connection.execute(select(CLAIMS_AT_0016.c.contract_id, CLAIMS_AT_0016.c.message_id))
        return sorted((c, m) for c, m in rows)


def test_claims_take_the_sender_of_their_one_applied_receipt_and_the_rest_claim_for_every_sender(
    database_at_0016: str,
) -> None:
    engine = get_engine(database_at_0016)
    senders: list[Caller] = []
    for _ in range(2):
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "owner", Role.SUPERVISOR)
        with unit_of_work(engine=engine) as uow:
            senders.append(authenticate(uow.session, token))
    first, second = senders
    here, elsewhere = (
        Contract(owner_id="owner", name=name, contract_type="simple", phase="plan", status="active")
        for name in ("claims", "another contract")
    )
    now = utcnow()
    with unit_of_work(engine=engine) as uow:
        uow.session.add_all([here, elsewhere])
        uow.session.flush()
        for message_id in ("one sender", "no receipt", "two applied", "second queued", "receipt elsewhere"):
            uow.session.execute(
                insert(CLAIMS_AT_0016).values(
                    contract_id=here.id, message_id=message_id, kind="task_started", processed_at=now
                )
            )
        for sender, message_id, contract, status in (
            (first, "one sender", here, "applied"),
            (first, "two applied", here, "applied"),
            (second, "two applied", here, "applied"),  # taken for a repeat of the first's, marked applied
            (first, "second queued", here, "applied"),
            (second, "second queued", here, "pending"),  # queued before acceptance refused it
            (first, "receipt elsewhere", elsewhere, "applied"),
        ):
            uow.session.add(
                MessageOutcome(
                    principal_id=sender.principal_id, message_id=message_id, contract_id=contract.id,
                    task=TASK_STARTED, status=status, accepted_at=now, updated_at=now,
                )
            )  # fmt: skip

    migrate(database_at_0016)

    nil = CLAIMED_BEFORE_SENDERS
    assert claims(engine) == {
        (here.id, first.principal_id, "one sender"),
        (here.id, nil, "no receipt"),
        (here.id, nil, "two applied"),
        (here.id, first.principal_id, "second queued"),
        (here.id, nil, "receipt elsewhere"),
    }

    def started(sender: Caller, message_id: str) -> bool:
        """Whether the sender's task-started report under `message_id` is applied now, made as
        a worker makes it: its receipt says applied either way (a repeat is a delivered report)."""
        task_id = uuid.uuid4()
        with unit_of_work(no_send, engine=engine) as uow:
            applied_at_commit(uow.session, Sent(sender.principal_id, message_id, here.id, TASK_STARTED))
            agent_reports.record_task_started(
                uow, sender, here.id, task_id=task_id, task_name=message_id, is_supervisor=False,
                message_id=message_id, now=utcnow(),
            )  # fmt: skip
        with unit_of_work(engine=engine) as uow:
            spawned = uow.session.scalars(
                select(ContractEvent.payload).where(
                    ContractEvent.contract_id == here.id, ContractEvent.type == "task_spawned"
                )
            )
            return str(task_id) in [p["taskId"] for p in spawned]

    # The queued report of the second sender is applied; the first's, redelivered, is not.
    assert started(second, "second queued")
    assert not started(first, "second queued")
    # A claim with its sender stops that sender only.
    assert not started(first, "one sender")
    assert started(second, "one sender")
    # A claim no one can name stops every sender of its id, as it did before.
    for message_id in ("no receipt", "two applied", "receipt elsewhere"):
        assert not started(first, message_id)
        assert not started(second, message_id)

    # Downgraded, one claim per contract and id stays, for every sender of it. Upgraded again,
    # the receipts are read anew: both senders' say applied on this contract now, but for the
    # id whose first receipt is another contract's (a sender's id names one report).
    message_ids = ("one sender", "no receipt", "two applied", "second queued", "receipt elsewhere")
    downgrade(database_at_0016, "0016")
    assert claim_pairs(engine) == sorted((here.id, m) for m in message_ids)
    migrate(database_at_0016)
    assert claims(engine) == {
        *((here.id, nil, m) for m in message_ids[:-1]),
        (here.id, second.principal_id, "receipt elsewhere"),
    }
