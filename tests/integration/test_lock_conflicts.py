"""A request the database rolls back in favour of a concurrent transaction is the caller's to
retry, never a 500: PostgreSQL's deadlock detector picks a victim, and when that victim is an
HTTP request it answers 503 DATABASE_UNAVAILABLE with Retry-After, nothing applied.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.api import ContractsAPI
from app.http import create_app
from tests.integration.conftest import DB_URL

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


def _waiting_on_a_lock(conn: Any, pid: int) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> :pid"
            ),
            {"pid": pid},
        ).scalar()
    )


def test_a_request_chosen_as_a_deadlock_victim_answers_503_with_retry_after(make_caller: Any) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("deadlock", "simple").id
    task = uuid.uuid4()
    api.save_supervisor_state(cid, task, state_version=1, state="working", phase="plan", current_activity="x")
    api.restore_supervisor(cid, task)  # claimed: the supervisors row exists
    before = api.supervisor_status(cid).incarnation

    engine = create_engine(DB_URL)
    answers: dict[str, Any] = {}
    with engine.connect() as holder, TestClient(create_app(), raise_server_exceptions=False) as client:
        # The holder waits long before looking for deadlocks, so the request's detector (1 s) runs
        # first and the request is the victim.
        holder.execute(text("SET deadlock_timeout = '30s'"))
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        holder.execute(
            text("SELECT 1 FROM supervisors WHERE task_id = CAST(:t AS uuid) FOR UPDATE"), {"t": str(task)}
        )

        def claim() -> None:
            answers["claim"] = client.get(
                f"/api/v1/contracts/{cid}/supervisor/restoration",
                params={"taskId": str(task)},
                headers={"Authorization": f"Bearer {token}"},
            )

        request = threading.Thread(target=claim)
        request.start()
        with engine.connect() as watcher:
            deadline = time.monotonic() + 20
            while not _waiting_on_a_lock(watcher, pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # The request holds the contract and waits for the supervisor; now the holder waits for
        # the contract: a cycle.
        holder.execute(
            text("SELECT 1 FROM contracts WHERE id = CAST(:c AS uuid) FOR UPDATE"), {"c": str(cid)}
        )
        holder.rollback()
        request.join(30)
    engine.dispose()

    response = answers["claim"]
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "DATABASE_UNAVAILABLE"
    assert error["details"] == {"retryAfterSeconds": 1, "reason": "concurrent_transaction"}
    assert response.headers["Retry-After"] == "1"
    assert api.supervisor_status(cid).incarnation == before  # nothing applied


def test_a_held_contract_lets_rows_that_reference_it_be_inserted(make_caller: Any) -> None:
    """The contract lock excludes other writers of the contract, not inserts that only name it."""
    from app.contract_rows import lock_contract
    from app.db import unit_of_work

    token, caller = make_caller(role="user")
    cid = ContractsAPI(token).create_contract("key share", "simple").id
    engine = create_engine(DB_URL)
    with unit_of_work() as uow:
        lock_contract(uow.session, caller, cid)
        with engine.connect() as other:
            other.execute(text("SET lock_timeout = '3s'"))
            other.execute(
                text(
                    "INSERT INTO contract_events (contract_id, type, payload, created_at) "
                    "VALUES (CAST(:c AS uuid), 'probe', '{}', now())"
                ),
                {"c": str(cid)},
            )
            other.commit()
            other.execute(text("SET lock_timeout = '300ms'"))
            with pytest.raises(Exception, match="lock timeout"):
                other.execute(
                    text("UPDATE contracts SET name = 'other writer' WHERE id = CAST(:c AS uuid)"),
                    {"c": str(cid)},
                )
            other.rollback()
    engine.dispose()
