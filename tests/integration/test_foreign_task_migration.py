"""Migration 0015 removes task rows that took another contract's supervisor task id, on both dialects.

Such a row (made by a task report before the fronts and the worker refused another contract's
supervisor task id) held the id for the wrong contract, so that supervisor's heartbeats and
state saves were refused from then on. The migration removes it, keeps every other row and the
events the reports wrote, says what it removed (each row on a line of its own), finds nothing
when run again, and its downgrade changes nothing. PostgreSQL runs on a scratch database of its
own (it is migrated from 0014), SQLite on a file of the test's.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from app import agent_reports, heartbeats
from app.api import ContractsAPI
from app.auth import Role, authenticate, create_token
from app.db import downgrade, get_engine, migrate, unit_of_work
from app.domain.errors import ValidationFailed
from app.heartbeat_messages import message_of
from app.heartbeat_outcomes import FOREIGN_TASK
from app.models import Contract, ContractEvent, ContractTask, Supervisor, SupervisorStateRow, utcnow
from tests.integration.helpers import database_at, no_send

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def database_at_0014(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    with database_at("0014", request.param, tmp_path) as url:
        yield url


def heartbeat(contract_id: uuid.UUID, task_id: uuid.UUID) -> dict[str, Any]:
    return {
        "taskId": str(task_id),
        "contractId": str(contract_id),
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
    }


def task_rows(engine: Engine) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """Every task row as (contract, task id)."""
    with unit_of_work(engine=engine) as uow:
        return {(c, t) for c, t in uow.session.execute(select(ContractTask.contract_id, ContractTask.id))}


def test_task_rows_holding_another_contracts_supervisor_go_and_the_rest_stay(
    database_at_0014: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = get_engine(database_at_0014)
    now = utcnow()
    with unit_of_work(engine=engine) as uow:
        token = create_token(uow.session, "owner", Role.SUPERVISOR)
    with unit_of_work(engine=engine) as uow:
        caller = authenticate(uow.session, token)
    heartbeating, saving, taker, kept = (
        Contract(owner_id="owner", name=name, contract_type="simple", phase="plan", status="active")
        for name in ("its supervisor heartbeats", "its supervisor saved state", "took the ids", "its own")
    )
    beats, saved, own, kept_sup = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with unit_of_work(engine=engine) as uow:
        uow.session.add_all([heartbeating, saving, taker, kept])
        uow.session.flush()
        # heartbeating's supervisor has heartbeated, kept's too (and was reported started there).
        for contract_id, task_id in ((heartbeating.id, beats), (kept.id, kept_sup)):
            uow.session.add(
                Supervisor(
                    task_id=task_id, contract_id=contract_id, incarnation=1, version=1, state="working",
                    phase="plan", current_activity="", progress=0, pending_task_ids=[], last_received_at=now,
                    alive=True,
                )
            )  # fmt: skip
        # saving's supervisor saved its state and never heartbeated.
        uow.session.add(
            SupervisorStateRow(
                task_id=saved, contract_id=saving.id, incarnation=1, state_version=1, state="working",
                phase="plan", current_activity="", progress=0, spawned_task_ids=[], waiting_on_task_ids=[],
                history_length=0,
            )
        )  # fmt: skip
        # taker's reports took both supervisors' ids (the bad rows); its own task and kept's
        # supervisor reported started on kept are fine.
        for contract_id, task_id, name in (
            (taker.id, beats, "build"),
            (taker.id, saved, "test"),
            (taker.id, own, "lint"),
            (kept.id, kept_sup, "supervisor"),
        ):
            uow.session.add(
                ContractTask(
                    id=task_id, contract_id=contract_id, name=name, status="running", phase="plan",
                    is_supervisor=contract_id == kept.id,
                )
            )  # fmt: skip
            uow.session.add(
                ContractEvent(
                    contract_id=contract_id, type="task_spawned", payload={"taskId": str(task_id)},
                    created_at=now,
                )
            )  # fmt: skip
    api = ContractsAPI(token, engine=engine, sender=no_send)

    def beat() -> list[tuple[str | None, str]]:
        done = heartbeats.ingest(
            message_of({caller.principal_id: [heartbeat(heartbeating.id, beats)]}), engine=engine
        )
        return [(r.field, r.problem) for r in done.refused]

    def save(version: int) -> bool:
        return api.save_supervisor_state(
            saving.id, saved, state_version=version, state="working", phase="plan"
        ).applied

    # Before: both supervisors are locked out of their own ids.
    assert beat() == [("taskId", FOREIGN_TASK)]
    with pytest.raises(ValidationFailed, match=f"Task {saved} belongs to another contract"):
        save(2)

    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        migrate(database_at_0014)
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("0015:")]
    holders = {beats: heartbeating.id, saved: saving.id}
    names = {beats: "build", saved: "test"}
    assert removed == [
        "0015: removed 2 task row(s) holding another contract's supervisor task id",
        *(
            f"0015: removed task row: contract {taker.id} task {task} ({names[task]!r}, running), "
            f"the supervisor of contract {holders[task]}"
            for task in sorted((beats, saved))
        ),
    ]
    good = {(taker.id, own), (kept.id, kept_sup)}
    assert task_rows(engine) == good
    with unit_of_work(engine=engine) as uow:  # the reports' record stays
        spawned = uow.session.scalars(
            select(ContractEvent.payload).where(ContractEvent.contract_id == taker.id)
        )
        assert sorted(p["taskId"] for p in spawned) == sorted(str(t) for t in (beats, saved, own))

    # After: the supervisors go on under their ids, and the taker cannot take them again.
    assert beat() == []
    assert save(2)
    for task in (beats, saved):
        refused = pytest.raises(ValidationFailed, match=f"Task {task} is the supervisor of another contract")
        with refused, unit_of_work(no_send, engine=engine) as uow:
            agent_reports.record_task_started(
                uow, caller, taker.id, task_id=task, task_name="again", is_supervisor=False, now=utcnow()
            )
    assert task_rows(engine) == good

    # Run again it finds nothing; its downgrade undoes nothing.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        downgrade(database_at_0014, "0014")
        migrate(database_at_0014)
    assert [m for m in caplog.messages if m.startswith("0015:")] == [
        "0015: no task row holds another contract's supervisor task id"
    ]
    assert task_rows(engine) == good
