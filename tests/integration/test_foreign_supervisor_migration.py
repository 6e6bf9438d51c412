"""Migration 0014 removes supervisor rows that took another contract's task id, on both dialects.

Such a row (made by a heartbeat before the fronts and the worker refused another contract's
task id) held the id for the wrong contract, so the contract whose task it is could not start
its supervisor under it. The migration removes it and the heartbeats stored under it, keeps
every other row, says what it removed, and its downgrade changes nothing. PostgreSQL runs on a
scratch database of its own (it is migrated from 0013), SQLite on a file of the test's.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app import heartbeats
from app.auth import Role, authenticate, create_token
from app.db import downgrade, get_engine, migrate, unit_of_work
from app.heartbeat_messages import message_of
from app.heartbeat_outcomes import FOREIGN_TASK
from app.models import Contract, ContractTask, Supervisor, SupervisorHeartbeat, utcnow
from tests.integration.helpers import database_at

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def database_at_0013(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    with database_at("0013", request.param, tmp_path) as url:
        yield url


def heartbeat(contract_id: uuid.UUID, task_id: uuid.UUID, **extra: Any) -> dict[str, Any]:
    return {
        "taskId": str(task_id),
        "contractId": str(contract_id),
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
        **extra,
    }


def test_supervisor_rows_holding_another_contracts_task_go_with_their_heartbeats_and_the_rest_stay(
    database_at_0013: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = get_engine(database_at_0013)
    now = utcnow()
    with unit_of_work(engine=engine) as uow:
        token = create_token(uow.session, "owner", Role.SUPERVISOR)
    with unit_of_work(engine=engine) as uow:
        principal = authenticate(uow.session, token).principal_id
    wrong, owner_of_task, kept = (
        Contract(owner_id="owner", name=name, contract_type="simple", phase="plan", status="active")
        for name in ("took the id", "reported the task", "its own supervisors")
    )
    task, own_task, plain = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with unit_of_work(engine=engine) as uow:
        uow.session.add_all([wrong, owner_of_task, kept])
        uow.session.flush()
        uow.session.add_all(
            [
                # `task` was reported started on owner_of_task; wrong's heartbeat took it (the bad row).
                ContractTask(
                    id=task, contract_id=owner_of_task.id, name="build", status="running", phase="plan"
                ),
                # kept's supervisor reported started on kept itself, and one never reported: both fine.
                ContractTask(
                    id=own_task,
                    contract_id=kept.id,
                    name="sup",
                    status="running",
                    phase="plan",
                    is_supervisor=True,
                ),
            ]
        )
        for contract_id, task_id in ((wrong.id, task), (kept.id, own_task), (kept.id, plain)):
            uow.session.add(
                Supervisor(
                    task_id=task_id, contract_id=contract_id, incarnation=1, version=1, state="working",
                    phase="plan", current_activity="", progress=0, pending_task_ids=[], last_received_at=now,
                    alive=True,
                )
            )  # fmt: skip
            uow.session.add(
                SupervisorHeartbeat(
                    contract_id=contract_id, id=uuid.uuid4(), received_day=now.date(), received_at=now,
                    task_id=task_id, state="working", phase="plan", current_activity="", progress=0,
                    pending_task_ids=[], sent_at=now, fenced=False,
                )
            )  # fmt: skip
    owner_ids = (wrong.id, owner_of_task.id, kept.id)

    # Before: the task's own contract is locked out of its id.
    locked = heartbeats.ingest(message_of({principal: [heartbeat(owner_of_task.id, task)]}), engine=engine)
    assert [(r.field, r.problem) for r in locked.refused] == [("taskId", FOREIGN_TASK)]

    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        migrate(database_at_0013)
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("0014:")]
    assert removed == [
        f"0014: removed 1 supervisor row(s) holding another contract's task id, with 1 stored heartbeat(s): "
        f"contract {wrong.id} task {task}"
    ]

    def remaining() -> tuple[set[tuple[uuid.UUID, uuid.UUID]], set[tuple[uuid.UUID, uuid.UUID]]]:
        with unit_of_work(engine=engine) as uow:
            rows = uow.session.execute(select(Supervisor.contract_id, Supervisor.task_id)).all()
            stored = uow.session.execute(
                select(SupervisorHeartbeat.contract_id, SupervisorHeartbeat.task_id).where(
                    SupervisorHeartbeat.contract_id.in_(owner_ids)
                )
            ).all()
            return {(c, t) for c, t in rows}, {(c, t) for c, t in stored}

    good = {(kept.id, own_task), (kept.id, plain)}
    assert remaining() == (good, good)

    # After: the contract whose task it is starts its supervisor under the id.
    later = heartbeat(owner_of_task.id, task, timestamp=(utcnow() + timedelta(seconds=1)).isoformat())
    taken = heartbeats.ingest(message_of({principal: [later]}), engine=engine)
    assert (taken.stored, taken.refused) == (1, [])
    with unit_of_work(engine=engine) as uow:
        row = uow.session.get(Supervisor, task)
        assert row is not None and row.contract_id == owner_of_task.id

    # Run again it finds nothing; its downgrade undoes nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        downgrade(database_at_0013, "0013")
        migrate(database_at_0013)
    assert "0014: no supervisor row holds another contract's task id" in caplog.messages
    assert remaining()[0] == good | {(owner_of_task.id, task)}
